"""How faithful is each map: fidelity and localisation metrics, and a sanity check.

- `fidelity`: `deletion`, `insertion` (Petsiuk et al., 2018) and `mufidelity` (Bhatt et
  al., 2020): does the model's score follow the map when the input is perturbed?
- `localization`: `pointing_game` (Zhang et al., 2016) and `energy_pointing_game` (Wang et
  al., 2020): does the map point at the object's ground-truth boxes or masks?
- `randomization`: `model_randomization` (Adebayo et al., 2018): do the method's maps change
  when the model's parameters are re-initialised?
- `registry`: every metric by name (`get("deletion")`), with what it needs and its
  parameters; `common`: what the metrics share (ranks, correlations, boxes as masks).

A per-batch metric is a function `(model, inputs, units, maps, [ground_truth], **params)
-> scores (B, K)`; `explain_lib.evaluate` runs it over a dataset the way `explain` runs a
method: batched, one compiled step, under the model's distribution strategy.

Usage:

    logits, maps = explain_lib.gradcam(model, x, y)
    scores = explain_lib.evaluate("deletion", model, x, y, maps)          # (N, 1)
    hits = explain_lib.evaluate("pointing_game", None, x, y, maps, boxes=boxes)
    table = explain_lib.evaluate("model_randomization", model, x, y, method="gradcam")
"""

from explain_lib.metrics import common, fidelity, localization, randomization, registry
from explain_lib.metrics.common import boxes_to_masks, pad_boxes
from explain_lib.metrics.fidelity import deletion, insertion, mufidelity
from explain_lib.metrics.localization import energy_pointing_game, pointing_game
from explain_lib.metrics.randomization import model_randomization
from explain_lib.metrics.registry import REGISTRY, Metric, get, register

__all__ = [
    "common",
    "fidelity",
    "localization",
    "randomization",
    "registry",
    "REGISTRY",
    "Metric",
    "get",
    "register",
    "boxes_to_masks",
    "pad_boxes",
    "deletion",
    "insertion",
    "mufidelity",
    "pointing_game",
    "energy_pointing_game",
    "model_randomization",
]
