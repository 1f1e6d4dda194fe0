"""Gradient-based explaining methods: maps built from the gradient of the explained units
with respect to the input signal.

Every method here is a plain function `(model, inputs, indices, ...) -> (logits, maps)` on
a model whose (first) output is the logits. Each forward pass serves all K explained units,
with one backward pass (a vector-Jacobian product) per unit, never a Jacobian over every
unit; multi-pass methods (Integrated Gradients) repeat that per chunk of path points.
"""

import math
import weakref
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import keras
import tensorflow as tf

from explain_lib import filters, inspection, utils
from explain_lib.methods import chunking
from explain_lib.methods.common import by_name, logits_of, unit_maps
from explain_lib.utils import SPATIAL_AXIS, ExplainError


GRADIENT_FILTERS: Dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "abs": tf.abs,
    "square": tf.square,
    "positive": tf.nn.relu,
    "identity": tf.identity,
}
"""`gradients`' `gradient_filter` by name (what a JSON configuration can say)."""


def gradients(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    gradient_filter: Union[str, Callable] = "abs",
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Vanilla gradient saliency: ψ(∂f_u(x)/∂x), averaged over channels.

    For each explained unit u, the gradient of its score with respect to every input value,
    passed through `gradient_filter` ψ (default: the absolute value, as the paper takes
    the maximum magnitude over channels; here the mean) and averaged over the channel axis.

    Usage:

        logits, maps = gradients(model, images, tf.constant([[3], [7]]))  # maps (2, H, W, 1)
        logits, maps = gradients(model, images, units, gradient_filter="identity")  # signed
        logits, maps = explain_lib.gradients(model, images, [3, 7])       # normalised

    Reference:
        Simonyan, K., Vedaldi, A., Zisserman, A. (2013). Deep Inside Convolutional Networks:
        Visualising Image Classification Models and Saliency Maps. arXiv:1312.6034.

    Args:
        model: the model; its (first) output is the logits (B, U).
        inputs: (B, H, W, C) input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of `inputs`.
        gradient_filter: ψ, applied to the gradient before the channel mean: a name in
            `GRADIENT_FILTERS` ("abs", "square", "positive", "identity") or a function.

    Returns:
        logits (B, K) and maps (B, H, W, K).
    """
    psi = by_name(gradient_filter, GRADIENT_FILTERS, "gradient_filter")
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        tape.watch(inputs)
        logits = logits_of(model, inputs)
        logits = inspection.gather_units(logits, inspection.select_units(logits, indices))
    maps = unit_maps(tape, logits, inputs, lambda grad: tf.reduce_mean(psi(grad), -1))
    del tape
    return logits, maps


def input_x_gradient(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Input × Gradient: x ⊙ ∂f_u(x)/∂x, summed over channels.

    Each input value times the gradient of the explained score with respect to it: the
    first-order (Taylor) contribution of that value to the score. The sign is kept (positive
    values raise the score) and channels are summed, so on a linear model
    f_u(x) = w_u·x + b_u the map holds w_u ⊙ x per pixel and sums to f_u(x) - b_u.

    Usage:

        logits, maps = input_x_gradient(model, images, tf.constant([[3], [7]]))
        logits, maps = explain_lib.input_x_gradient(model, images, [3, 7])  # |.| normalised

    Reference:
        Shrikumar, A., Greenside, P., Shcherbina, A., Kundaje, A. (2016). Not Just a Black Box:
        Learning Important Features Through Propagating Activation Differences.
        arXiv:1605.01713.

    Args:
        model: the model; its (first) output is the logits (B, U).
        inputs: (B, H, W, C) input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of `inputs` (the maps keep them).

    Returns:
        logits (B, K) and signed maps (B, H, W, K).
    """
    inputs = tf.convert_to_tensor(inputs)
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        tape.watch(inputs)
        logits = logits_of(model, inputs)
        indices = inspection.select_units(logits, indices)
        logits = inspection.gather_units(logits, indices)
    maps = unit_maps(tape, logits, inputs, lambda grad: tf.reduce_sum(grad * inputs, axis=-1))
    del tape
    return logits, maps


def integrated_gradients(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    baseline: Union[float, str, tf.Tensor] = 0.0,
    n_steps: int = 32,
    chunk_size: int = 8,
    blur_sigma: Optional[float] = None,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Integrated Gradients: (x - x') ⊙ ∫₀¹ ∂f_u(x' + α(x - x'))/∂x dα, summed over channels.

    The gradient is averaged along the straight path from a baseline x' (an input that
    carries no signal) to x, and multiplied by the displacement. The attributions satisfy
    *completeness*: they sum to f_u(x) - f_u(x'). The integral is a midpoint Riemann sum of
    `n_steps` points, whose error falls as 1/n_steps² on smooth models; the maps are signed and
    summed over channels, so they keep that sum.

    The path points are evaluated `chunk_size` at a time: one forward pass holds
    `chunk_size × B` inputs and one unit's gradients of them, whatever `n_steps` is. (The
    path length is `n_steps`, as in Captum, so that it never meets `explain`'s own `steps`,
    the number of batches to read.)

    Usage:

        logits, maps = integrated_gradients(model, images, units, n_steps=64)
        logits, maps = integrated_gradients(model, images, units, baseline="blur")
        logits, maps = explain_lib.integrated_gradients(model, images, units)  # |.| normalised

    Reference:
        Sundararajan, M., Taly, A., Yan, Q. (2017). Axiomatic Attribution for Deep Networks.
        ICML. arXiv:1703.01365. (Blurred baselines: Sturmfels, P., Lundberg, S., Lee, S.-I.
        (2020). Visualizing the Impact of Feature Attribution Baselines. Distill.)

    Args:
        model: the model; its (first) output is the logits (B, U).
        inputs: (B, H, W, C) input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of `inputs`.
        baseline: x': a number (a constant input, 0 by default), "blur" (each input blurred
            by a Gaussian of `blur_sigma` pixels) or a tensor broadcastable to `inputs`
            (such as one (H, W, C) reference image).
        n_steps: points of the Riemann sum.
        chunk_size: path points per forward pass.
        blur_sigma: standard deviation, in pixels, of the "blur" baseline; default: 5
            pixels at 224, scaled with the image (`utils.at_input_size`).

    Returns:
        logits (B, K) at `inputs` and signed maps (B, H, W, K).
    """
    if n_steps < 1 or chunk_size < 1:
        raise ExplainError(
            f"integrated_gradients needs n_steps >= 1 and chunk_size >= 1, got "
            f"n_steps={n_steps} and chunk_size={chunk_size}."
        )
    inputs = tf.convert_to_tensor(inputs)
    reference = _baseline_of(inputs, baseline, blur_sigma, spatial_axis)
    displacement = inputs - reference
    logits = logits_of(model, inputs)
    indices = inspection.select_units(logits, indices)
    logits = inspection.gather_units(logits, indices)
    units = logits.shape[-1]
    rank = inputs.shape.rank

    def path_chunk(start, count):
        alphas = (tf.cast(start + tf.range(count), inputs.dtype) + 0.5) / n_steps
        alphas = tf.reshape(alphas, [-1] + [1] * rank)
        points = chunking.merge_copies(reference + alphas * displacement)
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            tape.watch(points)
            scores = inspection.gather_units(
                logits_of(model, points), chunking.tile_indices(indices, count)
            )

        def attribution(grad):
            grad = tf.reduce_sum(chunking.split_copies(grad, count), axis=0)
            return tf.reduce_sum(grad * displacement, axis=-1)

        return unit_maps(tape, scores, points, attribution)

    zeros = tf.zeros(tf.concat([tf.shape(inputs)[:-1], [units]], axis=0), inputs.dtype)
    total = chunking.chunked_reduce(n_steps, chunk_size, path_chunk, initial=zeros)
    return logits, total / n_steps


def _baseline_of(inputs, baseline, blur_sigma, spatial_axis) -> tf.Tensor:
    """The integration baseline x', with the shape of `inputs`."""
    if isinstance(baseline, str):
        if baseline != "blur":
            raise ExplainError(
                f"Unknown baseline {baseline!r}: pass a number, 'blur' or a tensor "
                "broadcastable to the inputs."
            )
        if blur_sigma is None:
            blur_sigma = utils.at_input_size(5.0, [inputs.shape[a] for a in spatial_axis])
        return gaussian_blur(inputs, blur_sigma, spatial_axis)
    return tf.broadcast_to(tf.cast(baseline, inputs.dtype), tf.shape(inputs))


def gaussian_blur(
    images: tf.Tensor, sigma: float, spatial_axis: Sequence[int] = SPATIAL_AXIS
) -> tf.Tensor:
    """Blur each channel of `images` (B, H, W, C) by a Gaussian of `sigma` pixels.

    Separable (one pass per spatial axis), borders reflected; the kernel is cut at 3σ or at
    the image's size, whichever is smaller (reflection cannot reach farther).

    Usage:

        blurred = gaussian_blur(images, sigma=5.0)
    """
    images = tf.convert_to_tensor(images)
    rank = images.shape.rank
    axes = utils.positive_axes(spatial_axis, rank)
    channels = images.shape[-1]
    for axis in axes:
        length = images.shape[axis]
        if length is None:
            raise ExplainError("gaussian_blur needs inputs of static spatial size.")
        radius = min(int(math.ceil(3 * sigma)), length - 1)
        if radius < 1:
            continue
        offsets = tf.range(-radius, radius + 1, dtype=images.dtype)
        kernel = tf.exp(-0.5 * tf.square(offsets / sigma))
        kernel = kernel / tf.reduce_sum(kernel)
        # Lay the axis out as the height of a (N, length, 1, C) image and filter it.
        moved = tf.experimental.numpy.moveaxis(images, axis, -2)
        shape = tf.shape(moved)
        lines = tf.reshape(moved, tf.stack([-1, length, 1, channels]))
        lines = tf.pad(lines, [[0, 0], [radius, radius], [0, 0], [0, 0]], mode="REFLECT")
        filters_ = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
        lines = tf.nn.depthwise_conv2d(lines, filters_, [1, 1, 1, 1], "VALID")
        images = tf.experimental.numpy.moveaxis(tf.reshape(lines, shape), -2, axis)
    return images


_bias_exposures: "weakref.WeakKeyDictionary[keras.Model, tuple]" = weakref.WeakKeyDictionary()


def _bias_exposure(model: keras.Model):
    """(a model returning [logits, *biased layers' outputs], the biased layers, whether each
    applies a fused ReLU), built once per model and cached here, not on the model. The
    logits are the model's output (its scores: `explain` gives the model without a final
    softmax); the last layer with a bias is among the biased layers, its output the logits
    or (MobileNetV3's 1x1 convolution before a Flatten) what they are made of."""
    if model not in _bias_exposures:
        layers = inspection.layers_with_biases(model, return_biases=False)
        rectified = []
        for layer in layers:
            activation = getattr(layer, "activation", None)
            if activation is None or activation is keras.activations.linear:
                rectified.append(False)
            elif activation is keras.activations.relu:
                rectified.append(True)
            else:
                raise ExplainError(
                    f"Layer {layer.name!r} adds its bias before a fused "
                    f"{getattr(activation, '__name__', activation)} activation. Full-Gradient "
                    "needs the signal where the bias is added: build the layer with "
                    "activation=None followed by an Activation layer (a fused ReLU is "
                    "handled)."
                )
        exposed = inspection.expose(
            model, [{"layer": layer, "link": "output"} for layer in layers],
            inspection.MODEL_OUTPUT, grid=None)
        _bias_exposures[model] = (exposed, layers, rectified)
    return _bias_exposures[model]


def _full_gradient_pass(model, inputs, indices, reduce):
    """One forward pass, then per unit: the input-gradient term ∂f/∂x ⊙ x and each biased
    layer's bias-gradient term ∂f/∂z ⊙ b, handed to `reduce(input_term, bias_terms)`."""
    exposed, layers, rectified = _bias_exposure(model)
    biases = inspection.biases(layers)
    inputs = tf.convert_to_tensor(inputs)
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        tape.watch(inputs)
        logits, *signals = exposed(inputs, training=False)
        logits = inspection.gather_units(logits, inspection.select_units(logits, indices))

    def terms(grads):
        grad_input, *grad_signals = grads
        bias_terms = []
        for grad, signal, bias, relu in zip(grad_signals, signals, biases, rectified):
            grad = tf.cast(grad, inputs.dtype)  # float32 under a mixed dtype policy
            if relu:  # the bias is added before the ReLU: ∂f/∂(pre-activation)
                grad = grad * tf.cast(signal > 0, grad.dtype)
            bias_terms.append(grad * tf.cast(bias, grad.dtype))
        return reduce(grad_input * inputs, bias_terms)

    maps = unit_maps(tape, logits, [inputs, *signals], terms)
    del tape
    return logits, maps


def full_gradient_decomposition(
    model: keras.Model, inputs: tf.Tensor, indices: Optional[tf.Tensor] = None
) -> Tuple[tf.Tensor, tf.Tensor, List[tf.Tensor]]:
    """The full-gradient decomposition of the explained scores, before any filter.

    For a network of linear/convolutional layers, BatchNormalization (in inference) and
    piecewise-linear activations such as ReLU,

        f_u(x) = Σ ∂f_u/∂x ⊙ x + Σ_l Σ ∂f_u/∂z_l ⊙ b_l

    where z_l is the output of the l-th layer adding a bias b_l (BatchNormalization's
    implicit bias β - μγ/√(σ²+ε) included). `full_gradients` builds its map from these terms.

    Usage:

        logits, input_term, bias_terms = full_gradient_decomposition(model, images, units)
        total = tf.reduce_sum(input_term, [1, 2, 3]) + sum(
            tf.reduce_sum(t, list(range(1, t.shape.rank - 1))) for t in bias_terms)
        # total ≈ logits

    Returns:
        logits (B, K); the input-gradient term (B, H, W, C, K); and per biased layer (in
        `inspection.layers_with_biases` order, the logits layer last) its bias-gradient term
        (B, ..., C_l, K).
    """
    logits, (input_term, bias_terms) = _full_gradient_pass(
        model, inputs, indices, lambda input_term, bias_terms: (input_term, bias_terms)
    )
    return logits, input_term, bias_terms


def full_gradients(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    psi: Union[str, Callable] = "absolute_normalize",
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Full-Gradient: ψ(∂f_u/∂x ⊙ x) + Σ_l ψ(∂f_u/∂z_l ⊙ b_l), summed over channels.

    The input-gradient term and every spatial layer's bias-gradient term (see
    `full_gradient_decomposition`), each passed through ψ (by default: absolute value,
    min-max normalised over the map's positions and channels together), summed over its
    channels and bilinearly resized to the input size, then added up. Layers without
    positions (Dense) complete the decomposition but have nothing to show on a map, so they
    are left out, as in the paper.

    The model is the plain model: the outputs of its biased layers are exposed internally
    (once per model). Biased layers must not fuse a non-linear activation other than ReLU.

    Usage:

        logits, maps = full_gradients(model, images, units)   # maps (B, H, W, K), >= 0
        logits, maps = explain_lib.full_gradients(model, images, units)

    Reference:
        Srinivas, S., Fleuret, F. (2019). Full-Gradient Representation for Neural Network
        Visualization. NeurIPS. arXiv:1905.00780.

    Args:
        model: the model; its logits layer is the last layer with a kernel.
        inputs: (B, H, W, C) input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of `inputs`.
        psi: the filter applied to each term over `(*spatial_axis, -1)`: a name in
            `explain_lib.filters` or a function `psi(term, axis)`.

    Returns:
        logits (B, K) and maps (B, H, W, K).
    """
    psi = filters.get(psi)
    inputs = tf.convert_to_tensor(inputs)
    axis = (*spatial_axis, -1)
    shape = tf.shape(inputs)
    size = tf.stack([shape[a] for a in spatial_axis])

    def saliency(input_term, bias_terms):
        total = tf.reduce_sum(psi(input_term, axis), axis=-1)
        for term in bias_terms:
            if term.shape.rank == inputs.shape.rank:
                term = tf.reduce_sum(psi(term, axis), axis=-1, keepdims=True)
                # Bilinear resizing is linear: resizing the channel sum is resizing each.
                total += utils.resize(term, size, spatial_axis)[..., 0]
        return total

    return _full_gradient_pass(model, inputs, indices, saliency)


METHODS = [gradients, input_x_gradient, integrated_gradients, full_gradients]
"""The methods of this module, for introspection and the registry."""

__all__ = [
    "gradients",
    "input_x_gradient",
    "integrated_gradients",
    "full_gradients",
    "full_gradient_decomposition",
    "gaussian_blur",
    "unit_maps",
]
