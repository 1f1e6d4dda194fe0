"""Explaining methods: plain functions `(model, inputs, indices, ...) -> (logits, maps)`, and
the registry that declares them.

- `gradient`: gradients, Input×Gradient, Integrated Gradients, Full-Gradient (plain model).
- `cams`: CAM, Grad-CAM, Grad-CAM++, Score-CAM, LayerCAM, XGrad-CAM, HiResCAM, EigenCAM,
  Ablation-CAM (exposed model, see `inspection.expose`; a plain model is exposed with the
  defaults).
- `rules`: guided backpropagation, DeconvNet, Guided Grad-CAM: the gradient with the ReLUs'
  backward pass changed (a model with ReLUs; Guided Grad-CAM takes an exposed model).
- `perturbation`: occlusion, RISE (plain model, forward passes only).
- `sampling`: GradientSHAP, Sobol attribution (expectations over sampled perturbations).
- `surrogate`: LIME, KernelSHAP (linear surrogates on superpixels).
- `attention`: attention rollout (a vision transformer whose attention can be reached).
- `meta`: smooth (SmoothGrad), vargrad, squaregrad, tta: a method in, a method out.
- `chunking`: the bounded-memory loop the multi-pass methods share; `common`: the other
  helpers several modules share.
- `registry`: every method by name (`get("gradcam")`), with what it takes, its
  conventional post-processing and its parameters.

Methods know no engine: `explain_lib.explain` runs them, and `explain_lib.shortcuts` holds
`explain` with each registered method and its conventional post-processing.

`indices` is a (B, K) tensor of units, None for every unit, or an `inspection.TopUnits`
selector: each method then chooses the units from its own forward pass at the input
(`inspection.select_units`), so explaining the predicted units costs no extra pass (meta
methods add one forward pass at the input). A method written outside this package supports
selection by calling `select_units` the same way.

Usage:

    method = methods.get("integrated_gradients")
    logits, maps = explain_lib.explain(method.function, model, x, y, n_steps=64)
    logits, maps = explain_lib.explain(methods.gradcam, exposed, x, y)   # the function itself
"""

from explain_lib.methods import (
    attention,
    cams,
    chunking,
    common,
    gradient,
    meta,
    perturbation,
    registry,
    rules,
    sampling,
    surrogate,
)
from explain_lib.methods.attention import attention_rollout
from explain_lib.methods.cams import (
    ablationcam,
    cam,
    eigencam,
    gradcam,
    gradcampp,
    hirescam,
    layercam,
    scorecam,
    xgradcam,
)
from explain_lib.methods.gradient import (
    full_gradients,
    gradients,
    input_x_gradient,
    integrated_gradients,
)
from explain_lib.methods.perturbation import occlusion, rise
from explain_lib.methods.registry import REGISTRY, Method, get, register
from explain_lib.methods.rules import deconvnet, guided_backprop, guided_gradcam
from explain_lib.methods.sampling import gradient_shap, sobol
from explain_lib.methods.surrogate import kernel_shap, lime

smoothgrad = REGISTRY["smoothgrad"].function
vargrad = REGISTRY["vargrad"].function
squaregrad = REGISTRY["squaregrad"].function

__all__ = [
    "attention",
    "attention_rollout",
    "cams",
    "chunking",
    "common",
    "gradient",
    "meta",
    "perturbation",
    "registry",
    "REGISTRY",
    "Method",
    "get",
    "register",
    "gradients",
    "input_x_gradient",
    "integrated_gradients",
    "full_gradients",
    "smoothgrad",
    "vargrad",
    "squaregrad",
    "cam",
    "gradcam",
    "gradcampp",
    "scorecam",
    "layercam",
    "xgradcam",
    "hirescam",
    "eigencam",
    "ablationcam",
    "rules",
    "guided_backprop",
    "deconvnet",
    "guided_gradcam",
    "occlusion",
    "rise",
    "sampling",
    "surrogate",
    "gradient_shap",
    "sobol",
    "lime",
    "kernel_shap",
]
