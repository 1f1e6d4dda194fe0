"""The metrics registry: every metric declared once, looked up everywhere.

Each entry (`Metric`) says what `evaluate`, the benchmarks and the tests need to know of a
metric, so that none of them guesses it:

- `function`: the metric itself. A per-batch metric is `(model, inputs, units, maps,
  [ground_truth], **params) -> scores (B, K)`, run by `evaluate` in one compiled step; a
  metric that `takes_method` explains by itself (`(model, inputs, units, method, ...,
  batch_size, verbose, explain) -> table`) with the `explain` that `evaluate` gives it;
- `needs_model`, `needs_maps`, `ground_truth`: what it needs (the localisation metrics need
  no model but ground truth; the randomisation check needs a method, not maps);
- `nonnegative_maps`: whether it only makes sense for maps >= 0 (energy);
- `higher_is_better`: which way is better, for tables and plots;
- `parameters`: its own parameters and their defaults, read from its signature;
- `summary` and `reference`: what it computes and where it is published (the README's table).

Usage:

    metric = get("deletion")
    metric.parameters   # {'n_steps': 224, 'baseline': 0.0, 'blur_sigma': None, ...}
    register("my_metric", my_metric, summary="...", reference="...")   # your own
"""

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

from explain_lib.metrics import fidelity, localization, randomization
from explain_lib.metrics.common import (
    METHOD_METRIC_ARGUMENTS,
    METRIC_ARGUMENTS,
    parameters_of,
)

LOOP_ARGUMENTS = frozenset({
    "metric", "model", "x", "y", "maps", "boxes", "masks", "batch_size", "verbose", "steps",
    "callbacks", "force", "scores", "preprocessing",
})
"""The names `evaluate` keeps for its own loop: a metric parameter of one of these names
could never reach the metric, so a metric declaring one is refused."""


@dataclass(frozen=True)
class Metric:
    """A registered metric (see the module docstring)."""

    name: str
    function: Callable
    summary: str = ""
    reference: str = ""
    needs_model: bool = True
    needs_maps: bool = True
    ground_truth: bool = False
    takes_method: bool = False
    nonnegative_maps: bool = False
    higher_is_better: bool = True

    @property
    def given(self) -> Tuple[str, ...]:
        """The arguments `evaluate` gives the metric itself (not its parameters)."""
        return METHOD_METRIC_ARGUMENTS if self.takes_method else METRIC_ARGUMENTS

    @property
    def parameters(self) -> Dict[str, Any]:
        """The metric's own parameters and their defaults, in signature order."""
        return parameters_of(self.function, self.given)[0]

    @property
    def open_ended(self) -> bool:
        """Whether it takes any keyword (`**kwargs`) besides its parameters."""
        return parameters_of(self.function, self.given)[1]

    @property
    def needs(self) -> str:
        """What the metric needs besides the inputs and units, in words."""
        needed = [word for flag, word in ((self.needs_model, "model"),
                                          (self.needs_maps, "maps"),
                                          (self.takes_method, "method"),
                                          (self.ground_truth, "boxes or masks")) if flag]
        return ", ".join(needed)


REGISTRY: Dict[str, Metric] = {}
"""Every metric by name, in the order they were registered."""


def check_parameter_names(metric: "Metric") -> None:
    """Refuse a metric whose parameters take a name `evaluate` keeps for itself."""
    name = metric.name
    shadowed = sorted(set(metric.parameters) & LOOP_ARGUMENTS)
    if shadowed:
        raise ValueError(
            f"{name} has parameter(s) {', '.join(shadowed)} named like evaluate's own "
            "arguments, which take them first: rename them (deletion counts its steps in "
            "n_steps, not steps)."
        )


def register(name: str, function: Callable, **declared) -> Metric:
    """Declare a metric under `name` (see `Metric` for what `declared` may say); returns its
    entry.

    Raises:
        ValueError: for a name already taken, or a parameter named like one of
            `evaluate`'s own arguments.
    """
    if name in REGISTRY:
        raise ValueError(f"A metric is already registered as {name!r}.")
    metric = Metric(name, function, **declared)
    check_parameter_names(metric)
    REGISTRY[name] = metric
    return metric


def get(name) -> Metric:
    """The metric registered as `name` (or whose function `name` is).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if isinstance(name, Metric):
        return name
    for metric in REGISTRY.values():
        if metric.function is name:
            return metric
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown metric {name!r}. Valid names: {', '.join(sorted(REGISTRY))}."
        ) from None


def _show(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def markdown_table() -> str:
    """The README's table of metrics, written from the registry."""
    lines = [
        "| name | what it computes | better | needs | parameters (defaults) | paper |",
        "|---|---|---|---|---|---|",
    ]
    for metric in REGISTRY.values():
        parameters = ", ".join(
            name if default is inspect.Parameter.empty else f"{name}={_show(default)}"
            for name, default in metric.parameters.items()
        )
        lines.append(
            f"| `{metric.name}` | {metric.summary} | "
            f"{'higher' if metric.higher_is_better else 'lower'} | {metric.needs} | "
            f"{'`' + parameters + '`' if parameters else ''} | {metric.reference} |"
        )
    return "\n".join(lines)


register(
    "deletion", fidelity.deletion, higher_is_better=False,
    summary="area under the unit's probability as the most important pixels are removed "
    "first (set to a baseline), in `n_steps` steps",
    reference="Petsiuk et al., 2018, arXiv:1806.07421",
)
register(
    "insertion", fidelity.insertion,
    summary="area under the unit's probability as the most important pixels are inserted "
    "first into a blurred copy, in `n_steps` steps",
    reference="Petsiuk et al., 2018, arXiv:1806.07421",
)
register(
    "mufidelity", fidelity.mufidelity,
    summary="correlation, over random subsets of grid cells, of the map summed over the "
    "subset with the drop of the unit's score when the subset is removed",
    reference="Bhatt et al., 2020, arXiv:2005.00631",
)
register(
    "pointing_game", localization.pointing_game, needs_model=False, ground_truth=True,
    summary="1 when the map's maximum lies within `tolerance` pixels of the object, else 0",
    reference="Zhang et al., 2016, arXiv:1608.00507",
)
register(
    "energy_pointing_game", localization.energy_pointing_game, needs_model=False,
    ground_truth=True, nonnegative_maps=True,
    summary="share of the map's energy (its sum) inside the object's boxes",
    reference="Wang et al., 2020, arXiv:1910.01279",
)
register(
    "model_randomization", randomization.model_randomization, needs_maps=False,
    takes_method=True, higher_is_better=False,
    summary="Spearman rank correlation and SSIM of the method's maps on the trained model "
    "and on copies re-initialised from the top layer down, cascading (a table per layer)",
    reference="Adebayo et al., 2018, arXiv:1810.03292",
)

__all__ = ["LOOP_ARGUMENTS", "Metric", "REGISTRY", "check_parameter_names", "get",
           "markdown_table", "register"]
