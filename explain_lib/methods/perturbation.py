"""Perturbation methods: maps built from how the explained scores change when parts of the
input are hidden. Forward passes only, so they explain any model, differentiable or not.

Both evaluate the model on many perturbed copies of each input (a window position, a
random mask), `chunk_size` copies per forward pass (`chunk_size × B` inputs), reducing the
scores into the maps as they come: memory does not grow with the number of copies. The
copies are the same for every sample of a batch, so a sample's map does not depend on the
batch, or the replica, it is explained in.

Inputs are images (B, H, W, C) of static spatial size (the windows and masks are laid out
on it); the maps have the input's resolution, (B, H, W, K).
"""

import math
from typing import Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from explain_lib import inspection, utils
from explain_lib.methods import chunking
from explain_lib.methods.common import (
    RANDOM_ALGORITHM,
    check_score,
    image_size,
    logits_of,
    scores_of,
)
from explain_lib.utils import SPATIAL_AXIS, ExplainError


def _pair(value: Union[int, Sequence[int]]) -> Tuple[int, int]:
    return (int(value), int(value)) if np.isscalar(value) else tuple(int(v) for v in value)


def _window_starts(length: int, patch: int, stride: int) -> list:
    """Window origins along one axis: every `stride` pixels, plus one flush with the far
    edge."""
    if not 1 <= patch <= length or stride < 1:
        raise ExplainError(
            f"Occlusion patches of {patch} pixels with stride {stride} do not fit an axis of "
            f"{length} pixels: need 1 <= patch_size <= size and stride >= 1."
        )
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def occlusion(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    patch_size: Union[int, Sequence[int], None] = None,
    stride: Union[int, Sequence[int], None] = None,
    baseline: Union[float, tf.Tensor] = 0.0,
    score: str = "probability",
    chunk_size: int = 16,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Occlusion: how much the explained unit's probability drops when a window hiding a
    pixel is set to a baseline, averaged over the windows that hide it.

    A `patch_size` window slides over the image every `stride` pixels (plus a last position
    flush with each edge; with a stride no longer than the patch every pixel is covered,
    otherwise uncovered pixels are 0). For each window position the
    drop p_u(x) - p_u(x with the window set to `baseline`) is credited to every pixel under
    the window; a pixel's value is the mean drop of the windows covering it. Positive
    values mark regions the score relies on. p_u is the softmax probability of the unit,
    as in the paper's maps of "the probability of the correct class" (`score="logit"`
    measures the drop of the raw logit instead, as libraries that occlude a model's raw
    output do).

    Usage:

        logits, maps = occlusion(model, images, units, patch_size=16, stride=8)
        logits, maps = explain_lib.occlusion(model, images, units)   # positive part, [0, 1]

    Reference:
        Zeiler, M. D., Fergus, R. (2014). Visualizing and Understanding Convolutional
        Networks. ECCV. arXiv:1311.2901.

    Args:
        model: the model; its (first) output is the logits (B, U).
        inputs: (B, H, W, C) images of static size.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: must be the image axes (-3, -2).
        patch_size: window height and width (one int for both); default: 1/14 of the
            image's longer side (16 pixels at 224, `utils.at_input_size`).
        stride: step between window positions (one int for both); default: 1/28 of the
            image's longer side (8 pixels at 224), so the number of windows does not grow
            with the image.
        baseline: the value hidden pixels take: a number or a tensor broadcastable to the
            inputs (such as a mean image).
        score: "probability" (softmax over the units; sigmoid for a one-unit model) or
            "logit": the score whose drop is measured.
        chunk_size: window positions per forward pass.

    Returns:
        logits (B, K) and maps (B, H, W, K).
    """
    inputs = tf.convert_to_tensor(inputs)
    height, width = image_size(inputs, spatial_axis, "occlusion")
    if patch_size is None:
        patch_size = max(1, round(utils.at_input_size(16, (height, width))))
    if stride is None:
        stride = max(1, round(utils.at_input_size(8, (height, width))))
    (patch_h, patch_w), (stride_h, stride_w) = _pair(patch_size), _pair(stride)
    rows = _window_starts(height, patch_h, stride_h)
    cols = _window_starts(width, patch_w, stride_w)
    origins = np.array([(r, c) for r in rows for c in cols], dtype=np.int32)
    coverage = np.zeros((height, width), np.float32)
    for r, c in origins:
        coverage[r:r + patch_h, c:c + patch_w] += 1

    check_score(score)
    all_logits = logits_of(model, inputs)
    indices = inspection.select_units(all_logits, indices)
    logits = inspection.gather_units(all_logits, indices)
    reference = inspection.gather_units(scores_of(all_logits, score), indices)
    baseline = tf.cast(baseline, inputs.dtype)
    window_rows, window_cols = tf.constant(origins[:, 0]), tf.constant(origins[:, 1])
    ys = tf.range(height)[None, :, None]
    xs = tf.range(width)[None, None, :]

    def window_chunk(start, count):
        top = tf.gather(window_rows, start + tf.range(count))[:, None, None]
        left = tf.gather(window_cols, start + tf.range(count))[:, None, None]
        hidden = (ys >= top) & (ys < top + patch_h) & (xs >= left) & (xs < left + patch_w)
        hidden = tf.cast(hidden, inputs.dtype)  # (n, H, W)
        mask = hidden[:, None, :, :, None]
        occluded = chunking.merge_copies(inputs * (1 - mask) + baseline * mask)
        scores = inspection.gather_units(
            scores_of(logits_of(model, occluded), score), chunking.tile_indices(indices, count)
        )
        drops = reference[None] - chunking.split_copies(scores, count)  # (n, B, K)
        return tf.einsum("nhw,nbk->bhwk", hidden, tf.cast(drops, hidden.dtype))

    zeros = tf.zeros(tf.concat([tf.shape(inputs)[:-1], [logits.shape[-1]]], 0), inputs.dtype)
    total = chunking.chunked_reduce(len(origins), chunk_size, window_chunk, initial=zeros)
    # A stride longer than the patch leaves pixels no window covers: they stay 0.
    return logits, tf.math.divide_no_nan(total, tf.constant(coverage[:, :, None], inputs.dtype))


def rise(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    masks: int = 4000,
    cell_size: Optional[int] = None,
    keep_probability: float = 0.5,
    seed: int = 0,
    score: str = "probability",
    chunk_size: int = 32,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """RISE: the explained unit's probability under random masks, averaged per pixel over
    the masks that keep it: S(p) = Σ_i p_u(x ⊙ M_i) M_i(p) / (N · keep_probability).

    Each mask keeps the cells of a coarse random grid (cells of `cell_size` pixels, each
    kept with `keep_probability`), upsampled bilinearly to one cell more than the image
    and cropped at a random offset, so that masks are smooth and their edges fall anywhere.
    The masks are reproducible (stateless, seeded by `seed` and the mask's number) and the
    same for every sample. Where a pixel does not matter to the score, S is the mean masked
    score; where it does, S departs from it. p_u is the softmax probability of the unit, as
    in the paper and its official code, which append a softmax to the model (`score="logit"`
    weighs masks by the raw logit instead).

    Usage:

        logits, maps = rise(model, images, units, masks=2000, cell_size=28)
        logits, maps = explain_lib.rise(model, images, units)   # normalised to [0, 1]

    Reference:
        Petsiuk, V., Das, A., Saenko, K. (2018). RISE: Randomized Input Sampling for
        Explanation of Black-box Models. BMVC. arXiv:1806.07421.

    Args:
        model: the model; its (first) output is the logits (B, U).
        inputs: (B, H, W, C) images of static size.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: must be the image axes (-3, -2).
        masks: N, the number of random masks.
        cell_size: side of a grid cell, in pixels; default: 1/7 of the image's longer side
            (32 pixels at 224: the paper's 7x7 grid, `utils.at_input_size`).
        keep_probability: probability that a cell is kept.
        seed: seed of the masks.
        score: "probability" (softmax over the units; sigmoid for a one-unit model) or
            "logit": what a masked input is scored by.
        chunk_size: masks per forward pass.

    Returns:
        logits (B, K) and maps (B, H, W, K).
    """
    inputs = tf.convert_to_tensor(inputs)
    height, width = image_size(inputs, spatial_axis, "rise")
    if cell_size is None:
        cell_size = math.ceil(utils.at_input_size(32, (height, width)))
    check_score(score)
    if masks < 1 or cell_size < 1 or not 0 < keep_probability <= 1:
        raise ExplainError(
            f"rise needs masks >= 1, cell_size >= 1 and 0 < keep_probability <= 1, got "
            f"masks={masks}, cell_size={cell_size}, keep_probability={keep_probability}."
        )
    grid = (math.ceil(height / cell_size), math.ceil(width / cell_size))
    upsampled = ((grid[0] + 1) * cell_size, (grid[1] + 1) * cell_size)

    def mask(number):
        grid_seed, shift_seed = tf.unstack(
            tf.random.experimental.stateless_split(
                tf.stack([seed, number]), 2, alg=RANDOM_ALGORITHM)
        )
        kept = tf.random.stateless_uniform((*grid, 1), grid_seed, alg=RANDOM_ALGORITHM)
        smooth = tf.image.resize(tf.cast(kept < keep_probability, tf.float32), upsampled)
        shift = tf.random.stateless_uniform(
            (2,), shift_seed, 0, cell_size, dtype=tf.int32, alg=RANDOM_ALGORITHM
        )
        window = tf.slice(smooth, tf.concat([shift, [0]], 0), [height, width, 1])
        return tf.cast(window, inputs.dtype)

    logits = logits_of(model, inputs)
    indices = inspection.select_units(logits, indices)
    logits = inspection.gather_units(logits, indices)

    def mask_chunk(start, count):
        chunk = tf.map_fn(
            mask,
            start + tf.range(count),
            fn_output_signature=tf.TensorSpec((height, width, 1), inputs.dtype),
        )  # (n, H, W, 1)
        scores = inspection.gather_units(
            scores_of(logits_of(model, chunking.merge_copies(chunk[:, None] * inputs)), score),
            chunking.tile_indices(indices, count),
        )
        scores = chunking.split_copies(scores, count)  # (n, B, K)
        return tf.einsum("nhw,nbk->bhwk", chunk[..., 0], tf.cast(scores, chunk.dtype))

    zeros = tf.zeros(tf.concat([tf.shape(inputs)[:-1], [logits.shape[-1]]], 0), inputs.dtype)
    total = chunking.chunked_reduce(masks, chunk_size, mask_chunk, initial=zeros)
    return logits, total / (masks * keep_probability)


METHODS = [occlusion, rise]
"""The methods of this module, for introspection and the registry."""

__all__ = ["occlusion", "rise"]
