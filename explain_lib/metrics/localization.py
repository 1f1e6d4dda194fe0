"""Localisation metrics: does the map point at the object, against ground-truth regions?

- `pointing_game` (Zhang et al., 2016): whether the map's maximum falls on the object,
  within a tolerance of 15 pixels at 224 (scaled with the image).
- `energy_pointing_game` (Wang et al., 2020): the share of the map's energy inside the
  object's boxes.

Each is a function `(model, inputs, units, maps, ground_truth, **params) -> scores (B, K)`:
`ground_truth` (B, H, W) is 1 on the object's pixels at the input's size (`evaluate` turns
TFDS-style boxes into it with `common.boxes_to_masks`), and `maps` (B, h, w, K) are resized
bilinearly to that size first. The model is not used. Every unit of a sample is judged
against the sample's ground truth; a sample without any ground truth scores NaN (not
evaluated: average with `np.nanmean`), as benchmarks skip images without the class.
"""

from typing import Optional

import keras
import tensorflow as tf

from explain_lib import utils
from explain_lib.metrics.common import flat_maps, image_size, to_input_size
from explain_lib.utils import ExplainError


def _ground_truth(ground_truth, size, metric):
    ground_truth = tf.cast(tf.convert_to_tensor(ground_truth), tf.float32)
    if ground_truth.shape.rank == 4 and ground_truth.shape[-1] == 1:
        ground_truth = ground_truth[..., 0]
    if ground_truth.shape.rank != 3 or tuple(ground_truth.shape[1:]) != tuple(size):
        raise ExplainError(
            f"{metric} needs ground-truth masks (B, {size[0]}, {size[1]}) at the inputs' size, "
            f"got shape {tuple(ground_truth.shape)}."
        )
    return ground_truth


def _unevaluated(ground_truth, scores):
    """NaN where a sample has no ground truth at all."""
    empty = tf.reduce_max(ground_truth, axis=[1, 2]) <= 0  # (B,)
    return tf.where(empty[:, None], tf.constant(float("nan"), scores.dtype), scores)


def peaks(maps: tf.Tensor) -> tf.Tensor:
    """The position (B, K) in row-major order of each map's maximum; on ties, the first (as
    `np.argmax`, which the official code takes: `tf.argmax` does not promise which).

    Usage:

        peak = peaks(maps)        # row = peak // W, column = peak % W
    """
    values = flat_maps(maps)
    pixels = tf.shape(values)[-1]
    first = tf.where(values >= tf.reduce_max(values, axis=-1, keepdims=True),
                     tf.range(pixels)[None, None], pixels)
    return tf.reduce_min(first, axis=-1)


def pointing_game(
    model: keras.Model,
    inputs: tf.Tensor,
    units: tf.Tensor,
    maps: tf.Tensor,
    ground_truth: tf.Tensor,
    tolerance: Optional[float] = None,
) -> tf.Tensor:
    """Pointing game: 1 (a hit) when the map's maximum lies on the object, or within
    `tolerance` pixels of one of its pixels, else 0 (a miss). The mean over samples is the
    pointing accuracy.

    Follows the paper's official evaluation (github.com/jimmie33/Caffe-ExcitationBP,
    `eval_coco.py`): the maximum of the map at the image's size (`np.argmax`: the first in
    row-major order on ties), a disc of radius 15 around it, a hit when it meets the ground
    truth (distance ≤ `tolerance`; TorchRay's `PointingGame` takes < instead, which differs
    only for pixels at exactly the tolerance). All of the sample's boxes count, as the
    official code tries every annotation of the class: give the boxes of the explained class.

    Usage:

        hits = pointing_game(None, images, units, maps, masks)           # (B, K) of 0/1
        hits = explain_lib.evaluate("pointing_game", None, x, y, maps, boxes=boxes)

    Reference:
        Zhang, J., Lin, Z., Brandt, J., Shen, X., Sclaroff, S. (2016). Top-down Neural
        Attention by Excitation Backprop. ECCV. arXiv:1608.00507.

    Args:
        model: unused (the metric needs none).
        inputs: (B, H, W, C) images; their size is the ground truth's.
        units: (B, K) the explained units (one map each).
        maps: (B, h, w, K) one map per unit.
        ground_truth: (B, H, W) 1 on the object's pixels.
        tolerance: radius, in pixels, around the maximum (0: the maximum itself must lie
            on the object); default: the paper's 15 pixels at 224, scaled with the image
            (`utils.at_input_size`: 4.3 at 64).

    Returns:
        (B, K) 1.0 for a hit, 0.0 for a miss, NaN for a sample without ground truth.
    """
    size = image_size(inputs, "pointing_game")
    if tolerance is None:
        tolerance = utils.at_input_size(15, size)
    if not tolerance >= 0:
        raise ExplainError(f"pointing_game needs tolerance >= 0 pixels, got {tolerance}.")
    ground_truth = _ground_truth(ground_truth, size, "pointing_game")
    peak = peaks(to_input_size(maps, size))  # (B, K)
    rows = tf.cast(tf.range(size[0]), tf.float32)[None, None, :, None]
    cols = tf.cast(tf.range(size[1]), tf.float32)[None, None, None, :]
    peak_row = tf.cast(peak // size[1], tf.float32)[..., None, None]
    peak_col = tf.cast(peak % size[1], tf.float32)[..., None, None]
    disc = tf.square(rows - peak_row) + tf.square(cols - peak_col) <= float(tolerance) ** 2
    hits = tf.reduce_any(disc & (ground_truth[:, None] > 0), axis=[2, 3])  # (B, K)
    return _unevaluated(ground_truth, tf.cast(hits, tf.float32))


def energy_pointing_game(
    model: keras.Model,
    inputs: tf.Tensor,
    units: tf.Tensor,
    maps: tf.Tensor,
    ground_truth: tf.Tensor,
) -> tf.Tensor:
    """Energy-based pointing game: the share of the map's energy (its sum) that falls
    inside the object's boxes, Σ_box m / Σ m, in [0, 1]. Higher is better; a uniform map
    scores the boxes' share of the image.

    Follows the official code (github.com/haofanwang/Score-CAM,
    `utils/energyPointGame.py`): the map as given, summed inside the box over summed
    everywhere. The maps must not be negative (the conventional post-processing, a
    positive or absolute normalisation, makes them so; `evaluate` refuses negative maps);
    a map of zeros has no energy anywhere and scores 0 (the official code divides by zero).
    Several boxes count as their union.

    Usage:

        shares = energy_pointing_game(None, images, units, maps, masks)   # (B, K) in [0, 1]
        shares = explain_lib.evaluate("energy_pointing_game", None, x, y, maps, boxes=boxes)

    Reference:
        Wang, H., Wang, Z., Du, M., Yang, F., Zhang, Z., Ding, S., Mardziel, P., Hu, X.
        (2020). Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
        Networks. CVPR Workshops. arXiv:1910.01279.

    Args:
        model: unused (the metric needs none).
        inputs: (B, H, W, C) images; their size is the ground truth's.
        units: (B, K) the explained units (one map each).
        maps: (B, h, w, K) one non-negative map per unit.
        ground_truth: (B, H, W) 1 inside the boxes.

    Returns:
        (B, K) the share of each map's energy inside the boxes; NaN for a sample without
        ground truth.
    """
    size = image_size(inputs, "energy_pointing_game")
    ground_truth = _ground_truth(ground_truth, size, "energy_pointing_game")
    maps = tf.cast(to_input_size(maps, size), tf.float32)
    inside = tf.einsum("bhwk,bhw->bk", maps, ground_truth)
    total = tf.reduce_sum(maps, axis=[1, 2])
    # The two sums are taken in different orders (a contraction, a reduction): in float32
    # their ratio can exceed 1 by a few ulps (1.0000004) when all the energy is inside.
    share = tf.clip_by_value(tf.math.divide_no_nan(inside, total), 0.0, 1.0)
    return _unevaluated(ground_truth, share)


__all__ = ["energy_pointing_game", "peaks", "pointing_game"]
