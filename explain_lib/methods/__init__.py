"""Explaining methods: plain functions `(model, inputs, indices, ...) -> (logits, maps)`.

- `gradient`: gradients, Input×Gradient, Integrated Gradients, Full-Gradient (plain model).
- `cams`: CAM, Grad-CAM, Grad-CAM++, Score-CAM, LayerCAM (exposed model, see
  `inspection.expose`).
- `perturbation`: occlusion, RISE (plain model, forward passes only).
- `meta`: smooth (SmoothGrad), vargrad, squaregrad, tta: a method in, a method out.
- `chunking`: the bounded-memory loop the multi-pass methods share.

`indices` is a (B, K) tensor of units, None for every unit, or an `inspection.TopUnits`
selector: each method then chooses the units from its own forward pass at the input
(`inspection.select_units`), so explaining the predicted units costs no extra pass (meta
methods add one forward pass at the input). A method written outside this package supports
selection by calling `select_units` the same way.

The registry names every method (`get_method("gradcam")`), and `SHORTCUTS` holds, by the
same names, `explain` with the method and its conventional post-processing (`DEFAULTS`):
the positive part normalised for CAMs and occlusion, the normalised magnitude for gradient
maps, min-max normalisation for RISE. The shortcuts are also module attributes here
(`methods.gradcam(exposed, x, y)`) and re-exported by `explain_lib`.

Usage:

    logits, maps = explain_lib.explain(methods.get_method("scorecam"), exposed, x, y)
    logits, maps = methods.SHORTCUTS["integrated_gradients"](model, x, y, steps=64)
"""

from typing import Any, Callable, Dict

from explain_lib import filters
from explain_lib.engine.explaining import partial_explain
from explain_lib.methods import cams, chunking, gradient, meta, perturbation

METHODS: Dict[str, Callable] = {
    "gradients": gradient.gradients,
    "input_x_gradient": gradient.input_x_gradient,
    "integrated_gradients": gradient.integrated_gradients,
    "full_gradients": gradient.full_gradients,
    "smoothgrad": meta.smooth(gradient.gradients),
    "vargrad": meta.vargrad(gradient.gradients),
    "squaregrad": meta.squaregrad(gradient.gradients),
    "cam": cams.cam,
    "gradcam": cams.gradcam,
    "gradcampp": cams.gradcampp,
    "scorecam": cams.scorecam,
    "layercam": cams.layercam,
    "occlusion": perturbation.occlusion,
    "rise": perturbation.rise,
}
"""Every method by name. CAM methods take an exposed model; the others the plain model.
`smoothgrad`, `vargrad` and `squaregrad` are the meta methods applied to `gradients` with
their default settings; compose `meta` yourself for other settings or methods."""

_MAGNITUDE = {"postprocessing": filters.absolute_normalize, "resizing": False}
_POSITIVE = {"postprocessing": filters.positive_normalize}

DEFAULTS: Dict[str, Dict[str, Any]] = {
    "gradients": _MAGNITUDE,
    "input_x_gradient": _MAGNITUDE,
    "integrated_gradients": _MAGNITUDE,
    "full_gradients": _MAGNITUDE,
    "smoothgrad": _MAGNITUDE,
    "vargrad": _MAGNITUDE,
    "squaregrad": _MAGNITUDE,
    "cam": _POSITIVE,
    "gradcam": _POSITIVE,
    "gradcampp": _POSITIVE,
    "scorecam": _POSITIVE,
    "layercam": _POSITIVE,
    "occlusion": {"postprocessing": filters.positive_normalize, "resizing": False},
    "rise": {"postprocessing": filters.normalize, "resizing": False},
}
"""The conventional `explain` parameters of each method: its post-processing, and
`resizing=False` where the maps already have the input's size."""


def get_method(name: str) -> Callable:
    """The method registered as `name`.

    Usage:

        logits, maps = explain_lib.explain(get_method("layercam"), exposed, x, y)

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown explaining method {name!r}. Valid names: {', '.join(sorted(METHODS))}."
        ) from None


SHORTCUTS: Dict[str, Callable] = {
    name: partial_explain(method, **DEFAULTS[name]) for name, method in METHODS.items()
}
"""`explain` with each method and its `DEFAULTS`, by name: `SHORTCUTS[name](model, x, y,
**params)`; `params` override the defaults or go to the method."""

gradients = SHORTCUTS["gradients"]
input_x_gradient = SHORTCUTS["input_x_gradient"]
integrated_gradients = SHORTCUTS["integrated_gradients"]
full_gradients = SHORTCUTS["full_gradients"]
smoothgrad = SHORTCUTS["smoothgrad"]
vargrad = SHORTCUTS["vargrad"]
squaregrad = SHORTCUTS["squaregrad"]
cam = SHORTCUTS["cam"]
gradcam = SHORTCUTS["gradcam"]
gradcampp = SHORTCUTS["gradcampp"]
scorecam = SHORTCUTS["scorecam"]
layercam = SHORTCUTS["layercam"]
occlusion = SHORTCUTS["occlusion"]
rise = SHORTCUTS["rise"]

__all__ = [
    "cams",
    "chunking",
    "gradient",
    "meta",
    "perturbation",
    "METHODS",
    "DEFAULTS",
    "SHORTCUTS",
    "get_method",
    *METHODS,
]
