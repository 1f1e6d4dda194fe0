"""explain_lib: explain Keras models' predictions, from one image to a whole dataset.

Usage:

    import explain_lib
    logits, maps = explain_lib.gradients(model, images, labels)
    logits, maps = explain_lib.explain(explain_lib.methods.gradient.gradients, model, images,
                                       labels, postprocessing=explain_lib.filters.normalize)
    scores = explain_lib.evaluate("deletion", model, images, labels, maps)   # how faithful
"""

from importlib.metadata import PackageNotFoundError, version

from explain_lib import filters, inspection, methods, metrics, utils
from explain_lib.engine import evaluating, explaining
from explain_lib.engine.evaluating import evaluate
from explain_lib.engine.explaining import explain, explain_predicted, explain_step, partial_explain

try:
    __version__ = version("explain-lib")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "unknown"

# Shortcuts: `explain` with each registered method and its conventional post-processing
# (`methods.get(name).explain_defaults`): explain_lib.gradcam(model, x, y).
from explain_lib import shortcuts  # noqa: E402
from explain_lib.shortcuts import (  # noqa: E402
    ablationcam,
    attention_rollout,
    cam,
    deconvnet,
    eigencam,
    full_gradients,
    gradcam,
    gradcampp,
    gradient_shap,
    gradients,
    guided_backprop,
    guided_gradcam,
    hirescam,
    input_x_gradient,
    integrated_gradients,
    kernel_shap,
    layercam,
    lime,
    occlusion,
    rise,
    scorecam,
    smoothgrad,
    sobol,
    squaregrad,
    vargrad,
    xgradcam,
)

__all__ = [
    "evaluate",
    "evaluating",
    "explain",
    "explain_predicted",
    "explain_step",
    "partial_explain",
    "explaining",
    "filters",
    "inspection",
    "methods",
    "metrics",
    "shortcuts",
    "utils",
    "ablationcam",
    "attention_rollout",
    "cam",
    "deconvnet",
    "eigencam",
    "full_gradients",
    "gradcam",
    "gradcampp",
    "gradient_shap",
    "gradients",
    "guided_backprop",
    "guided_gradcam",
    "hirescam",
    "input_x_gradient",
    "integrated_gradients",
    "kernel_shap",
    "layercam",
    "lime",
    "occlusion",
    "rise",
    "scorecam",
    "smoothgrad",
    "sobol",
    "squaregrad",
    "vargrad",
    "xgradcam",
]
