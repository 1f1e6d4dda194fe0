"""Helpers the metrics share: what every metric takes, maps brought to the input's size,
baselines, ranks and correlations, and ground truth as masks.

Usage:

    maps = to_input_size(maps, inputs)                       # (B, 7, 7, K) -> (B, H, W, K)
    substrate = baseline_of(inputs, "blur", blur_sigma=5.0)  # or a number, or a tensor
    rho = pearson(a, b)                                      # over the last axis
    masks = boxes_to_masks(boxes, (H, W))                    # (B, M, 4) -> (B, H, W)
"""

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from explain_lib import utils
from explain_lib.methods.common import parameters_of as method_parameters
from explain_lib.methods.gradient import gaussian_blur
from explain_lib.utils import ExplainError

METRIC_ARGUMENTS = ("model", "inputs", "units", "maps", "ground_truth")
"""What every metric takes from its caller, the engine: not parameters of the metric."""

METHOD_METRIC_ARGUMENTS = METRIC_ARGUMENTS + ("batch_size", "verbose", "explain")
"""What a metric that explains by itself (`takes_method`) also gets from `evaluate`: the
loop's batch size and verbosity, and `explain` itself, which it calls with them (the metrics
sit below the engine and never import it)."""


def parameters_of(metric, given: Sequence[str] = METRIC_ARGUMENTS
                  ) -> Tuple[Dict[str, Any], bool]:
    """A metric's own parameters, read from its signature: `({name: default}, whether it
    takes any other keyword too)`, the arguments the engine gives (`given`) left out (as
    `methods.common.parameters_of` reads a method's)."""
    return method_parameters(metric, given)


def image_size(inputs: tf.Tensor, metric: str) -> Tuple[int, int]:
    """The static (H, W) of images (B, H, W, C), or an error saying what the metric needs."""
    if inputs.shape.rank != 4 or inputs.shape[1] is None or inputs.shape[2] is None:
        raise ExplainError(
            f"{metric} evaluates maps of images (B, H, W, C) of static height and width; got "
            f"inputs of shape {tuple(inputs.shape)}."
        )
    return int(inputs.shape[1]), int(inputs.shape[2])


def to_input_size(maps: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """Maps (B, h, w, K) bilinearly resized to `size` (H, W) (`utils.resize`, as `explain`
    resizes), unchanged when they have it already: a 7x7 Grad-CAM is judged pixel by pixel
    of the image it explains.

    Usage:

        maps = to_input_size(maps, (224, 224))     # (B, 7, 7, K) -> (B, 224, 224, K)
    """
    maps = tf.convert_to_tensor(maps)
    if tuple(maps.shape[1:3]) == tuple(size):
        return maps
    return utils.resize(maps, tuple(size))


def baseline_of(inputs: tf.Tensor, baseline: Union[float, str, tf.Tensor],
                blur_sigma: Optional[float]) -> tf.Tensor:
    """What removed pixels become, with the shape of `inputs`: a number (a constant image),
    "blur" (each input blurred by a Gaussian of `blur_sigma` pixels,
    `gradient.gaussian_blur`; None: 5 pixels at 224, `utils.at_input_size`) or a tensor
    broadcastable to the inputs (a mean image).

    Usage:

        substrate = baseline_of(images, "blur", blur_sigma=5.0)
        substrate = baseline_of(images, images.mean((0, 1, 2)), blur_sigma=5.0)  # mean pixel
    """
    if isinstance(baseline, str):
        if baseline != "blur":
            raise ExplainError(
                f"Unknown baseline {baseline!r}: pass a number, 'blur' or a tensor "
                "broadcastable to the inputs."
            )
        if blur_sigma is None:
            blur_sigma = utils.at_input_size(5.0, inputs.shape[1:3])
        if not blur_sigma > 0:
            raise ExplainError(f"blur_sigma must be positive, got blur_sigma={blur_sigma}.")
        return gaussian_blur(inputs, blur_sigma)
    return tf.broadcast_to(tf.cast(baseline, inputs.dtype), tf.shape(inputs))


def flat_maps(maps: tf.Tensor) -> tf.Tensor:
    """(B, H, W, K) -> (B, K, H·W): one row of pixels (row-major) per sample and unit."""
    shape = tf.shape(maps)
    return tf.reshape(tf.transpose(maps, [0, 3, 1, 2]), tf.stack([shape[0], shape[3], -1]))


def average_ranks(values: tf.Tensor) -> tf.Tensor:
    """Ranks (1-based, float) of `values` along the last axis, ties sharing the mean of the
    ranks they span: what Spearman's correlation ranks by (`scipy.stats.rankdata`'s
    "average"). One sort per row, so rows of 50,000 pixels are cheap.

    Usage:

        average_ranks([[3.0, 1.0, 3.0]])   # [[2.5, 1.0, 2.5]]
    """
    values = tf.convert_to_tensor(values)
    shape = tf.shape(values)
    length = shape[-1]
    rows = tf.reshape(values, tf.stack([-1, length]))
    order = tf.argsort(rows, axis=-1, stable=True)
    ordered = tf.gather(rows, order, batch_dims=1)
    # Each run of equal values is a group; its members share the mean of their positions.
    starts = tf.concat([tf.ones_like(ordered[:, :1], tf.bool),
                        ordered[:, 1:] != ordered[:, :-1]], axis=1)
    groups = tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1
    count = tf.shape(rows)[0]
    groups += tf.range(count)[:, None] * length  # groups of different rows stay apart
    positions = tf.cast(tf.broadcast_to(tf.range(1, length + 1), tf.shape(rows)), values.dtype)
    means = tf.math.unsorted_segment_mean(tf.reshape(positions, [-1]), tf.reshape(groups, [-1]),
                                          count * length)
    sorted_ranks = tf.gather(means, groups)
    # Back from sorted order to the values' own order.
    inverse = tf.argsort(order, axis=-1)
    return tf.reshape(tf.gather(sorted_ranks, inverse, batch_dims=1), shape)


def pearson(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Pearson's correlation of `a` and `b` along the last axis; 0 where either is constant
    (no variation to correlate: Xplique's MuFidelity takes 0 there too).

    Usage:

        pearson(attributions, drops)        # (B, K, S), (B, K, S) -> (B, K)
    """
    a = a - tf.reduce_mean(a, axis=-1, keepdims=True)
    b = b - tf.reduce_mean(b, axis=-1, keepdims=True)
    covariance = tf.reduce_sum(a * b, axis=-1)
    spread = tf.sqrt(tf.reduce_sum(a * a, axis=-1) * tf.reduce_sum(b * b, axis=-1))
    return tf.math.divide_no_nan(covariance, spread)


def spearman(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Spearman's rank correlation of `a` and `b` along the last axis (Pearson's of their
    average ranks, as `scipy.stats.spearmanr`); 0 where either is constant.

    Usage:

        spearman(flat_maps(maps), flat_maps(others))   # (B, K, H·W) -> (B, K)
    """
    return pearson(average_ranks(a), average_ranks(b))


CORRELATIONS = {"pearson": pearson, "spearman": spearman}


def boxes_to_masks(boxes: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """Boxes (B, M, 4), `(ymin, xmin, ymax, xmax)` in [0, 1] (the TFDS convention), as masks
    (B, H, W) of the pixels whose centre lies in at least one box (float 0/1).

    Rows of NaN, and rows of zero area (what `padded_batch` pads with), contain no pixel,
    so a ragged set of boxes per image can be padded with either.

    Usage:

        masks = boxes_to_masks([[[0.25, 0.25, 0.75, 0.5]]], (8, 8))   # rows 2-5, cols 2-3
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    height, width = size
    ys = (tf.range(height, dtype=tf.float32) + 0.5) / height
    xs = (tf.range(width, dtype=tf.float32) + 0.5) / width
    ymin, xmin, ymax, xmax = [boxes[..., i, None] for i in range(4)]  # (B, M, 1)
    rows = (ys >= ymin) & (ys <= ymax)  # (B, M, H): NaN compares False
    cols = (xs >= xmin) & (xs <= xmax)  # (B, M, W)
    inside = rows[..., :, None] & cols[..., None, :]  # (B, M, H, W)
    return tf.cast(tf.reduce_any(inside, axis=1), tf.float32)


def pad_boxes(boxes) -> np.ndarray:
    """A ragged set of boxes per image (a sequence of (m_i, 4) arrays, a `tf.RaggedTensor`,
    or a numpy masked array whose masked rows are padding) as one float32 array
    (N, max(m_i, 1), 4) padded with NaN rows; an array (N, M, 4) passes through.

    Usage:

        pad_boxes([np.array([[0.1, 0.1, 0.4, 0.5]]), np.zeros((0, 4))]).shape   # (2, 1, 4)
    """
    if isinstance(boxes, tf.RaggedTensor):
        boxes = [np.asarray(row, np.float32).reshape(-1, 4) for row in boxes.to_list()]
    elif isinstance(boxes, np.ma.MaskedArray):
        hidden = np.ma.getmaskarray(boxes)
        boxes = np.where(hidden.any(axis=-1, keepdims=True), np.nan, boxes.filled(np.nan))
    if isinstance(boxes, (np.ndarray, tf.Tensor)):
        boxes = np.asarray(boxes, np.float32)
        if boxes.ndim != 3 or boxes.shape[-1] != 4:
            raise ExplainError(
                f"boxes of shape {boxes.shape}: give (N, M, 4) boxes (ymin, xmin, ymax, xmax) "
                "in [0, 1], padded with NaN rows, or one (m_i, 4) array per image."
            )
        return boxes
    rows = [np.asarray(row, np.float32).reshape(-1, 4) if np.size(row) else
            np.zeros((0, 4), np.float32) for row in boxes]
    padded = np.full((len(rows), max([1] + [len(row) for row in rows]), 4), np.nan, np.float32)
    for i, row in enumerate(rows):
        padded[i, :len(row)] = row
    return padded


__all__ = [
    "CORRELATIONS",
    "METHOD_METRIC_ARGUMENTS",
    "METRIC_ARGUMENTS",
    "average_ranks",
    "baseline_of",
    "boxes_to_masks",
    "flat_maps",
    "image_size",
    "pad_boxes",
    "parameters_of",
    "pearson",
    "spearman",
    "to_input_size",
]
