"""The engine: `explain` (a method over a dataset; `explaining.explain_predicted` for each
input's top units), `explain_step` (one batch) and `evaluate` (a metric over a dataset), all
run by one loop (`engine.loop`) over one data adapter (`engine.data`).

Usage:

    from explain_lib.engine import evaluate, explain
    logits, maps = explain(methods.gradients, model, images, labels)
    scores = evaluate("deletion", model, images, labels, maps)
"""

from explain_lib.engine.evaluating import evaluate
from explain_lib.engine.explaining import explain, explain_step, partial_explain

__all__ = ["evaluate", "explain", "explain_step", "partial_explain"]
