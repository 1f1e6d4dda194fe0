"""Meta methods: functions that take an explaining method and return another one.

    smoothgrad = smooth(gradients, repetitions=32, noise=0.15)
    robust_cam = smooth(tta(gradcam))            # they compose
    logits, maps = explain(robust_cam, exposed, images, units)
    logits, maps = explain(smoothgrad, model, images, units, repetitions=64)

- `smooth`, `vargrad`, `squaregrad` run the method on noisy copies of each input and return
  the mean, the variance or the mean of squares of its maps. The copies are made
  `noise_chunk_size` at a time (one call of the method sees `noise_chunk_size × B` inputs)
  and reduced as they come, so memory does not grow with `repetitions`.
- `tta` runs the method on rescaled and mirrored inputs, one augmentation at a time, maps
  each map back to the frame of the un-augmented one and averages.

The returned method is a method like any other, `(model, inputs, indices, *, spatial_axis,
**params)`, whose parameters are its own (the values given to the meta method are their
defaults) followed by the wrapped method's, which it passes on. Its signature says so
(`inspect.signature`), which is how `explain` and the registry know them. The meta methods'
own names (`repetitions`, `noise`, `noise_chunk_size`, `noise_seed`; `scales`, `hflip`,
`resize_method`) are chosen not to meet a method's own (`chunk_size`, `seed`), so that
`smooth(rise)` can set both; wrapping a method that has one of them is an error.

Given a selector as `indices` (`inspection.TopUnits`, or `inspection.GivenUnits` when the
engine asks for probabilities), a meta method chooses the units, and scores them, with one
forward pass at the input (not at a noisy or augmented copy) and explains those: for given
units that pass is one more than the copies' (1 in `3 × repetitions` for SmoothGrad).

Noise is reproducible and shared by the samples of a batch (copy r of every input gets the
same draw, scaled to that input's range), so a sample's maps do not depend on the batch, or
the replica, it is explained in.
"""

import inspect
from typing import Any, Callable, Dict, Sequence

import tensorflow as tf

from explain_lib import inspection, utils
from explain_lib.methods import chunking
from explain_lib.methods.common import RANDOM_ALGORITHM, logits_of, parameters_of
from explain_lib.utils import SPATIAL_AXIS, ExplainError


def _name(method: Callable) -> str:
    return getattr(method, "__name__", type(method).__name__)


def _noisy_copies(inputs, start, count, noise, seed):
    """Copies [start, start + count) of every input plus Gaussian noise of standard deviation
    `noise × (max - min)` of that input, copy-major; copy r's draw is seeded by (seed, r)."""
    axes = list(range(1, inputs.shape.rank))
    spread = tf.reduce_max(inputs, axes, keepdims=True) - tf.reduce_min(inputs, axes, keepdims=True)
    shape = tf.shape(inputs)[1:]
    draws = tf.map_fn(
        lambda copy: tf.random.stateless_normal(
            shape, tf.stack([seed, copy]), dtype=inputs.dtype, alg=RANDOM_ALGORITHM
        ),
        start + tf.range(count),
        fn_output_signature=tf.TensorSpec(inputs.shape[1:], inputs.dtype),
    )
    return chunking.merge_copies(inputs + draws[:, None] * (noise * spread))


def _merge_moments(a, b):
    """Chan et al.'s pairwise merge of (count, logits sum, mean, sum of squared deviations)."""
    count_a, logits_a, mean_a, m2_a = a
    count_b, logits_b, mean_b, m2_b = b
    count = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / count)
    m2 = m2_a + m2_b + tf.square(delta) * (count_a * count_b / count)
    return count, logits_a + logits_b, mean, m2


def _units_at_input(model, inputs, indices):
    """`indices`, or the units a selector (`inspection.UnitSelector`) chooses from the
    model's scores at the input itself (not at a noisy or augmented copy), where it also
    records their probabilities."""
    if isinstance(indices, inspection.UnitSelector):
        return indices.select(logits_of(model, inputs))
    return indices


def _check_noise(name, repetitions, noise, noise_chunk_size):
    if repetitions < 1 or noise_chunk_size < 1 or noise < 0:
        raise ExplainError(
            f"{name} needs repetitions >= 1, noise_chunk_size >= 1 and noise >= 0, got "
            f"repetitions={repetitions}, noise_chunk_size={noise_chunk_size}, noise={noise}."
        )


def _with_own_parameters(method: Callable, own: Dict[str, Any], apply: Callable,
                         name: str) -> Callable:
    """`apply`, named and documented after `method`, with the signature of a method whose
    parameters are `own` (name: default) followed by `method`'s."""
    base, open_ended = parameters_of(method)
    clash = sorted(set(base) & set(own))
    if clash:
        raise ExplainError(
            f"{name} cannot wrap {_name(method)}: its parameter(s) {', '.join(clash)} have the "
            f"names of {name}'s own, which would take them. Rename them in {_name(method)}."
        )
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("inputs", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("indices", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        inspect.Parameter("spatial_axis", keyword, default=SPATIAL_AXIS),
        *(inspect.Parameter(n, keyword, default=d) for n, d in own.items()),
        *(inspect.Parameter(n, keyword, default=d) for n, d in base.items()),
    ]
    if open_ended:
        parameters.append(inspect.Parameter("params", inspect.Parameter.VAR_KEYWORD))
    apply.__signature__ = inspect.Signature(parameters)
    apply.__name__ = f"{_name(method)}_{name}"
    apply.__doc__ = (
        f"`{name}` of `{_name(method)}`: parameters {', '.join(own)} (see "
        f"`explain_lib.methods.meta.{name}`), then {_name(method)}'s.\n\n{method.__doc__ or ''}"
    )
    return apply


def _noise_defaults(repetitions, noise, noise_chunk_size, noise_seed) -> Dict[str, Any]:
    return {"repetitions": int(repetitions), "noise": float(noise),
            "noise_chunk_size": int(noise_chunk_size), "noise_seed": int(noise_seed)}


def _mean(mean, variance):
    return mean


def _variance(mean, variance):
    return variance


def _mean_square(mean, variance):
    return variance + tf.square(mean)


def _over_noisy_copies(method, defaults, statistic, name):
    _check_noise(name, defaults["repetitions"], defaults["noise"], defaults["noise_chunk_size"])

    def apply(model, inputs, indices=None, spatial_axis=SPATIAL_AXIS, **params):
        own = {key: params.pop(key, default) for key, default in defaults.items()}
        _check_noise(name, own["repetitions"], own["noise"], own["noise_chunk_size"])
        inputs = tf.convert_to_tensor(inputs)
        indices = _units_at_input(model, inputs, indices)

        def copies_chunk(start, count):
            logits, maps = method(
                model=model,
                inputs=_noisy_copies(inputs, start, count, own["noise"], own["noise_seed"]),
                indices=chunking.tile_indices(indices, count),
                spatial_axis=spatial_axis,
                **params,
            )
            logits = chunking.split_copies(logits, count)
            maps = chunking.split_copies(maps, count)
            mean = tf.reduce_mean(maps, axis=0)
            m2 = tf.reduce_sum(tf.square(maps - mean), axis=0)
            return tf.cast(count, maps.dtype), tf.reduce_sum(logits, axis=0), mean, m2

        count, logits, mean, m2 = chunking.chunked_reduce(
            own["repetitions"], own["noise_chunk_size"], copies_chunk, combine=_merge_moments
        )
        return logits / tf.cast(count, logits.dtype), statistic(mean, m2 / count)

    return _with_own_parameters(method, defaults, apply, name)


def smooth(
    method: Callable,
    repetitions: int = 20,
    noise: float = 0.1,
    noise_chunk_size: int = 8,
    noise_seed: int = 0,
) -> Callable:
    """SmoothGrad of any method: the mean of its maps over noisy copies of the input.

    Each copy is x + ε, ε ~ N(0, σ²) with σ = `noise` × (max(x) - min(x)). The logits are
    the mean of the copies' logits. With `noise=0` the result is the method's own.

    Usage:

        smoothgrad = smooth(methods.gradient.gradients, repetitions=32, noise=0.15)
        logits, maps = explain(smoothgrad, model, images, units)
        logits, maps = explain(smoothgrad, model, images, units, repetitions=64)
        logits, maps = explain(smooth(methods.cams.gradcam), exposed, images, units)

    Reference:
        Smilkov, D., Thorat, N., Kim, B., Viégas, F., Wattenberg, M. (2017). SmoothGrad:
        removing noise by adding noise. arXiv:1706.03825.

    Args:
        method: the explaining method to smooth.
        repetitions: noisy copies of each input.
        noise: the noise's standard deviation, as a fraction of each input's value range.
        noise_chunk_size: copies of each input per call of `method`.
        noise_seed: seed of the (stateless, reproducible) noise.

    Returns:
        An explaining method taking these as parameters too (their values here are its
        defaults), then `method`'s.
    """
    return _over_noisy_copies(method, _noise_defaults(repetitions, noise, noise_chunk_size,
                                                      noise_seed), _mean, "smooth")


def vargrad(
    method: Callable,
    repetitions: int = 20,
    noise: float = 0.1,
    noise_chunk_size: int = 8,
    noise_seed: int = 0,
) -> Callable:
    """VarGrad of any method: the variance of its maps over noisy copies of the input.

    Same copies as `smooth` (same arguments, same seed, same draws); the variance is the
    population variance, accumulated chunk by chunk with Chan et al.'s pairwise update (no
    cancellation between large sums). Apply it to signed maps (for instance
    `smooth`'s copies of `gradients` with `gradient_filter="identity"`) for the variance of the
    gradient itself.

    Usage:

        logits, maps = explain(vargrad(methods.gradient.gradients), model, images, units)

    Reference:
        Adebayo, J., Gilmer, J., Goodfellow, I., Kim, B. (2018). Local Explanation Methods
        for Deep Neural Networks Lack Sensitivity to Parameter Values. ICLR Workshop.
        arXiv:1810.03307.

    Args:
        method: the explaining method.
        repetitions: noisy copies of each input.
        noise: the noise's standard deviation, as a fraction of each input's value range.
        noise_chunk_size: copies of each input per call of `method`.
        noise_seed: seed of the (stateless, reproducible) noise.

    Returns:
        An explaining method taking these as parameters too (their values here are its
        defaults), then `method`'s.
    """
    return _over_noisy_copies(method, _noise_defaults(repetitions, noise, noise_chunk_size,
                                                      noise_seed), _variance, "vargrad")


def squaregrad(
    method: Callable,
    repetitions: int = 20,
    noise: float = 0.1,
    noise_chunk_size: int = 8,
    noise_seed: int = 0,
) -> Callable:
    """SquareGrad of any method: the mean of its squared maps over noisy copies of the input.

    Same copies as `smooth`; equals `vargrad + smooth²`.

    Usage:

        logits, maps = explain(squaregrad(methods.gradient.gradients), model, images, units)

    Reference:
        Hooker, S., Erhan, D., Kindermans, P.-J., Kim, B. (2019). A Benchmark for
        Interpretability Methods in Deep Neural Networks. NeurIPS. arXiv:1806.10758.

    Args:
        method: the explaining method.
        repetitions: noisy copies of each input.
        noise: the noise's standard deviation, as a fraction of each input's value range.
        noise_chunk_size: copies of each input per call of `method`.
        noise_seed: seed of the (stateless, reproducible) noise.

    Returns:
        An explaining method taking these as parameters too (their values here are its
        defaults), then `method`'s.
    """
    return _over_noisy_copies(method, _noise_defaults(repetitions, noise, noise_chunk_size,
                                                      noise_seed), _mean_square, "squaregrad")


def tta(
    method: Callable,
    scales: Sequence[float] = (0.5, 1.5, 2.0),
    hflip: bool = True,
    resize_method: str = "bilinear",
) -> Callable:
    """Test-time augmentation of any method: the mean of its maps over rescaled and
    horizontally mirrored inputs, each mapped back to the un-augmented map's frame.

    The augmentations are the input itself, its mirror (with `hflip`), and for each scale
    the input resized by that factor (and its mirror). Each map is mirrored back and resized
    to the size of the map of the input itself; the logits are averaged too. Augmentations
    run one after the other, so one is in memory at a time. With no scales and no flip the
    result is the method's own. Rescaling needs a model that accepts other input sizes
    (built on `keras.Input((None, None, C))`, as `keras.applications` models are by default
    with `include_top=False`).

    Usage:

        logits, maps = explain(tta(methods.cams.gradcam), exposed, images, units)
        logits, maps = explain(tta(gradcam, scales=(0.75, 1.25), hflip=False), exposed, x, y)

    Reference:
        Ahn, J., Kwak, S. (2018). Learning Pixel-level Semantic Affinity with Image-level
        Supervision for Weakly Supervised Semantic Segmentation. CVPR. arXiv:1803.10464
        (CAMs averaged over scales and flips, the practice this follows).

    Args:
        method: the explaining method.
        scales: resizing factors applied to the input's spatial size.
        hflip: also explain mirrored copies (the last spatial axis is mirrored).
        resize_method: `tf.image.resize` method for inputs and maps.

    Returns:
        An explaining method taking these as parameters too (their values here are its
        defaults), then `method`'s.
    """
    defaults = {"scales": tuple(float(s) for s in scales), "hflip": bool(hflip),
                "resize_method": resize_method}

    def apply(model, inputs, indices=None, spatial_axis=SPATIAL_AXIS, **params):
        own = {key: params.pop(key, default) for key, default in defaults.items()}
        augmentations = [(None, True)] if own["hflip"] else []
        for scale in own["scales"]:
            augmentations += [(float(scale), False)] + ([(float(scale), True)] if own["hflip"]
                                                        else [])
        inputs = tf.convert_to_tensor(inputs)
        indices = _units_at_input(model, inputs, indices)
        flip_axis = spatial_axis[-1]
        shape = tf.shape(inputs)
        size = tf.stack([shape[a] for a in spatial_axis])
        resize_method = own["resize_method"]

        def explain_as(augmented):
            return method(
                model=model, inputs=augmented, indices=indices, spatial_axis=spatial_axis, **params
            )

        logits, maps = explain_as(inputs)
        frame = tf.shape(maps)
        frame = tf.stack([frame[a] for a in spatial_axis])
        for scale, flip in augmentations:
            # Start an augmentation only once the previous one is summed: one at a time.
            with tf.control_dependencies([logits, maps]):
                augmented = tf.identity(inputs)
            if flip:
                augmented = tf.reverse(augmented, [flip_axis])
            if scale is not None:
                scaled = tf.cast(tf.round(scale * tf.cast(size, tf.float32)), tf.int32)
                augmented = _resize(augmented, tf.maximum(scaled, 1), spatial_axis, resize_method)
            augmented_logits, augmented_maps = explain_as(augmented)
            if flip:
                augmented_maps = tf.reverse(augmented_maps, [flip_axis])
            augmented_maps = _resize(augmented_maps, frame, spatial_axis, resize_method)
            logits += augmented_logits
            maps += tf.cast(augmented_maps, maps.dtype)
        count = 1 + len(augmentations)
        return logits / count, maps / count

    return _with_own_parameters(method, defaults, apply, "tta")


def _resize(tensor, size, spatial_axis, method):
    if method == "bilinear":
        return utils.resize(tensor, size, spatial_axis)
    if utils.positive_axes(spatial_axis, tensor.shape.rank) != (
        tensor.shape.rank - 3,
        tensor.shape.rank - 2,
    ):
        raise ExplainError(f"resize_method={method!r} needs spatial_axis=(-3, -2); use 'bilinear'.")
    return tf.image.resize(tensor, size, method=method)


__all__ = ["smooth", "vargrad", "squaregrad", "tta"]
