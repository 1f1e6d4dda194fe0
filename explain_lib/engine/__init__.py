"""The engine: `explain` (the loop), `explain_step` (one batch) and the data adaptation they
share; `evaluate`, the same loop for the metrics."""

from explain_lib.engine.evaluating import evaluate
from explain_lib.engine.explaining import explain, explain_step, partial_explain

__all__ = ["evaluate", "explain", "explain_step", "partial_explain"]
