"""Explaining methods: plain functions `(model, inputs, indices, ...) -> (logits, maps)`."""

from explain_lib.methods import gradient

__all__ = ["gradient"]
