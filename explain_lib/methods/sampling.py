"""Sampling methods: maps that are expectations over a distribution of perturbations, estimated
by (quasi-)Monte-Carlo sampling.

- `gradient_shap`: GradientSHAP / expected gradients, the gradient at a random point between
  a random baseline and the (noisy) input, times their difference, averaged.
- `sobol`: Sobol attribution, the total-order Sobol index of each cell of a coarse grid of
  masks drawn from a Sobol sequence.

Both evaluate the model on many copies of each input, `chunk_size` copies per pass, reduced as
they come (`chunking.chunked_reduce`): memory does not grow with the number of samples. A
copy's draws (baseline, path point, noise, mask) depend only on the seed and the copy's
number, never on the batch: a sample's map is the same in any batch or replica.
"""

from typing import Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from explain_lib import inspection
from explain_lib.methods import chunking
from explain_lib.methods.common import (
    image_size,
    RANDOM_ALGORITHM,
    check_score,
    logits_of,
    scores_of,
    unit_maps,
)
from explain_lib.utils import SPATIAL_AXIS, ExplainError


def _baseline_table(inputs: tf.Tensor, baselines) -> Optional[tf.Tensor]:
    """The baselines as a (n, *input shape) table, or None for "uniform"."""
    if isinstance(baselines, str):
        if baselines != "uniform":
            raise ExplainError(
                f"Unknown baselines {baselines!r}: pass a number, 'uniform', an array of one "
                "baseline (H, W, C) or a batch of baselines (n, H, W, C)."
            )
        return None
    table = tf.cast(tf.convert_to_tensor(baselines), inputs.dtype)
    sample_rank = inputs.shape.rank - 1
    if table.shape.rank is None or table.shape.rank > sample_rank + 1:
        raise ExplainError(
            f"baselines of shape {tuple(table.shape)} do not fit inputs of shape "
            f"{tuple(inputs.shape)}: pass one baseline (H, W, C) or a batch (n, H, W, C)."
        )
    if table.shape.rank <= sample_rank:
        table = table[None]
    return tf.broadcast_to(table, tf.concat([tf.shape(table)[:1], tf.shape(inputs)[1:]], 0))


def gradient_shap(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    baselines: Union[float, str, np.ndarray, tf.Tensor] = 0.0,
    n_samples: int = 32,
    stdevs: float = 0.0,
    seed: int = 0,
    chunk_size: int = 8,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """GradientSHAP (expected gradients): E_{x'~D, α~U(0,1), ε~N(0,σ²)} of
    (x + ε − x') ⊙ ∂f_u/∂x at x' + α(x + ε − x'), summed over channels.

    Integrated Gradients' path integral taken in expectation over a distribution D of
    baselines, with the path point drawn at random: each of `n_samples` samples draws a
    baseline x' from D, a point α on the straight path and, as Captum's `GradientShap` does
    (whose definition this follows), Gaussian noise ε of standard deviation `stdevs` added to
    the input (0 by default: no noise). The attributions satisfy completeness in expectation:
    they sum to f_u(x) − E[f_u(x')] (exactly per sample on a linear model, when `stdevs` is 0).

    D is `baselines`: a number (one constant baseline), one array (H, W, C), a batch of
    baselines (n, H, W, C) drawn uniformly with replacement (Captum's and shap's background
    data), or "uniform": each baseline drawn uniformly in the value range [min x, max x] of
    the explained input (Sturmfels et al.'s uniform baseline). A sample's draws are seeded by
    (`seed`, its number) and shared by the samples of a batch (Captum draws them per input: the
    same distribution), so a map does not depend on its batch. `chunk_size` samples per pass.

    Usage:

        logits, maps = gradient_shap(model, images, units, baselines=background, n_samples=64)
        logits, maps = gradient_shap(model, images, units, baselines="uniform", stdevs=0.1)
        logits, maps = explain_lib.gradient_shap(model, images, units)   # |.| normalised

    Reference:
        Lundberg, S. M., Lee, S.-I. (2017). A Unified Approach to Interpreting Model
        Predictions. NeurIPS. arXiv:1705.07874. Erion, G., Janizek, J. D., Sturmfels, P.,
        Lundberg, S. M., Lee, S.-I. (2021). Improving performance of deep learning models with
        axiomatic attribution priors and expected gradients. Nature Machine Intelligence.
        arXiv:1906.10670.

    Args:
        model: the model; its (first) output is the logits (B, U).
        inputs: (B, H, W, C) input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of `inputs`.
        baselines: the baseline distribution D (see above). Through the job: a number,
            "uniform" or a nested JSON list of one baseline or of a batch.
        n_samples: samples of (x', α, ε) per input.
        stdevs: standard deviation of the Gaussian noise added to the input (Captum's
            `stdevs`), in the input's units.
        seed: seed of the draws (stateless, reproducible).
        chunk_size: samples per forward and backward pass.

    Returns:
        logits (B, K) at `inputs` and signed maps (B, H, W, K).
    """
    if n_samples < 1 or chunk_size < 1 or stdevs < 0:
        raise ExplainError(
            f"gradient_shap needs n_samples >= 1, chunk_size >= 1 and stdevs >= 0, got "
            f"n_samples={n_samples}, chunk_size={chunk_size} and stdevs={stdevs}."
        )
    inputs = tf.convert_to_tensor(inputs)
    table = _baseline_table(inputs, baselines)
    logits = logits_of(model, inputs)
    indices = inspection.select_units(logits, indices)
    logits = inspection.gather_units(logits, indices)
    units = logits.shape[-1]
    rank = inputs.shape.rank
    sample_shape = tf.shape(inputs)[1:]
    spec = tf.TensorSpec(inputs.shape[1:], inputs.dtype)
    axes = list(range(1, rank))
    low = tf.reduce_min(inputs, axes, keepdims=True)
    high = tf.reduce_max(inputs, axes, keepdims=True)

    def draw(copy):
        """(baseline or uniform draw, α, noise) of sample `copy`."""
        pick, point, noise = tf.unstack(tf.random.experimental.stateless_split(
            tf.stack([seed, copy]), 3, alg=RANDOM_ALGORITHM))
        alpha = tf.random.stateless_uniform((), point, dtype=inputs.dtype, alg=RANDOM_ALGORITHM)
        if table is None:
            base = tf.random.stateless_uniform(sample_shape, pick, dtype=inputs.dtype,
                                               alg=RANDOM_ALGORITHM)
        else:
            number = tf.random.stateless_uniform((), pick, 0, tf.shape(table)[0], tf.int32,
                                                 alg=RANDOM_ALGORITHM)
            base = table[number]
        epsilon = stdevs * tf.random.stateless_normal(sample_shape, noise, dtype=inputs.dtype,
                                                      alg=RANDOM_ALGORITHM)
        return base, alpha, epsilon

    def sample_chunk(start, count):
        base, alpha, epsilon = tf.map_fn(
            draw, start + tf.range(count),
            fn_output_signature=(spec, tf.TensorSpec((), inputs.dtype), spec))
        if table is None:  # uniform in each input's own value range
            base = low[None] + base[:, None] * (high - low)[None]
        else:
            base = tf.broadcast_to(base[:, None], tf.concat([[count], tf.shape(inputs)], 0))
        displacement = inputs[None] + epsilon[:, None] - base  # (n, B, H, W, C)
        alpha = tf.reshape(alpha, [-1] + [1] * rank)
        points = chunking.merge_copies(base + alpha * displacement)
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            tape.watch(points)
            scores = inspection.gather_units(
                logits_of(model, points), chunking.tile_indices(indices, count))

        def attribution(grad):
            grad = chunking.split_copies(grad, count) * displacement
            return tf.reduce_sum(grad, axis=[0, rank])

        return unit_maps(tape, scores, points, attribution)

    zeros = tf.zeros(tf.concat([tf.shape(inputs)[:-1], [units]], axis=0), inputs.dtype)
    total = chunking.chunked_reduce(n_samples, chunk_size, sample_chunk, initial=zeros)
    return logits, total / n_samples


# --- Sobol attribution --------------------------------------------------------------------------

PERTURBATIONS = ("inpainting", "amplitude")
"""`sobol`'s perturbation functions by name (the references' `inpainting` and `amplitude`)."""


def sobol_design(dimension: int, n_designs: int, seed: Optional[int] = None) -> np.ndarray:
    """The references' replicated design: (n_designs · (dimension + 2), dimension) points in
    [0, 1): the matrices A and B (the first and last `dimension` coordinates of a Sobol
    sequence of 2·dimension dimensions, `tf.math.sobol_sample`), then C_1 ... C_d, C_i being A
    with column i taken from B. With a `seed`, the sequence is scrambled by a random digital
    shift (each coordinate's binary digits XOR-ed with a seeded random word: the points keep
    their net structure); None keeps the references' unscrambled sequence.

    Usage:

        design = sobol_design(64, 32)      # (2112, 64): A (32 rows), B (32), C_1 ... C_64
    """
    with tf.init_scope():  # computed once, eagerly, when a step is traced: a constant of it
        ab = tf.math.sobol_sample(2 * dimension, n_designs, dtype=tf.float64).numpy()
        if seed is not None:
            bits = 2 ** 30
            words = np.floor(ab * bits).astype(np.int64)
            shift = tf.random.stateless_uniform(
                (2 * dimension,), tf.constant([int(seed), 0], tf.int64), 0, bits, tf.int64,
                alg=RANDOM_ALGORITHM).numpy()
            ab = (words ^ shift[None]) / bits
    a, b = ab[:, :dimension], ab[:, dimension:]
    c = np.repeat(a[None], dimension, axis=0)  # (d, N, d)
    c[np.arange(dimension), :, np.arange(dimension)] = b.T
    return np.concatenate([a, b, c.reshape(-1, dimension)]).astype(np.float32)


def jansen_total_order(outputs: tf.Tensor, n_designs: int, dimension: int) -> tf.Tensor:
    """Jansen's estimator of the total-order Sobol indices from the outputs (..., N(d + 2)) on
    `sobol_design`'s points (A, B, C_1 ... C_d in order):
    ST_i = Σ_j (f(A_j) − f(C_ij))² / (2 N Var f(A)), Var unbiased (as both references).

    Returns (..., d)."""
    a = outputs[..., :n_designs]
    c = tf.reshape(outputs[..., 2 * n_designs:],
                   tf.concat([tf.shape(outputs)[:-1], [dimension, n_designs]], 0))
    mean = tf.reduce_mean(a, -1, keepdims=True)
    variance = tf.reduce_sum(tf.square(a - mean), -1) / (n_designs - 1)
    variance = tf.maximum(variance, 1e-12)[..., None]
    return tf.reduce_sum(tf.square(a[..., None, :] - c), -1) / (2 * n_designs * variance)


def sobol(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    grid_size: int = 8,
    n_designs: int = 32,
    perturbation: str = "inpainting",
    seed: Optional[int] = None,
    score: str = "probability",
    chunk_size: int = 32,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Sobol attribution: the total-order Sobol index of each cell of a `grid_size`² grid of
    real-valued masks, for the explained unit's score of the masked input.

    The masks M ∈ [0, 1]^(grid_size²) are quasi-Monte-Carlo points (`sobol_design`:
    `n_designs` · (grid_size² + 2) of them, the references' replicated design A, B, C_i),
    upsampled to the image by nearest neighbour (as xplique; the authors' code upsamples
    bilinearly) and applied by the `perturbation`: "inpainting" x ⊙ M (the references'
    default), or "amplitude" x ⊙ (M − 0.5) (what the references' code computes, σ = 1). The
    total-order index ST_i (`jansen_total_order`, Jansen's estimator, the references') is how
    much of the score's variance involves cell i, interactions included; the (grid, grid)
    indices are resized bicubically to the image, as both references do.

    The design is the same for every sample and a mask's outputs reduce as they come
    (`chunk_size` masks per pass): memory holds one chunk of masked images and the N(d + 2)
    scores per input and unit. `seed` None uses the references' unscrambled Sobol sequence; an
    integer scrambles it (a random digital shift), for maps of another draw. p_u is the
    unit's softmax probability by default (`score="logit"`: the raw logit, what xplique weighs
    for a model that outputs logits).

    Usage:

        logits, maps = sobol(model, images, units)                       # 2112 passes
        logits, maps = sobol(model, images, units, grid_size=11, n_designs=16)
        logits, maps = explain_lib.sobol(model, images, units)           # normalised

    Reference:
        Fel, T., Cadène, R., Chalvidal, M., Cord, M., Vigouroux, D., Serre, T. (2021). Look at
        the Variance! Efficient Black-box Explanations with Sobol-based Sensitivity Analysis.
        NeurIPS. arXiv:2111.04138. Code: github.com/fel-thomas/Sobol-Attribution-Method and
        xplique's `SobolAttributionMethod` (grid 8, 32 designs, its defaults).

    Args:
        model: the model; its (first) output is the logits (B, U).
        inputs: (B, H, W, C) images of static size.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: must be the image axes (-3, -2).
        grid_size: cells per side of the mask grid.
        n_designs: N, points of the matrices A and B; a power of two (the Sobol sequence's
            balance needs it, as both references require).
        perturbation: "inpainting" or "amplitude".
        seed: None (the unscrambled sequence) or the seed of a digital shift.
        score: "probability" (softmax over the units; sigmoid for a one-unit model) or
            "logit".
        chunk_size: masks per forward pass.

    Returns:
        logits (B, K) and maps (B, H, W, K).
    """
    inputs = tf.convert_to_tensor(inputs)
    height, width = image_size(inputs, spatial_axis, "sobol")
    check_score(score)
    if grid_size < 1 or n_designs < 2 or n_designs & (n_designs - 1) or chunk_size < 1:
        raise ExplainError(
            f"sobol needs grid_size >= 1, n_designs a power of two >= 2 and chunk_size >= 1, "
            f"got grid_size={grid_size}, n_designs={n_designs}, chunk_size={chunk_size}."
        )
    if perturbation not in PERTURBATIONS:
        raise ExplainError(
            f"Unknown perturbation {perturbation!r}: use one of {', '.join(PERTURBATIONS)}.")
    dimension = grid_size * grid_size
    design = sobol_design(dimension, n_designs, seed)
    total = len(design)
    table = tf.constant(design.reshape(total, grid_size, grid_size, 1), inputs.dtype)

    all_logits = logits_of(model, inputs)
    indices = inspection.select_units(all_logits, indices)
    logits = inspection.gather_units(all_logits, indices)

    def mask_chunk(start, count):
        masks = tf.image.resize(table[start:start + count], (height, width), method="nearest")
        masks = masks[:, None]  # (n, 1, H, W, 1)
        if perturbation == "inpainting":
            perturbed = inputs[None] * masks
        else:
            perturbed = inputs[None] * (masks - 0.5)
        scores = inspection.gather_units(
            scores_of(logits_of(model, chunking.merge_copies(perturbed)), score),
            chunking.tile_indices(indices, count))
        scores = tf.transpose(chunking.split_copies(scores, count), [1, 2, 0])  # (B, K, n)
        # Placed at its masks' positions of the (B, K, total) outputs (a one-hot product, as
        # XLA needs static paddings); the chunks add up.
        place = tf.one_hot(start + tf.range(count), total, dtype=tf.float32)
        return tf.einsum("bkn,nt->bkt", tf.cast(scores, tf.float32), place)

    outputs = chunking.chunked_reduce(
        total, chunk_size, mask_chunk,
        initial=tf.zeros(tf.stack([tf.shape(inputs)[0], logits.shape[-1], total]), tf.float32))
    indices_st = jansen_total_order(outputs, n_designs, dimension)  # (B, K, d)
    grids = tf.transpose(tf.reshape(indices_st, tf.concat(
        [tf.shape(indices_st)[:2], [grid_size, grid_size]], 0)), [0, 2, 3, 1])
    rows, cols = _bicubic_matrix(grid_size, height), _bicubic_matrix(grid_size, width)
    maps = tf.einsum("hg,bgak,wa->bhwk", rows, grids, cols)
    return logits, tf.cast(maps, inputs.dtype)


def _bicubic_matrix(cells: int, pixels: int) -> tf.Tensor:
    """`tf.image.resize(method="bicubic")` from `cells` to `pixels` along one axis, as a
    (pixels, cells) matrix: the resize is linear and separable, and XLA has no bicubic
    resize kernel but multiplies matrices."""
    with tf.init_scope():
        eye = tf.eye(cells)[:, None, :]  # `cells` one-hot images of (cells, 1)
        matrix = tf.image.resize(eye, (pixels, 1), method="bicubic")[:, 0, :].numpy()
    return tf.constant(matrix)


METHODS = [gradient_shap, sobol]
"""The methods of this module, for introspection and the registry."""

__all__ = ["gradient_shap", "jansen_total_order", "sobol", "sobol_design"]
