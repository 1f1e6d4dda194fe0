"""Filters: functions of a map, applied as post-processing (or inside methods).

Each filter takes `x` (..., H, W, K) and `axis`, the spatial axes, and returns a tensor of
the same shape. They compose as plain functions: `normalize(positive(x))` is
`positive_normalize(x)`.

Usage:

    logits, maps = explain_lib.explain(method, model, x, y,
                                       postprocessing=filters.positive_normalize)
"""

from typing import Callable, Sequence, Union

import tensorflow as tf

from explain_lib.utils import SPATIAL_AXIS, ExplainError


def normalize(x: tf.Tensor, axis: Sequence[int] = SPATIAL_AXIS) -> tf.Tensor:
    """Min-max normalise each map into [0, 1] over its spatial axes.

    A constant map becomes all zeros (not NaN).

    Usage:

        filters.normalize(np.array([[[[2.], [4.]], [[6.], [10.]]]]))  # [[0], [.25]], [[.5], [1]]
    """
    x = tf.convert_to_tensor(x)
    x = x - tf.reduce_min(x, axis=axis, keepdims=True)
    return tf.math.divide_no_nan(x, tf.reduce_max(x, axis=axis, keepdims=True))


def positive(x: tf.Tensor, axis: Sequence[int] = SPATIAL_AXIS) -> tf.Tensor:
    """Keep the positive part, max(x, 0): the regions that raise the explained score."""
    return tf.nn.relu(x)


def negative(x: tf.Tensor, axis: Sequence[int] = SPATIAL_AXIS) -> tf.Tensor:
    """Keep the negative part as magnitudes, max(-x, 0): the regions that lower the score."""
    return tf.nn.relu(-tf.convert_to_tensor(x))


def positive_normalize(x: tf.Tensor, axis: Sequence[int] = SPATIAL_AXIS) -> tf.Tensor:
    """`normalize(positive(x))`: the conventional post-processing of CAM methods."""
    return normalize(positive(x, axis), axis)


def negative_normalize(x: tf.Tensor, axis: Sequence[int] = SPATIAL_AXIS) -> tf.Tensor:
    """`normalize(negative(x))`: where the evidence against the unit lies, in [0, 1]."""
    return normalize(negative(x, axis), axis)


def absolute_normalize(x: tf.Tensor, axis: Sequence[int] = SPATIAL_AXIS) -> tf.Tensor:
    """`normalize(|x|)`: magnitude of the contribution, whatever its sign, in [0, 1]."""
    return normalize(tf.abs(x), axis)


FILTERS = {
    "normalize": normalize,
    "positive": positive,
    "negative": negative,
    "positive_normalize": positive_normalize,
    "negative_normalize": negative_normalize,
    "absolute_normalize": absolute_normalize,
}
"""Every filter by name: how configurations (the job's `--method_params`) name them."""


def get(name: Union[str, Callable]) -> Callable:
    """The filter called `name` (a function is its own filter), so that everything that
    takes a filter takes its name too.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if callable(name):
        return name
    try:
        return FILTERS[name]
    except (KeyError, TypeError):
        raise ExplainError(f"Unknown filter {name!r}; known: {', '.join(FILTERS)}.") from None


__all__ = [
    "FILTERS",
    "get",
    "normalize",
    "positive",
    "negative",
    "positive_normalize",
    "negative_normalize",
    "absolute_normalize",
]
