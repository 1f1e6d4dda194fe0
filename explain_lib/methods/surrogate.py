"""Surrogate methods on superpixels: the explained score on random coalitions of an image's
segments, fitted by a linear model whose coefficients are the segments' attributions.

- `lime`: LIME, a ridge regression weighted by an exponential kernel of the cosine distance
  to the whole image (lime's image explainer).
- `kernel_shap`: KernelSHAP, the regression whose solution is the Shapley values, with
  coalitions drawn from the Shapley kernel (Captum's sampling) and the efficiency constraint
  eliminated exactly (shap's solver).

The design, in short:

- Segmentation (`segments_of`): a regular grid (TF ops; static segment count, runs under XLA),
  scikit-image's quickshift (lime's default: `kernel_size=4, max_dist=200, ratio=0.2`, the
  kernel's 4 pixels being at 224x224 and scaled with the image, as this library's other
  sizes in pixels: `utils.at_input_size`; at 64x64 lime's 4 pixels leave a handful of
  segments) or SLIC,
  or labels given by the caller. scikit-image cannot run inside the compiled step, so its
  segmentations run there through `tf.numpy_function`: the step stays one compiled graph
  (the model's passes and the fit are compiled) but calls back into Python once per batch, on
  the host, and cannot be compiled by XLA (a model with `jit_compile=True` needs "grid" or
  given labels). Images are scaled to [0, 1] (each by its own range) before scikit-image sees
  them, so that its colour conversion works whatever the preprocessing.
- Samples: `n_samples` coalitions (binary vectors over the segments), `chunk_size` at a time;
  each chunk's model scores are folded at once into the normal equations of the weighted
  regression (a (segments + 1)² matrix per image): memory does not grow with `n_samples`,
  and the regression is solved in TF (`tf.linalg.solve`) once all chunks are in. A
  coalition's draws depend only on (`seed`, its number) and the image's own segment count,
  never on the batch.
- Hidden segments take `baseline`: "mean", each segment's mean colour (lime's default,
  `hide_color=None`), or a number (Captum's and xplique's default, 0).
"""

from typing import Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf
from skimage import segmentation as skimage_segmentation

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

SEGMENTATIONS = ("quickshift", "slic", "grid")
"""The segmentations `lime` and `kernel_shap` compute by name."""


def _scikit_segments(images: np.ndarray, algorithm: bytes, grid_size: int,
                     kernel_size: float) -> np.ndarray:
    """scikit-image's segmentation of each image (B, H, W, C), labels 0 .. n-1 per image."""
    algorithm = algorithm.decode() if isinstance(algorithm, bytes) else algorithm
    labels = np.empty(images.shape[:3], np.int32)
    for i, image in enumerate(np.asarray(images, np.float64)):
        low, span = image.min(), image.max() - image.min()
        image = (image - low) / span if span > 0 else np.zeros_like(image)
        colour = image.shape[-1] == 3
        if algorithm == "quickshift":
            found = skimage_segmentation.quickshift(
                image, kernel_size=float(kernel_size), max_dist=200, ratio=0.2,
                convert2lab=colour, rng=0)
        else:
            found = skimage_segmentation.slic(
                image, n_segments=int(grid_size) ** 2, compactness=10.0, start_label=0,
                convert2lab=colour, channel_axis=-1)
        labels[i] = np.unique(found, return_inverse=True)[1].reshape(found.shape)
    return labels


def grid_segments(height: int, width: int, grid_size: int) -> np.ndarray:
    """A regular grid_size x grid_size grid of an (H, W) image: labels (H, W), row-major."""
    rows = np.arange(height) * grid_size // height
    cols = np.arange(width) * grid_size // width
    return (rows[:, None] * grid_size + cols[None, :]).astype(np.int32)


def segments_of(inputs: tf.Tensor, segmentation, grid_size: int = 8
                ) -> Tuple[tf.Tensor, Union[int, tf.Tensor]]:
    """The segments of each image: (labels (B, H, W) int32, numbered 0 .. n_b - 1 in each
    image, and the largest segment count S: a Python int where it is known when tracing,
    a tensor for scikit-image's).

    `segmentation`: "quickshift" (lime's settings, the kernel scaled with the image), "slic"
    (`grid_size`² segments asked for), "grid"
    (`grid_size` x `grid_size` cells), or integer labels: one (H, W) array for every image,
    or (B, H, W), one per image of the batch.

    Usage:

        labels, count = segments_of(images, "grid", grid_size=4)    # count 16
    """
    height, width = inputs.shape[1], inputs.shape[2]
    batch = tf.shape(inputs)[0]
    if isinstance(segmentation, str):
        if segmentation not in SEGMENTATIONS:
            raise ExplainError(
                f"Unknown segmentation {segmentation!r}: use one of {', '.join(SEGMENTATIONS)} "
                "or integer labels (H, W) or (B, H, W).")
        if grid_size < 1:
            raise ExplainError(f"grid_size must be >= 1, got grid_size={grid_size}.")
        if segmentation == "grid":
            grid = grid_segments(height, width, min(grid_size, height, width))
            labels = tf.broadcast_to(tf.constant(grid), tf.stack([batch, height, width]))
            return labels, int(grid.max()) + 1
        kernel_size = max(1.0, utils.at_input_size(4.0, (height, width)))  # scikit: >= 1
        labels = tf.numpy_function(_scikit_segments,
                                   [inputs, segmentation, grid_size, kernel_size], tf.int32,
                                   stateful=False)
        labels = tf.ensure_shape(labels, [None, height, width])
        return labels, tf.reduce_max(labels) + 1
    given = np.asarray(segmentation)
    if given.dtype.kind not in "iu" or given.ndim not in (2, 3) or given.shape[-2:] != (
            height, width):
        raise ExplainError(
            f"Segmentation labels must be integers of shape (H, W) or (B, H, W) with "
            f"(H, W) = {(height, width)}, got {given.dtype} of shape {given.shape}.")
    given = given.reshape(-1, height, width)
    relabelled = np.stack([np.unique(g, return_inverse=True)[1].reshape(g.shape)
                           for g in given]).astype(np.int32)
    labels = tf.constant(relabelled)
    if len(relabelled) == 1:
        labels = tf.broadcast_to(labels, tf.stack([batch, height, width]))
    else:
        tf.debugging.assert_equal(
            batch, len(relabelled),
            message="Segmentation labels (B, H, W) must give one image's labels per input")
    return labels, int(relabelled.max()) + 1


def _fill_of(inputs: tf.Tensor, labels: tf.Tensor, count, baseline) -> tf.Tensor:
    """What hidden pixels take: each segment's mean colour ("mean") or a number."""
    if isinstance(baseline, str):
        if baseline != "mean":
            raise ExplainError(f"Unknown baseline {baseline!r}: use 'mean' or a number.")
        ids = labels + tf.range(tf.shape(inputs)[0])[:, None, None] * count
        channels = inputs.shape[-1]
        means = tf.math.unsorted_segment_mean(
            tf.reshape(inputs, [-1, channels]), tf.reshape(ids, [-1]),
            tf.shape(inputs)[0] * count)
        return tf.gather(means, ids)
    return tf.broadcast_to(tf.cast(baseline, inputs.dtype), tf.shape(inputs))


def _pixels(values: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """values (n, B, S) per segment -> (n, B, H, W) per pixel."""
    shape = tf.shape(labels)
    flat = tf.reshape(labels, tf.stack([shape[0], -1]))
    picked = tf.gather(tf.transpose(values, [1, 0, 2]), flat, axis=2, batch_dims=1)
    return tf.reshape(tf.transpose(picked, [1, 0, 2]),
                      tf.concat([tf.shape(values)[:1], shape], 0))


def _draws(seed, number, count):
    return tf.random.stateless_uniform(tf.reshape(count, [1]), tf.stack([seed, number]),
                                       alg=RANDOM_ALGORITHM)


def lime_coalitions(seed: int, start, count: int, segments) -> tf.Tensor:
    """LIME's coalitions `[start, start + count)`: (count, S) in {0, 1}, each segment kept
    with probability 1/2 (lime's `randint(0, 2)`); coalition 0 keeps every segment, as lime's
    first sample is the image itself."""
    numbers = start + tf.range(count)
    bits = tf.map_fn(lambda n: tf.cast(_draws(seed, n, segments) < 0.5, tf.float32), numbers,
                     fn_output_signature=tf.TensorSpec([None], tf.float32))
    return tf.where((numbers == 0)[:, None], tf.ones_like(bits), bits)


def kernel_shap_coalitions(seed: int, start, count: int, active: tf.Tensor) -> tf.Tensor:
    """KernelSHAP's coalitions `[start, start + count)` for images with `active` (B, S)
    segments: (count, B, S) in {0, 1}. As Captum's `KernelShap`, a coalition's size k is drawn
    from the Shapley kernel's distribution over sizes, P(k) ∝ (M - 1) / (k (M - k)) for
    k = 1 .. M - 1, then its k segments uniformly (the k smallest of M uniform draws); every
    sampled coalition then weighs 1. The empty and full coalitions are not drawn: they are
    the constraints `kernel_shap` eliminates."""
    numbers = start + tf.range(count)
    segments = tf.shape(active)[1]
    draws = tf.map_fn(lambda n: _draws(seed, n, segments + 1), numbers,
                      fn_output_signature=tf.TensorSpec([None], tf.float32))  # (n, S + 1)
    size_draw, ranking = draws[:, 0], draws[:, 1:]
    m = tf.reduce_sum(active, axis=1, keepdims=True)  # (B, 1)
    k = tf.cast(tf.range(1, segments + 1), tf.float32)[None]  # (1, S): sizes 1 .. S
    weights = tf.where(k < m, tf.math.divide_no_nan(1.0, k * (m - k)), 0.0)
    cdf = tf.math.divide_no_nan(tf.cumsum(weights, axis=1),
                                tf.reduce_sum(weights, axis=1, keepdims=True))  # (B, S)
    size = 1 + tf.reduce_sum(tf.cast(
        (cdf[None] < size_draw[:, None, None]) & (k[None] < m[None]), tf.float32), -1)
    keys = tf.where(active[None] > 0, ranking[:, None], 2.0)  # inactive segments last
    ranks = tf.argsort(tf.argsort(keys, axis=-1), axis=-1)
    return tf.cast(tf.cast(ranks, tf.float32) < size[..., None], tf.float32) * active[None]


def _prepare(model, inputs, indices, spatial_axis, segmentation, grid_size, baseline, score,
             n_samples, chunk_size, name):
    inputs = tf.convert_to_tensor(inputs)
    image_size(inputs, spatial_axis, name)
    check_score(score)
    if n_samples < 1 or chunk_size < 1:
        raise ExplainError(
            f"{name} needs n_samples >= 1 and chunk_size >= 1, got n_samples={n_samples} and "
            f"chunk_size={chunk_size}.")
    labels, count = segments_of(inputs, segmentation, grid_size)
    fill = _fill_of(inputs, labels, count, baseline)
    all_logits = logits_of(model, inputs)
    indices = inspection.select_units(all_logits, indices)
    logits = inspection.gather_units(all_logits, indices)
    reference = tf.cast(inspection.gather_units(scores_of(all_logits, score), indices),
                        tf.float32)
    active = tf.cast(tf.range(count)[None] <= tf.reduce_max(labels, [1, 2])[:, None],
                     tf.float32)  # (B, S): the segments each image has

    def scores_at(kept):
        """The explained scores (n, B, K) with the segments `kept` (n, B, S) shown."""
        copies = tf.shape(kept)[0]
        mask = _pixels(kept, labels)[..., None]
        perturbed = inputs[None] * mask + fill[None] * (1 - mask)
        scores = inspection.gather_units(
            scores_of(logits_of(model, chunking.merge_copies(perturbed)), score),
            chunking.tile_indices(indices, copies))
        return tf.cast(chunking.split_copies(scores, copies), tf.float32)

    return inputs, labels, count, active, logits, reference, scores_at


def _solve(gram, moments):
    """Solve gram (B, P, P) β = moments (B, K, P) for every unit: β (B, K, P)."""
    units = tf.shape(moments)[1]
    size = tf.shape(gram)[-1]
    gram = tf.broadcast_to(gram[:, None], tf.stack([tf.shape(gram)[0], units, size, size]))
    return tf.linalg.solve(gram, moments[..., None])[..., 0]


def _maps(inputs, labels, attributions):
    """Per-segment attributions (B, K, S) painted on the pixels: (B, H, W, K)."""
    maps = _pixels(tf.transpose(attributions, [1, 0, 2]), labels)  # (K, B, H, W)
    return tf.cast(tf.transpose(maps, [1, 2, 3, 0]), inputs.dtype)


Segmentation = Union[str, np.ndarray, tf.Tensor, list]


def lime(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    segmentation: Segmentation = "quickshift",
    grid_size: int = 8,
    n_samples: int = 1000,
    kernel_width: float = 0.25,
    ridge: float = 1.0,
    baseline: Union[float, str] = "mean",
    seed: int = 0,
    score: str = "probability",
    chunk_size: int = 32,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """LIME on superpixels: the coefficients of a weighted ridge regression of the explained
    unit's score on which segments are shown, painted on the segments.

    As lime's `LimeImageExplainer` (whose defaults these are): `n_samples` coalitions z (each
    segment shown with probability 1/2, the first the whole image), hidden segments set to
    their mean colour; each coalition weighs π(z) = sqrt(exp(−d² / kernel_width²)), d the
    cosine distance between z and the all-ones coalition (1 for the empty one); the
    surrogate is sklearn's `Ridge(alpha=ridge)` with an unpenalised intercept, fitted by
    weighted least squares on every segment (lime's default `num_features=100000` keeps
    them all). The fit is solved here from its normal equations, accumulated chunk by chunk
    (see the module docstring). p_u is the unit's softmax probability, as lime's
    `classifier_fn` returns (`score="logit"`: the raw logit).

    Usage:

        logits, maps = lime(model, images, units)                        # quickshift
        logits, maps = lime(model, images, units, segmentation="grid", grid_size=8)
        logits, maps = lime(model, images, units, segmentation=labels)   # (H, W) or (B, H, W)
        logits, maps = explain_lib.lime(model, images, units)            # positive part

    Reference:
        Ribeiro, M. T., Singh, S., Guestrin, C. (2016). "Why Should I Trust You?": Explaining
        the Predictions of Any Classifier. KDD. arXiv:1602.04938. Code: github.com/marcotcr/lime.

    Args:
        model: the model; its (first) output is the logits (B, U).
        inputs: (B, H, W, C) images of static size.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: must be the image axes (-3, -2).
        segmentation: "quickshift" (lime's), "slic", "grid", or integer labels: (H, W) for
            every image, or (B, H, W) for a batch of B (call the method directly, or `explain`
            with `batch_size` B on one replica). Through the job: a name, or one (H, W) nested
            list.
        grid_size: "grid"'s cells per side; "slic" asks for grid_size² segments.
        n_samples: coalitions sampled per image (lime's `num_samples`).
        kernel_width: the kernel's width on the cosine distance.
        ridge: the ridge penalty (sklearn's `alpha`).
        baseline: "mean" (each hidden segment's mean colour) or a number.
        seed: seed of the coalitions (stateless, reproducible).
        score: "probability" (softmax over the units; sigmoid for a one-unit model) or
            "logit".
        chunk_size: coalitions per forward pass.

    Returns:
        logits (B, K) and signed maps (B, H, W, K).
    """
    inputs, labels, count, active, logits, _, scores_at = _prepare(
        model, inputs, indices, spatial_axis, segmentation, grid_size, baseline, score,
        n_samples, chunk_size, "lime")
    segments = tf.reduce_sum(active, axis=1)  # (B,)
    units = logits.shape[-1]
    batch = tf.shape(inputs)[0]

    def sample_chunk(start, count_):
        kept = lime_coalitions(seed, start, count_, count)[:, None] * active[None]  # (n, B, S)
        shown = tf.reduce_sum(kept, -1)
        similarity = tf.math.divide_no_nan(shown, tf.sqrt(shown * segments[None]))
        weights = tf.sqrt(tf.exp(-tf.square(1 - similarity) / kernel_width ** 2))  # (n, B)
        design = tf.cast(tf.concat([tf.ones_like(kept[..., :1]), kept], -1), tf.float64)
        weighted = design * tf.cast(weights, tf.float64)[..., None]  # (n, B, 1 + S)
        gram = tf.einsum("nbp,nbq->bpq", weighted, design)
        moments = tf.einsum("nbp,nbk->bkp", weighted, tf.cast(scores_at(kept), tf.float64))
        return gram, moments

    size = count + 1
    initial = (tf.zeros(tf.stack([batch, size, size]), tf.float64),
               tf.zeros(tf.stack([batch, units, size]), tf.float64))
    gram, moments = chunking.chunked_reduce(n_samples, chunk_size, sample_chunk,
                                            initial=initial)
    # The penalty spares the intercept; a segment an image lacks has a zero row and column,
    # and a unit diagonal that sets its coefficient to 0.
    active = tf.cast(active, tf.float64)
    penalty = tf.concat([tf.zeros([batch, 1], tf.float64), ridge * active + (1 - active)], -1)
    coefficients = _solve(gram + tf.linalg.diag(penalty), moments)
    return logits, _maps(inputs, labels, coefficients[..., 1:])


def kernel_shap(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    segmentation: Segmentation = "quickshift",
    grid_size: int = 8,
    n_samples: int = 1000,
    baseline: Union[float, str] = "mean",
    seed: int = 0,
    score: str = "probability",
    chunk_size: int = 32,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """KernelSHAP on superpixels: the segments' Shapley values for the explained unit's score,
    estimated by the Shapley-kernel-weighted linear regression on sampled coalitions, painted
    on the segments.

    The M segments of an image are the players; a coalition shows its segments and hides the
    others (set to `baseline`). Coalitions are drawn as Captum's `KernelShap` draws them
    (`kernel_shap_coalitions`: sizes from the Shapley kernel, so each weighs 1), and the
    regression is solved as shap's `KernelExplainer` solves it: with φ_0 = f(∅) and the
    efficiency constraint Σφ = f(x) − f(∅) eliminated exactly (one segment's value is what
    the others leave), by least squares on the normal equations accumulated chunk by chunk;
    a ridge of 1e-6 of the equations' mean diagonal keeps them solvable with few samples. On
    a model additive over the segments the values are exact (each segment's own
    contribution) once the coalitions span the segments. Same segmentations and baselines as
    `lime` (quickshift and the mean colour by default, lime's).

    Usage:

        logits, maps = kernel_shap(model, images, units, segmentation="slic")
        logits, maps = explain_lib.kernel_shap(model, images, units)     # positive part

    Reference:
        Lundberg, S. M., Lee, S.-I. (2017). A Unified Approach to Interpreting Model
        Predictions. NeurIPS. arXiv:1705.07874. Code: github.com/shap/shap (KernelExplainer),
        Captum's `KernelShap`.

    Args:
        model: the model; its (first) output is the logits (B, U).
        inputs: (B, H, W, C) images of static size.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: must be the image axes (-3, -2).
        segmentation: as `lime`'s.
        grid_size: "grid"'s cells per side; "slic" asks for grid_size² segments.
        n_samples: coalitions sampled per image (besides the empty and the full one).
        baseline: "mean" (each hidden segment's mean colour) or a number.
        seed: seed of the coalitions (stateless, reproducible).
        score: "probability" (softmax over the units; sigmoid for a one-unit model) or
            "logit".
        chunk_size: coalitions per forward pass.

    Returns:
        logits (B, K) and signed maps (B, H, W, K), summing over each image's segments (one
        value per segment, painted on its pixels) to f(x) − f(∅).
    """
    inputs, labels, count, active, logits, full, scores_at = _prepare(
        model, inputs, indices, spatial_axis, segmentation, grid_size, baseline, score,
        n_samples, chunk_size, "kernel_shap")
    units = logits.shape[-1]
    batch = tf.shape(inputs)[0]
    empty = scores_at(tf.zeros_like(active)[None])[0]  # (B, K)
    gain = full - empty
    # The last segment of each image is the one the constraint determines.
    last = tf.one_hot(tf.cast(tf.reduce_sum(active, 1), tf.int32) - 1, count)  # (B, S)
    free = active - last

    def sample_chunk(start, count_):
        kept = kernel_shap_coalitions(seed, start, count_, active)  # (n, B, S)
        shown_last = tf.reduce_sum(kept * last[None], -1)  # (n, B)
        design = tf.cast((kept - shown_last[..., None]) * free[None], tf.float64)
        target = tf.cast(scores_at(kept) - empty[None] - shown_last[..., None] * gain[None],
                         tf.float64)
        gram = tf.einsum("nbp,nbq->bpq", design, design)
        moments = tf.einsum("nbp,nbk->bkp", design, target)
        return gram, moments

    initial = (tf.zeros(tf.stack([batch, count, count]), tf.float64),
               tf.zeros(tf.stack([batch, units, count]), tf.float64))
    gram, moments = chunking.chunked_reduce(n_samples, chunk_size, sample_chunk,
                                            initial=initial)
    free, last, gain = (tf.cast(t, tf.float64) for t in (free, last, gain))
    scale = tf.math.divide_no_nan(tf.linalg.trace(gram), tf.reduce_sum(free, 1))  # (B,)
    values = _solve(gram + tf.linalg.diag(1e-6 * scale[:, None] * free + (1 - free)), moments)
    values = values * free[:, None]
    values += last[:, None] * (gain - tf.reduce_sum(values, -1))[..., None]
    return logits, _maps(inputs, labels, values)


METHODS = [lime, kernel_shap]
"""The methods of this module, for introspection and the registry."""

__all__ = ["grid_segments", "kernel_shap", "kernel_shap_coalitions", "lime",
           "lime_coalitions", "segments_of"]
