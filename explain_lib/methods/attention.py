"""Methods native to vision transformers: maps read from the model's attention.

`attention_rollout` follows how attention mixes the tokens from the input through every
block (Abnar & Zuidema, 2020). It needs the model's attention probabilities, which
`inspection.UnrolledEncoder` reaches for transformers whose encoder holds its blocks
(`inspection.block_encoder`: KerasHub's ViT and DeiT); the model is exposed on them once and
cached here, not on the model.
"""

import weakref
from typing import Optional, Sequence, Tuple

import keras
import tensorflow as tf

from explain_lib import inspection
from explain_lib.utils import SPATIAL_AXIS, ExplainError

HEAD_FUSIONS = ("mean", "max", "min")
"""How `attention_rollout` fuses a block's heads: their mean (the paper's), max or min."""

_attention_exposures: "weakref.WeakKeyDictionary[keras.Model, keras.Model]" = (
    weakref.WeakKeyDictionary()
)


def attention_outputs(model: keras.Model, inputs: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """`(logits, attentions)`: the model's scores and its blocks' attention probabilities
    (B, blocks, heads, T, T), from the model exposed on its transformer encoder (the last
    `inspection.block_encoder` in it), built once per model."""
    if model not in _attention_exposures:
        encoders = [layer for layer in inspection.flatten_layers(model)
                    if inspection.block_encoder(layer)] if getattr(model, "outputs", None) else []
        if not encoders:
            raise ExplainError(
                f"attention_rollout reads a transformer's attention, which explain_lib reaches "
                f"in an encoder layer holding its blocks (KerasHub's ViT and DeiT): "
                f"{model.name!r} has none. Explain it with a CAM or gradient method.")
        _attention_exposures[model] = inspection.expose(
            model, {"layer": encoders[-1], "link": "attentions"}, grid=None)
    logits, attentions = _attention_exposures[model](inputs, training=False)
    return logits, attentions


def attention_rollout(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    head_fusion: str = "mean",
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Attention rollout: how much of the class token's representation at the last block
    comes from each patch token at the input, following attention through every block.

    Each block's attention A_l (its heads fused, by their mean as in the paper) is mixed with
    the identity for the residual connection and its rows renormalised,
    Â_l = (A_l + I) / 2 (rows of A_l sum to 1); the rollout R = Â_L · ... · Â_1, and the map
    is R's row of the class token (the first) over the patch tokens, put back on their grid
    (`inspection.token_grid`, prefix tokens dropped). This follows the official code
    (`samiraabnar/attention_flow`, `compute_joint_attention` with `add_residual=True`).
    Attention does not depend on the explained unit: every unit gets the same map (the
    logits are each unit's).

    Usage:

        logits, maps = attention_rollout(vit_classifier, images, units)   # maps (B, h, w, K)
        logits, maps = explain_lib.attention_rollout(vit_classifier, images, units)

    Reference:
        Abnar, S., Zuidema, W. (2020). Quantifying Attention Flow in Transformers. ACL.
        arXiv:2005.00928.

    Args:
        model: a transformer classifier whose attention can be reached (see the module
            docstring).
        inputs: (B, H, W, C) images.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the image axes (-3, -2).
        head_fusion: "mean", "max" or "min" over each block's heads.

    Returns:
        logits (B, K) and maps (B, h, w, K) at the patch grid's resolution.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ExplainError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, not "
                         f"{head_fusion!r}.")
    inputs = tf.convert_to_tensor(inputs)
    logits, attentions = attention_outputs(model, inputs)
    indices = inspection.select_units(logits, indices)
    logits = inspection.gather_units(logits, indices)
    fuse = {"mean": tf.reduce_mean, "max": tf.reduce_max, "min": tf.reduce_min}[head_fusion]
    attention = fuse(tf.cast(attentions, tf.float32), axis=2)  # (B, L, T, T)
    tokens = attention.shape[-1]
    mixed = attention + tf.eye(tokens)
    mixed = mixed / tf.reduce_sum(mixed, axis=-1, keepdims=True)
    rollout = mixed[:, 0]
    for block in range(1, attention.shape[1]):
        rollout = tf.matmul(mixed[:, block], rollout)
    prefix, (rows, cols) = inspection.token_grid(
        (None, tokens, None), [inputs.shape[a] for a in spatial_axis])
    grid = tf.reshape(rollout[:, 0, prefix:], (-1, rows, cols, 1))
    return logits, tf.cast(tf.repeat(grid, tf.shape(logits)[-1], axis=-1), inputs.dtype)


METHODS = [attention_rollout]
"""The methods of this module, for introspection and the registry."""

__all__ = ["HEAD_FUSIONS", "attention_outputs", "attention_rollout"]
