"""Gradient-based explaining methods: maps built from the gradient of the explained units
with respect to the input signal.

Every method here is a plain function `(model, inputs, indices, ...) -> (logits, maps)` on
a model whose (first) output is the logits. K explained units cost one forward pass and K
backward passes (one vector-Jacobian product per unit), never a Jacobian over every unit.
"""

from typing import Callable, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from explain_lib import inspection
from explain_lib.inspection import KERNEL_AXIS
from explain_lib.utils import SPATIAL_AXIS


def logits_of(model: keras.Model, inputs: tf.Tensor) -> tf.Tensor:
    """The model's logits: its output, or its first output for an exposed model."""
    outputs = model(inputs, training=False)
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def unit_gradients(
    tape: tf.GradientTape, logits: tf.Tensor, sources, units: int
) -> list:
    """For each of the `units` columns of `logits` (B, K), the gradient of that column with
    respect to `sources`: one backward pass per unit, on a persistent `tape`.

    Samples are independent in inference, so the gradient of a column's sum is each
    sample's own gradient.
    """
    return [
        tape.gradient(logits, sources, output_gradients=tf.one_hot(
            tf.fill(tf.shape(logits)[:1], k), units, dtype=logits.dtype))
        for k in range(units)
    ]


def gradients(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    indices_axis: int = KERNEL_AXIS,
    indices_batch_dims: int = -1,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    gradient_filter: Callable = tf.abs,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Vanilla gradient saliency: ψ(∂f_u(x)/∂x), averaged over channels.

    For each explained unit u, the gradient of its score with respect to every input value,
    passed through `gradient_filter` (default: absolute value) and averaged over the channel
    axis.

    Usage:

        logits, maps = gradients(model, images, tf.constant([[3], [7]]))  # maps (2, H, W, 1)
        logits, maps = explain_lib.gradients(model, images, [3, 7])       # normalised

    Reference:
        Simonyan, K., Vedaldi, A., Zisserman, A. (2013). Deep Inside Convolutional Networks:
        Visualising Image Classification Models and Saliency Maps. arXiv:1312.6034.

    Args:
        model: the model; its (first) output is the logits (B, U).
        inputs: (B, H, W, C) input signals.
        indices: (B, K) units to explain; None explains all U units.
        indices_axis, indices_batch_dims: how `indices` gather from the logits.
        spatial_axis: the spatial axes of `inputs`.
        gradient_filter: applied to the gradient before the channel mean.

    Returns:
        logits (B, K) and maps (B, H, W, K).
    """
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        tape.watch(inputs)
        logits = inspection.gather_units(
            logits_of(model, inputs), indices, indices_axis, indices_batch_dims
        )
    units = logits.shape[-1]
    maps = [
        tf.reduce_mean(gradient_filter(grad), axis=-1)
        for grad in unit_gradients(tape, logits, inputs, units)
    ]
    del tape
    return logits, tf.stack(maps, axis=-1)


METHODS = [gradients]
"""The methods of this module, for introspection and the registry."""

__all__ = ["gradients"]
