"""Fidelity metrics: does the model's score follow the map when the input is perturbed?

- `deletion` and `insertion` (Petsiuk et al., 2018): the unit's score as pixels are removed
  from the input, or inserted into a baseline, in the map's order; the area under the curve.
- `mufidelity` (Bhatt et al., 2020): the correlation, over random subsets of the input,
  between the map summed over the subset and the drop of the score when it is removed.

Each is a function `(model, inputs, units, maps, **params) -> scores (B, K)` on one batch:
`inputs` (B, H, W, C) images, `units` (B, K) the explained units, `maps` (B, h, w, K) one map
per unit, at any resolution (resized bilinearly to the input's before use). They evaluate the
model on many perturbed copies of each input, `chunk_size` copies per forward pass
(`chunking.chunked_reduce`), so memory does not grow with `n_steps` or `n_samples`; the
copies are laid out copy-major and drawn the same for every sample, so a sample's score does
not depend on its batch or replica. `explain_lib.evaluate` runs them over a dataset, compiled
and distributed.
"""

from typing import Optional, Union

import keras
import tensorflow as tf

from explain_lib import inspection
from explain_lib.methods import chunking
from explain_lib.methods.common import RANDOM_ALGORITHM, check_score, logits_of, scores_of
from explain_lib.metrics.common import (
    CORRELATIONS,
    baseline_of,
    flat_maps,
    image_size,
    to_input_size,
)
from explain_lib.utils import ExplainError


def pixel_counts(steps: tf.Tensor, n_steps: int, pixels: int) -> tf.Tensor:
    """How many pixels are changed after each of `steps` (of 0..n_steps): ⌈i·HW/n_steps⌉,
    so the curve's points are spread evenly from none to all. The official code changes
    `step` pixels per iteration: the same counts when n_steps divides H·W (its 224 steps of
    224 pixels on 224x224 images are n_steps=224).

    Usage:

        pixel_counts(tf.range(8), 7, 144)   # [0, 21, 42, 62, 83, 103, 124, 144]
    """
    steps = tf.cast(steps, tf.int64)
    return (steps * pixels + n_steps - 1) // n_steps


def removal_ranks(maps: tf.Tensor) -> tf.Tensor:
    """Each pixel's place (B, K, H·W) in the order pixels are changed: most important
    first; on ties, the pixel that comes first in row-major order goes first (a stable sort,
    so a constant map removes pixels row by row, the same on every run and device).

    Usage:

        ranks = removal_ranks(maps)   # ranks[b, k, p] < count: pixel p is changed
    """
    order = tf.argsort(-flat_maps(maps), axis=-1, stable=True)
    return tf.argsort(order, axis=-1)  # the inverse permutation: pixel -> place


def _check_steps(name: str, n_steps: int, chunk_size: int) -> None:
    if int(n_steps) < 1 or int(chunk_size) < 1:
        raise ExplainError(
            f"{name} needs n_steps >= 1 and chunk_size >= 1, got n_steps={n_steps} and "
            f"chunk_size={chunk_size}."
        )


def causal_auc(
    model: keras.Model,
    inputs: tf.Tensor,
    units: tf.Tensor,
    maps: tf.Tensor,
    start: tf.Tensor,
    finish: tf.Tensor,
    n_steps: int,
    score: str,
    chunk_size: int,
) -> tf.Tensor:
    """The area under the unit's score as pixels turn from `start` to `finish`, most
    important first, in `n_steps` steps: RISE's `CausalMetric` (deletion starts from the
    input, insertion finishes at it) for every sample and unit at once.

    The curve has n_steps + 1 points, the unchanged start included (one forward pass each);
    its area is the trapezoid rule over [0, 1], the official `auc`:
    (Σ s_i − s_0/2 − s_n/2) / n_steps. It is accumulated chunk by chunk as a weighted sum,
    so no curve is held in memory.

    Usage (what `deletion` does):

        scores = causal_auc(model, images, units, maps, images, zeros, 100, "probability", 16)
    """
    height, width = image_size(inputs, "causal_auc")
    pixels = height * width
    check_score(score)
    units = tf.convert_to_tensor(units)
    ranks = tf.reshape(removal_ranks(to_input_size(maps, (height, width))),
                       tf.concat([tf.shape(units), [height, width]], 0))  # (B, K, H, W)
    ranks = tf.cast(ranks, tf.int64)
    weights = tf.concat([[0.5], tf.ones([n_steps - 1]), [0.5]], 0) / n_steps
    # Copies are (step, sample, unit): every unit of a sample follows its own map.
    start = start[:, None]
    finish = finish[:, None]
    flat_units = tf.reshape(units, [-1, 1])

    def step_chunk(first, steps):
        indices = first + tf.range(steps)
        changed = ranks[None] < pixel_counts(indices, n_steps, pixels)[:, None, None, None, None]
        changed = tf.cast(changed, inputs.dtype)[..., None]  # (n, B, K, H, W, 1)
        copies = start * (1 - changed) + finish * changed  # (n, B, K, H, W, C)
        batch = tf.reshape(copies, tf.concat([[-1], tf.shape(inputs)[1:]], 0))
        scores = inspection.gather_units(
            scores_of(logits_of(model, batch), score), chunking.tile_indices(flat_units, steps)
        )
        scores = tf.reshape(scores, tf.concat([[steps], tf.shape(units)], 0))  # (n, B, K)
        return tf.einsum("n,nbk->bk", tf.gather(weights, indices), tf.cast(scores, tf.float32))

    zeros = tf.zeros(tf.shape(units), tf.float32)
    return chunking.chunked_reduce(n_steps + 1, chunk_size, step_chunk, initial=zeros)


def deletion(
    model: keras.Model,
    inputs: tf.Tensor,
    units: tf.Tensor,
    maps: tf.Tensor,
    n_steps: int = 224,
    baseline: Union[float, str, tf.Tensor] = 0.0,
    blur_sigma: Optional[float] = None,
    score: str = "probability",
    chunk_size: int = 16,
) -> tf.Tensor:
    """Deletion: the area under the unit's probability as the map's most important pixels
    are removed first (set to `baseline`), in `n_steps` steps. Lower is better: a faithful
    map removes what the score relies on first, so the score falls fast.

    Follows the paper's official code (github.com/eclique/RISE, `evaluation.py`,
    `CausalMetric` with mode "del"): pixels (all channels at once) in decreasing order of the
    map, the curve's n_steps + 1 points from the intact input to the fully removed one, its
    normalised trapezoid area (`auc`), the unit's softmax probability (the official
    notebook appends a softmax to the model), removed pixels set to zero
    (`substrate_fn=torch.zeros_like`). Where it differs: the official code removes
    `step` pixels per iteration and explains the top-1 class; here `n_steps` spreads the
    counts evenly (`pixel_counts`; the same when it divides H·W) and the units are given.
    Maps of another resolution are resized bilinearly to the input's first; ties keep
    row-major order (the official `np.argsort` leaves them to its quicksort). Zero is the
    mean pixel of the official, normalised, inputs: for inputs in [0, 255], pass the mean
    pixel (or "blur") to remove towards it.

    Usage:

        scores = deletion(model, images, units, maps)                   # (B, K)
        scores = explain_lib.evaluate("deletion", model, x, y, maps, n_steps=100)

    Reference:
        Petsiuk, V., Das, A., Saenko, K. (2018). RISE: Randomized Input Sampling for
        Explanation of Black-box Models. BMVC. arXiv:1806.07421.

    Args:
        model: the model; its (first) output is the logits (B, U).
        inputs: (B, H, W, C) images of static size.
        units: (B, K) the explained units.
        maps: (B, h, w, K) one map per unit, higher for more important pixels.
        n_steps: steps from the intact input to the fully removed one (n_steps + 1 points,
            one forward pass each).
        baseline: what removed pixels become: a number, "blur" (the input blurred by a
            Gaussian of `blur_sigma` pixels) or a tensor broadcastable to the inputs.
        blur_sigma: the Gaussian's standard deviation, in pixels, for `baseline="blur"`
            (default: 5 pixels at 224, scaled with the image).
        score: "probability" (softmax over the units; sigmoid for a one-unit model) or
            "logit".
        chunk_size: steps per forward pass (`chunk_size × B × K` images).

    Returns:
        (B, K) the area under each deletion curve.
    """
    _check_steps("deletion", n_steps, chunk_size)
    inputs = tf.convert_to_tensor(inputs)
    substrate = baseline_of(inputs, baseline, blur_sigma)
    return causal_auc(model, inputs, units, maps, inputs, substrate, int(n_steps), score,
                      int(chunk_size))


def insertion(
    model: keras.Model,
    inputs: tf.Tensor,
    units: tf.Tensor,
    maps: tf.Tensor,
    n_steps: int = 224,
    baseline: Union[float, str, tf.Tensor] = "blur",
    blur_sigma: Optional[float] = None,
    score: str = "probability",
    chunk_size: int = 16,
) -> tf.Tensor:
    """Insertion: the area under the unit's probability as the map's most important pixels
    are inserted first into a baseline (by default a blurred copy of the input), in
    `n_steps` steps. Higher is better: a faithful map restores what the score relies on
    first, so the score rises fast.

    Follows the official code as `deletion` does (`CausalMetric` with mode "ins"), whose
    insertion substrate is the image blurred by a Gaussian of σ = 5 (`gkern(11, 5)`, an
    11x11 kernel with zero padding) at 224x224; here `gradient.gaussian_blur` with
    `blur_sigma` = 5 pixels at 224, scaled with the image (`utils.at_input_size`), whose
    kernel reaches 3σ and reflects at the borders.

    Usage:

        scores = insertion(model, images, units, maps)                  # (B, K)
        scores = explain_lib.evaluate("insertion", model, x, y, maps, baseline=0.0)

    Reference:
        Petsiuk, V., Das, A., Saenko, K. (2018). RISE: Randomized Input Sampling for
        Explanation of Black-box Models. BMVC. arXiv:1806.07421.

    Args:
        As `deletion`; `baseline` is where the insertion starts ("blur" by default).

    Returns:
        (B, K) the area under each insertion curve.
    """
    _check_steps("insertion", n_steps, chunk_size)
    inputs = tf.convert_to_tensor(inputs)
    substrate = baseline_of(inputs, baseline, blur_sigma)
    return causal_auc(model, inputs, units, maps, substrate, inputs, int(n_steps), score,
                      int(chunk_size))


def subset_masks(first: tf.Tensor, count: int, grid: tuple, size: tuple,
                 subset_percent: float, seed: int) -> tf.Tensor:
    """Masks [first, first + count) of MuFidelity's random subsets, (count, H, W), 1 where a
    pixel is removed: each cell of a `grid` is removed when its uniform draw is at most
    `subset_percent` (Xplique's `mask > subset_percent` keeps the others), and the grid is
    resized to the image by nearest neighbour. Mask s is seeded by (seed, s): the same for
    every sample and on every run.

    Usage:

        removed = subset_masks(tf.constant(0), 200, (9, 9), (224, 224), 0.2, seed=0)
    """

    def draw(number):
        uniform = tf.random.stateless_uniform(grid, tf.stack([seed, number]),
                                              alg=RANDOM_ALGORITHM)
        return tf.cast(uniform <= subset_percent, tf.float32)

    cells = tf.map_fn(draw, first + tf.range(count),
                      fn_output_signature=tf.TensorSpec(grid, tf.float32))
    return tf.image.resize(cells[..., None], size, method="nearest")[..., 0]


def mufidelity(
    model: keras.Model,
    inputs: tf.Tensor,
    units: tf.Tensor,
    maps: tf.Tensor,
    grid_size: Optional[int] = 9,
    subset_percent: float = 0.2,
    n_samples: int = 200,
    baseline: Union[float, str, tf.Tensor] = 0.0,
    blur_sigma: Optional[float] = None,
    score: str = "logit",
    correlation: str = "pearson",
    seed: int = 0,
    chunk_size: int = 16,
) -> tf.Tensor:
    """MuFidelity: the correlation, over `n_samples` random subsets S of the input, between
    the map summed over S and the drop of the unit's score when S is set to `baseline`:
    corr_S(Σ_{i∈S} m_i, f(x) − f(x with S removed)). Higher is better (1: the map predicts
    every subset's effect up to scale).

    Follows the reference implementation most used in TensorFlow, Xplique's `MuFidelity`
    (github.com/deel-ai/xplique, `xplique/metrics/fidelity.py`): subsets of the cells of a
    `grid_size` × `grid_size` grid (9, resized to the image by nearest neighbour; None: of
    single pixels, the paper's original), each cell removed with probability
    `subset_percent` (0.2), 200 subsets, baseline 0, the model's raw output (`activation=None`:
    here `score="logit"`), and a correlation of 0 where there is no variation. Where it
    differs: the correlation is Pearson's, as the paper defines μF (Xplique used
    `np.corrcoef` until it switched to `spearmanr`; `correlation="spearman"` gives that);
    the subsets are seeded (stateless draws) and the maps are resized to the input's size
    first; one score per sample and unit, where Xplique returns their mean. (Under XLA, a
    model compiled with `jit_compile`, the subsets are other draws of the same distribution,
    as `common.RANDOM_ALGORITHM` says.)

    Usage:

        scores = mufidelity(model, images, units, maps)                  # (B, K)
        scores = explain_lib.evaluate("mufidelity", model, x, y, maps, n_samples=500)

    Reference:
        Bhatt, U., Weller, A., Moura, J. M. F. (2020). Evaluating and Aggregating
        Feature-based Model Explanations. IJCAI. arXiv:2005.00631.

    Args:
        model: the model; its (first) output is the logits (B, U).
        inputs: (B, H, W, C) images of static size.
        units: (B, K) the explained units.
        maps: (B, h, w, K) one signed or positive map per unit.
        grid_size: cells per side of the grid subsets are made of; None for single pixels.
        subset_percent: probability that a cell belongs to a subset.
        n_samples: number of random subsets (one forward pass of the batch each).
        baseline: what removed pixels become: a number, "blur" or a tensor broadcastable to
            the inputs.
        blur_sigma: the Gaussian's standard deviation, in pixels, for `baseline="blur"`
            (default: 5 pixels at 224, scaled with the image).
        score: "logit" (the raw output, Xplique's default) or "probability".
        correlation: "pearson" (the paper's) or "spearman" (Xplique's today).
        seed: seed of the subsets.
        chunk_size: subsets per forward pass (`chunk_size × B` images).

    Returns:
        (B, K) the correlation for each sample and unit.
    """
    if int(n_samples) < 2 or int(chunk_size) < 1:
        raise ExplainError(
            f"mufidelity needs n_samples >= 2 (a correlation) and chunk_size >= 1, got "
            f"n_samples={n_samples} and chunk_size={chunk_size}."
        )
    if not 0 < subset_percent < 1:
        raise ExplainError(f"mufidelity needs 0 < subset_percent < 1, got {subset_percent}.")
    if grid_size is not None and int(grid_size) < 1:
        raise ExplainError(f"mufidelity needs grid_size >= 1 (or None), got {grid_size}.")
    if correlation not in CORRELATIONS:
        raise ExplainError(
            f"correlation must be one of {', '.join(CORRELATIONS)}, not {correlation!r}."
        )
    check_score(score)
    n_samples, chunk_size = int(n_samples), int(chunk_size)
    inputs = tf.convert_to_tensor(inputs)
    units = tf.convert_to_tensor(units)
    size = image_size(inputs, "mufidelity")
    grid = size if grid_size is None else (int(grid_size), int(grid_size))
    substrate = baseline_of(inputs, baseline, blur_sigma)
    maps = tf.cast(to_input_size(maps, size), tf.float32)
    reference = inspection.gather_units(scores_of(logits_of(model, inputs), score), units)

    def subset_chunk(first, count):
        removed = subset_masks(first, count, grid, size, subset_percent, seed)  # (n, H, W)
        mask = tf.cast(removed[:, None, :, :, None], inputs.dtype)
        copies = chunking.merge_copies(inputs[None] * (1 - mask) + substrate[None] * mask)
        scores = inspection.gather_units(scores_of(logits_of(model, copies), score),
                                         chunking.tile_indices(units, count))
        drops = reference[None] - chunking.split_copies(scores, count)  # (n, B, K)
        attributions = tf.einsum("nhw,bhwk->nbk", removed, maps)
        # Each chunk fills its rows of the (n_samples, B, K) results; the rest stay 0.
        rows = (first + tf.range(count))[:, None]
        shape = tf.concat([[n_samples], tf.shape(units)], 0)
        return (tf.scatter_nd(rows, tf.cast(drops, tf.float32), shape),
                tf.scatter_nd(rows, attributions, shape))

    zeros = tf.zeros(tf.concat([[n_samples], tf.shape(units)], 0), tf.float32)
    drops, attributions = chunking.chunked_reduce(n_samples, chunk_size, subset_chunk,
                                                  initial=(zeros, zeros))
    # (B, K, n_samples): one correlation per sample and unit.
    return CORRELATIONS[correlation](tf.transpose(attributions, [1, 2, 0]),
                                     tf.transpose(drops, [1, 2, 0]))


__all__ = ["causal_auc", "deletion", "insertion", "mufidelity", "pixel_counts",
           "removal_ranks", "subset_masks"]
