"""explain_lib: explain Keras models' predictions, from one image to a whole dataset.

Usage:

    import explain_lib
    logits, maps = explain_lib.gradients(model, images, labels)
    logits, maps = explain_lib.explain(explain_lib.methods.gradient.gradients, model, images,
                                       labels, postprocessing=explain_lib.filters.normalize)
"""

from importlib.metadata import PackageNotFoundError, version

from explain_lib import filters, inspection, methods, utils
from explain_lib.engine import explaining
from explain_lib.engine.explaining import explain, explain_step, partial_explain

try:
    __version__ = version("explain-lib")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "unknown"

gradients = partial_explain(
    methods.gradient.gradients, postprocessing=filters.normalize, resizing=False
)
"""Shortcut for `methods.gradient.gradients`: magnitude of the gradient, normalised to [0, 1]."""

__all__ = [
    "explain",
    "explain_step",
    "partial_explain",
    "explaining",
    "filters",
    "inspection",
    "methods",
    "utils",
    "gradients",
]
