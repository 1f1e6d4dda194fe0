"""The method registry: every explaining method declared once, looked up everywhere.

Each entry (`Method`) says what the engine, the shortcuts, the pipeline, the benchmarks and
the tests need to know of a method, so that none of them guesses it from a module name:

- `function`: the method itself, `(model, inputs, indices, *, spatial_axis, **params)`;
- `exposed`: whether it weighs an inner activation and so takes an exposed model
  `[logits, activations]` (`inspection.expose`; the CAM family);
- `upsampled`: whether its maps come at that activation's resolution, which `explain`
  resizes to the input's (`resizing=True` by default); the others return input-sized maps;
- `random`: whether it draws random numbers (its seed parameters make it reproducible);
- `attention`: whether it reads the model's attention, so explains only transformers whose
  attention can be reached (`inspection.block_encoder`);
- `postprocessing`: its conventional filter (what the shortcuts and the job apply);
- `parameters`: its own parameters and their defaults, read from its signature (a meta
  method's signature lists its own, then its base method's);
- `summary` and `reference`: what it computes and where it is published, for the README's
  table and the job's `--help`.

Usage:

    method = get("integrated_gradients")
    method.parameters      # {'baseline': 0.0, 'n_steps': 32, 'chunk_size': 8, 'blur_sigma': None}
    logits, maps = explain_lib.explain(method.function, model, x, y, **method.explain_defaults)

    register("my_saliency", my_saliency, summary="...", reference="...")   # your own
"""

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from explain_lib import filters
from explain_lib.methods import (
    attention,
    cams,
    gradient,
    meta,
    perturbation,
    rules,
    sampling,
    surrogate,
)
from explain_lib.methods.common import parameters_of


@dataclass(frozen=True)
class Method:
    """A registered explaining method (see the module docstring)."""

    name: str
    function: Callable
    family: str
    summary: str
    reference: str
    postprocessing: Optional[Callable] = None
    exposed: bool = False
    upsampled: bool = False
    random: bool = False
    base: Optional[str] = None
    attention: bool = False

    @property
    def parameters(self) -> Dict[str, Any]:
        """The method's own parameters and their defaults (`inspect.Parameter.empty` for a
        required one), in signature order."""
        return parameters_of(self.function)[0]

    @property
    def seeds(self) -> Tuple[str, ...]:
        """The parameters that seed its random draws."""
        return tuple(name for name in self.parameters if name == "seed" or name.endswith("_seed"))

    @property
    def explain_defaults(self) -> Dict[str, Any]:
        """Its conventional `explain` parameters: the post-processing, resizing to the
        input's size only where the maps come smaller, and the scores before a final softmax
        or sigmoid (`explain`'s `scores`)."""
        return {"postprocessing": self.postprocessing, "resizing": self.upsampled,
                "scores": "logits"}


REGISTRY: Dict[str, Method] = {}
"""Every method by name, in the order they were registered."""


def register(
    name: str,
    function: Callable,
    *,
    family: str = "user",
    summary: str = "",
    reference: str = "",
    postprocessing: Optional[Callable] = None,
    exposed: bool = False,
    upsampled: bool = False,
    random: bool = False,
    base: Optional[str] = None,
    attention: bool = False,
) -> Method:
    """Declare a method under `name` (see `Method`); returns its entry.

    Raises:
        ValueError: for a name already taken, or a random method without a seed parameter.
    """
    if name in REGISTRY:
        raise ValueError(f"A method is already registered as {name!r}.")
    method = Method(name, function, family, summary, reference, postprocessing, exposed,
                    upsampled, random, base, attention)
    if random and not method.seeds:
        raise ValueError(
            f"{name} is declared random but has no seed parameter (`seed` or `*_seed`): "
            "give it one so that its maps are reproducible."
        )
    REGISTRY[name] = method
    return method


def get(name: str) -> Method:
    """The method registered as `name`.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown explaining method {name!r}. Valid names: {', '.join(sorted(REGISTRY))}."
        ) from None


def _show(value) -> str:
    if callable(value):
        return getattr(value, "__name__", repr(value))
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def describe_parameters(method: Method) -> str:
    """`name=default, ...` of a method's parameters, as the README's table lists them."""
    return ", ".join(
        name if default is inspect.Parameter.empty else f"{name}={_show(default)}"
        for name, default in method.parameters.items()
    )


def markdown_table() -> str:
    """The README's table of methods, written from the registry."""
    lines = [
        "| name | module | what it computes | parameters (defaults) | post-processing | paper |",
        "|---|---|---|---|---|---|",
    ]
    for method in REGISTRY.values():
        parameters = describe_parameters(method)
        lines.append(
            f"| `{method.name}` | `{method.family}` | {method.summary} | "
            f"{'`' + parameters + '`' if parameters else ''} | "
            f"`{_show(method.postprocessing)}` | {method.reference} |"
        )
    return "\n".join(lines)


_MAGNITUDE = filters.absolute_normalize
_POSITIVE = filters.positive_normalize

register(
    "gradients", gradient.gradients, family="gradient", postprocessing=_MAGNITUDE,
    summary="ψ(∂f_u/∂x) averaged over channels, ψ = `abs`",
    reference="Simonyan et al., 2013, arXiv:1312.6034",
)
register(
    "input_x_gradient", gradient.input_x_gradient, family="gradient", postprocessing=_MAGNITUDE,
    summary="x ⊙ ∂f_u/∂x summed over channels",
    reference="Shrikumar et al., 2016, arXiv:1605.01713",
)
register(
    "integrated_gradients", gradient.integrated_gradients, family="gradient",
    postprocessing=_MAGNITUDE,
    summary="(x − x₀) ⊙ the mean gradient along the straight path from a baseline x₀ "
    "(midpoint Riemann sum of `n_steps` points)",
    reference="Sundararajan et al., 2017, arXiv:1703.01365",
)
register(
    "full_gradients", gradient.full_gradients, family="gradient", postprocessing=_MAGNITUDE,
    summary="ψ(x ⊙ ∂f/∂x) plus ψ(b ⊙ ∂f/∂z) for every biased layer, BatchNormalization's "
    "implicit bias included",
    reference="Srinivas & Fleuret, 2019, arXiv:1905.00780",
)
register(
    "smoothgrad", meta.smooth(gradient.gradients), family="meta", postprocessing=_MAGNITUDE,
    random=True, base="gradients",
    summary="`smooth(gradients)`: the mean of the maps over noisy copies of the input",
    reference="Smilkov et al., 2017, arXiv:1706.03825",
)
register(
    "vargrad", meta.vargrad(gradient.gradients), family="meta", postprocessing=_MAGNITUDE,
    random=True, base="gradients",
    summary="`vargrad(gradients)`: the variance of the maps over the same noisy copies",
    reference="Adebayo et al., 2018, arXiv:1810.03307",
)
register(
    "squaregrad", meta.squaregrad(gradient.gradients), family="meta", postprocessing=_MAGNITUDE,
    random=True, base="gradients",
    summary="`squaregrad(gradients)`: the mean of the squared maps over the same noisy copies",
    reference="Hooker et al., 2019, arXiv:1806.10758",
)
register(
    "cam", cams.cam, family="cams", postprocessing=_POSITIVE, exposed=True, upsampled=True,
    summary="the logits layer's kernel weighting the pooled activation",
    reference="Zhou et al., 2016, arXiv:1512.04150",
)
register(
    "gradcam", cams.gradcam, family="cams", postprocessing=_POSITIVE, exposed=True,
    upsampled=True,
    summary="channels weighted by the spatial mean of ∂f_u/∂A",
    reference="Selvaraju et al., 2017, arXiv:1610.02391",
)
register(
    "gradcampp", cams.gradcampp, family="cams", postprocessing=_POSITIVE, exposed=True,
    upsampled=True,
    summary="channels weighted by positive gradients with higher-order terms",
    reference="Chattopadhay et al., 2018, arXiv:1710.11063",
)
register(
    "scorecam", cams.scorecam, family="cams", postprocessing=_POSITIVE, exposed=True,
    upsampled=True,
    summary="channels weighted by the unit's probability for the input masked by each "
    "(upsampled, normalised) channel; `max_channels`: Faster Score-CAM",
    reference="Wang et al., 2020, arXiv:1910.01279",
)
register(
    "layercam", cams.layercam, family="cams", postprocessing=_POSITIVE, exposed=True,
    upsampled=True,
    summary="ReLU(∂f_u/∂A) ⊙ A per position",
    reference="Jiang et al., 2021, IEEE TIP 30",
)
register(
    "xgradcam", cams.xgradcam, family="cams", postprocessing=_POSITIVE, exposed=True,
    upsampled=True,
    summary="channels weighted by ∂f_u/∂A averaged with the weights A / Σ_hw A",
    reference="Fu et al., 2020, arXiv:2008.02312",
)
register(
    "hirescam", cams.hirescam, family="cams", postprocessing=_POSITIVE, exposed=True,
    upsampled=True,
    summary="∂f_u/∂A ⊙ A per position, summed over channels (no pooling of the gradient)",
    reference="Draelos & Carin, 2020, arXiv:2011.08891",
)
register(
    "eigencam", cams.eigencam, family="cams", postprocessing=_POSITIVE, exposed=True,
    upsampled=True,
    summary="A (channels centred) projected on its first principal component; "
    "class-agnostic",
    reference="Muhammad & Yeasin, 2020, arXiv:2008.00299",
)
register(
    "ablationcam", cams.ablationcam, family="cams", postprocessing=_POSITIVE, exposed=True,
    upsampled=True,
    summary="channels weighted by the relative drop of f_u when each channel of A is "
    "zeroed",
    reference="Desai & Ramaswamy, 2020, WACV",
)
register(
    "guided_backprop", rules.guided_backprop, family="rules", postprocessing=_MAGNITUDE,
    summary="ψ(∂f_u/∂x) with every ReLU passing back only positive gradients of positive "
    "inputs, averaged over channels",
    reference="Springenberg et al., 2014, arXiv:1412.6806",
)
register(
    "deconvnet", rules.deconvnet, family="rules", postprocessing=_MAGNITUDE,
    summary="ψ(∂f_u/∂x) with every ReLU passing back the ReLU of the gradient, averaged "
    "over channels",
    reference="Zeiler & Fergus, 2014, arXiv:1311.2901",
)
register(
    "guided_gradcam", rules.guided_gradcam, family="rules", postprocessing=_MAGNITUDE,
    exposed=True,
    summary="ψ(guided backpropagation ⊙ the upsampled, rectified Grad-CAM map), averaged "
    "over channels",
    reference="Selvaraju et al., 2017, arXiv:1610.02391",
)
register(
    "attention_rollout", attention.attention_rollout, family="attention",
    postprocessing=filters.normalize, upsampled=True, attention=True,
    summary="the class token's row of the attention, mixed with the identity for the "
    "residual and multiplied through the blocks (heads fused by their mean)",
    reference="Abnar & Zuidema, 2020, arXiv:2005.00928",
)
register(
    "occlusion", perturbation.occlusion, family="perturbation", postprocessing=_POSITIVE,
    summary="the drop of the unit's probability when a sliding patch is replaced by a "
    "baseline",
    reference="Zeiler & Fergus, 2014, arXiv:1311.2901",
)
register(
    "rise", perturbation.rise, family="perturbation", postprocessing=filters.normalize,
    random=True,
    summary="the mean of random upsampled binary masks weighted by the unit's probability "
    "for the masked input",
    reference="Petsiuk et al., 2018, arXiv:1806.07421",
)

register(
    "gradient_shap", sampling.gradient_shap, family="sampling", postprocessing=_MAGNITUDE,
    random=True,
    summary="(x + ε − x′) ⊙ ∂f_u/∂x at x′ + α(x + ε − x′), averaged over baselines x′ drawn "
    "from a distribution, α ~ U(0, 1) and Gaussian noise ε (Captum's GradientShap)",
    reference="Lundberg & Lee, 2017, arXiv:1705.07874; Erion et al., 2021, arXiv:1906.10670",
)
register(
    "sobol", sampling.sobol, family="sampling", postprocessing=filters.normalize, random=True,
    summary="the total-order Sobol index (Jansen's estimator) of each cell of a coarse grid "
    "of quasi-Monte-Carlo (Sobol sequence) masks",
    reference="Fel et al., 2021, arXiv:2111.04138",
)
register(
    "lime", surrogate.lime, family="surrogate", postprocessing=_POSITIVE, random=True,
    summary="the coefficients of a ridge regression of the unit's probability on which "
    "superpixels are shown, weighted by a kernel of the cosine distance",
    reference="Ribeiro et al., 2016, arXiv:1602.04938",
)
register(
    "kernel_shap", surrogate.kernel_shap, family="surrogate", postprocessing=_POSITIVE,
    random=True,
    summary="the superpixels' Shapley values, by the Shapley-kernel-weighted regression on "
    "sampled coalitions",
    reference="Lundberg & Lee, 2017, arXiv:1705.07874",
)

__all__ = ["Method", "REGISTRY", "describe_parameters", "get", "markdown_table", "register"]
