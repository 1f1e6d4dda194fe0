"""The explaining engine: `explain` (the loop), `explain_step` (one batch) and the data
adaptation they share."""

from explain_lib.engine.explaining import explain, explain_step, partial_explain

__all__ = ["explain", "explain_step", "partial_explain"]
