"""Small helpers shared by the engine, the methods and the filters."""

from typing import Sequence, Tuple, Union

import keras
import tensorflow as tf

SPATIAL_AXIS = (-3, -2)
"""Default positions of the spatial axes: inputs are (batch, H, W, channels)."""

class ExplainError(ValueError):
    """A method, filter or metric cannot take this model or these arguments. Raised while
    the step is traced, it reaches the caller as it was raised: TensorFlow's AutoGraph
    passes an error marked `ag_pass_through` on, where it would rewrap a plain ValueError's
    message in a listing of the traced frames."""

    ag_pass_through = True


REFERENCE_SIDE = 224
"""The image side at which the papers give their lengths in pixels (ImageNet's 224x224
crops): a default length scales with the input (`at_input_size`)."""


def at_input_size(pixels: float, size: Sequence[int]) -> float:
    """A length of `pixels` on a 224-pixel image, on an image of spatial `size`: scaled by
    its longer side over `REFERENCE_SIDE`, so that a default keeps its proportion to the
    image (RISE's cells of 32 pixels, a 7x7 grid at 224, are a 7x7 grid at 32 too).

    Usage:

        at_input_size(15, (64, 64))          # 4.29: the pointing game's tolerance at 64
    """
    return pixels * max(int(side) for side in size) / REFERENCE_SIDE


def tolist(item) -> list:
    """`item` as a list: lists pass through, tuples and sets are converted, anything else
    becomes a one-element list."""
    if isinstance(item, list):
        return item
    if isinstance(item, (tuple, set)):
        return list(item)
    return [item]


def positive_axes(axes: Sequence[int], rank: int) -> Tuple[int, ...]:
    """Resolve (possibly negative) `axes` against a tensor of `rank` dimensions."""
    return tuple(a % rank for a in axes)


def resize(
    maps: tf.Tensor,
    size: Union[Sequence[int], tf.Tensor],
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
) -> tf.Tensor:
    """Bilinearly resize the spatial axes of `maps` to `size`.

    The common layout (..., H, W, K) goes straight to `tf.image.resize`; any other layout
    (videos, volumes: spatial_axis of length 1 or 3, or axes elsewhere) is resized one axis
    at a time, which is the same operation because bilinear interpolation is separable.

    Usage:

        maps = resize(maps, (224, 224))              # (B, 7, 7, K) -> (B, 224, 224, K)
        vols = resize(vols, (32, 64, 64), (1, 2, 3))  # (B, 8, 16, 16, K) -> (B, 32, 64, 64, K)
    """
    rank = maps.shape.rank
    axes = positive_axes(spatial_axis, rank)
    if axes == (rank - 3, rank - 2):
        shape = tf.shape(maps)
        flat = tf.reshape(maps, tf.concat([[-1], shape[-3:]], axis=0))
        flat = tf.image.resize(flat, size)
        return tf.reshape(flat, tf.concat([shape[:-3], tf.shape(flat)[1:]], axis=0))

    for axis, length in zip(axes, tf.unstack(tf.convert_to_tensor(size, tf.int32))):
        moved = tf.experimental.numpy.moveaxis(maps, axis, -1)
        shape = tf.shape(moved)
        line = tf.reshape(moved, [-1, shape[-1], 1, 1])
        line = tf.image.resize(line, tf.stack([length, 1]))
        moved = tf.reshape(line, tf.concat([shape[:-1], [length]], axis=0))
        maps = tf.experimental.numpy.moveaxis(moved, -1, axis)
    return maps


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
"""Keras dtype policies a model can be explained under (`with_dtype_policy`)."""


def with_dtype_policy(model: keras.Model, policy: str) -> keras.Model:
    """A copy of `model` whose layers compute under the Keras dtype policy `policy`, with the
    same weights; `model` itself is left as it is (Keras' global policy too).

    Under "mixed_float16" or "mixed_bfloat16" the weights stay float32 and each layer
    computes in half precision, which is what accelerators run fastest; `explain` returns
    maps and logits in the inputs' float32 whatever the policy. "float32" returns `model`.

    Usage:

        fast = with_dtype_policy(model, "mixed_bfloat16")
        logits, maps = explain_lib.gradcam(fast, images, labels)

    Raises:
        ValueError: for a policy not in `PRECISIONS`.
    """
    if policy not in PRECISIONS:
        raise ValueError(f"Unknown precision {policy!r}: use one of {', '.join(PRECISIONS)}.")
    if policy == "float32":
        return model

    def under_policy(layer):
        config = layer.get_config()
        if "dtype" in config and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = keras.mixed_precision.Policy(policy)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=under_policy, recursive=True)
    copy.set_weights(model.get_weights())
    return copy
