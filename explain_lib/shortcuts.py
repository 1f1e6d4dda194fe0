"""Shortcuts: `explain` with each registered method and its conventional post-processing.

`gradcam(model, x, y, **params)` is `explain(methods.gradcam, model, x, y,
postprocessing=filters.positive_normalize, resizing=True, **params)`: the registry's
`explain_defaults`, which `params` override. `gradcam.predicted(model, x, top_k=1)` is
`explain_predicted` with the same. `explain_lib` re-exports every shortcut.

Usage:

    logits, maps = explain_lib.gradcam(model, images, labels)
    logits, maps = explain_lib.integrated_gradients(model, images, labels, n_steps=64)
    units, logits, maps = explain_lib.gradcam.predicted(model, images, top_k=3)
"""

from typing import Callable, Dict

from explain_lib.engine.explaining import partial_explain
from explain_lib.methods import REGISTRY

SHORTCUTS: Dict[str, Callable] = {
    name: partial_explain(method.function, **method.explain_defaults)
    for name, method in REGISTRY.items()
}
"""The shortcut of every method registered when explain_lib was imported, by name."""

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
attention_rollout = SHORTCUTS["attention_rollout"]
occlusion = SHORTCUTS["occlusion"]
rise = SHORTCUTS["rise"]
xgradcam = SHORTCUTS["xgradcam"]
hirescam = SHORTCUTS["hirescam"]
eigencam = SHORTCUTS["eigencam"]
ablationcam = SHORTCUTS["ablationcam"]
guided_backprop = SHORTCUTS["guided_backprop"]
deconvnet = SHORTCUTS["deconvnet"]
guided_gradcam = SHORTCUTS["guided_gradcam"]
gradient_shap = SHORTCUTS["gradient_shap"]
sobol = SHORTCUTS["sobol"]
lime = SHORTCUTS["lime"]
kernel_shap = SHORTCUTS["kernel_shap"]

__all__ = ["SHORTCUTS", *SHORTCUTS]
