"""Class Activation Map methods: maps built by weighting the channels of an inner spatial
activation A (B, h, w, C), usually the input of the network's global pooling.

Every method here takes an *exposed* model, one returning `[logits, activations]`
(`inspection.expose(model, layer)` builds it), or a plain model, which is exposed with the
defaults (the input of the last global pooling layer); it returns raw maps (B, h, w, K) at the
activation's resolution: no ReLU and no normalisation (the shortcuts apply
`filters.positive_normalize`) and no resizing (`explain` resizes to the input size).

What distinguishes them is the channel weights:
- `cam`: the logits layer's kernel (a global-average-pooling + Dense head);
- `gradcam`: the spatial mean of ∂f_u/∂A;
- `gradcampp`: a positively weighted sum of ∂f_u/∂A (higher-order terms);
- `layercam`: ReLU(∂f_u/∂A) per position (no pooling);
- `scorecam`: the unit's probability for the input masked by each channel (forward
  passes only);
- `xgradcam`: ∂f_u/∂A_c averaged with the weights A_c / Σ A_c;
- `hirescam`: ∂f_u/∂A_c per position (no pooling, negative gradients kept);
- `eigencam`: none: A projected on its first principal component (class-agnostic);
- `ablationcam`: the relative drop of the unit's score when channel c of A is zeroed
  (forward passes only).
"""

import weakref
from typing import Callable, Optional, Sequence, Tuple, Union

import keras
import tensorflow as tf

from explain_lib import filters, inspection, utils
from explain_lib.methods import chunking
from explain_lib.methods.common import check_score, scores_of, unit_maps
from explain_lib.utils import SPATIAL_AXIS, ExplainError


_default_exposures: "weakref.WeakKeyDictionary[keras.Model, keras.Model]" = (
    weakref.WeakKeyDictionary()
)


def exposed_model(model: keras.Model) -> keras.Model:
    """`model` if it is exposed (several outputs); a plain model (one output) exposed with
    `inspection.expose`'s defaults (the logits and the input of the last global pooling
    layer), once per model, cached here and not on the model; expose it yourself to weigh
    another layer."""
    if len(getattr(model, "outputs", None) or ()) == 1:
        if model not in _default_exposures:
            _default_exposures[model] = inspection.expose(model)
        return _default_exposures[model]
    return model


def exposed_outputs(model: keras.Model, inputs: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """`(logits, activations)` from an exposed model (a plain one is exposed with the
    defaults, `exposed_model`), or an error that says how to get one."""
    model = exposed_model(model)
    outputs = model(inputs, training=False)
    if isinstance(outputs, (list, tuple)) and len(outputs) == 2:
        return outputs[0], outputs[1]
    count = len(outputs) if isinstance(outputs, (list, tuple)) else 1
    if not getattr(model, "outputs", None):
        raise ExplainError(
            f"{model.name!r} is a subclassed model ({type(model).__name__}): CAM methods weigh "
            "an inner activation, which only a Functional or Sequential model's graph lets "
            "explain_lib reach. Explain it with a gradient or perturbation method (gradients, "
            "integrated_gradients, smoothgrad, occlusion, rise), build it functionally, or "
            f"make its call() return [logits, activations] (it returns {count} output(s))."
        )
    raise ExplainError(
        f"CAM methods need a model returning [logits, activations]; {model.name!r} returns "
        f"{count} output(s). Build one with explain_lib.inspection.expose(model)."
    )


def cam(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    logits_layer: Optional[Union[str, keras.layers.Layer]] = None,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """CAM: Σ_c w_cu A_c, the activation weighted by the logits layer's kernel.

    For a head f_u = Σ_c w_cu mean_hw(A_c) + b_u (global average pooling, then Dense), the
    map at each position is that position's share of the score: its mean over positions is
    f_u - b_u. One forward pass, no gradient.

    Usage:

        exposed = inspection.expose(model)
        logits, maps = cam(exposed, images, units)         # maps (B, h, w, K)
        logits, maps = explain_lib.cam(exposed, images, units)

    Reference:
        Zhou, B., Khosla, A., Lapedriza, A., Oliva, A., Torralba, A. (2016). Learning Deep
        Features for Discriminative Localization. CVPR. arXiv:1512.04150.

    Args:
        model: an exposed model returning [logits, activations (B, h, w, C)].
        inputs: (B, H, W, C') input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of the activations.
        logits_layer: the Dense (or 1×1 convolution) layer producing the logits, or its name;
            default: the last layer with a kernel.

    Returns:
        logits (B, K) and maps (B, h, w, K).
    """
    if len(getattr(model, "outputs", None) or ()) == 1 and (
            inspection.default_activation(model).get("link") == "last_block_input"):
        raise ExplainError(
            f"CAM weighs activations that a global-average-pooling + Dense head pools; "
            f"{model.name!r} is a transformer whose head reads its class token: explain it "
            "with gradcam (or another CAM method), or attention_rollout.")
    logits, activations = exposed_outputs(model, inputs)
    activations = tf.cast(activations, inputs.dtype)  # float32 under a mixed dtype policy
    indices = inspection.select_units(logits, indices)
    logits = inspection.gather_units(logits, indices)
    if not isinstance(logits_layer, keras.layers.Layer):
        logits_layer = inspection.get_logits_layer(model, logits_layer)
    _check_pooled_linear(model, logits_layer)
    kernel = tf.convert_to_tensor(logits_layer.kernel)
    channels = activations.shape[-1]
    if kernel.shape[-2] != channels or kernel.shape.num_elements() != channels * kernel.shape[-1]:
        raise ExplainError(
            f"CAM weighs the {channels} activation channels by the logits layer's kernel, but "
            f"{logits_layer.name!r} has a kernel of shape {tuple(kernel.shape)}: CAM needs a "
            "global-average-pooling + Dense head on these activations (use gradcam otherwise)."
        )
    kernel = tf.cast(tf.reshape(kernel, (channels, -1)), activations.dtype)  # (C, U)
    if indices is None:
        return logits, tf.einsum("b...c,cu->b...u", activations, kernel)
    weights = tf.gather(kernel, indices, axis=1)  # (C, B, K)
    return logits, tf.einsum("b...c,cbk->b...k", activations, weights)


HEAD_PASS_THROUGH = (keras.layers.Dropout, keras.layers.Flatten, keras.layers.Reshape,
                     keras.layers.Identity)
"""Layers that may stand between CAM's global average pooling and its logits layer: they
change no value."""


def _check_pooled_linear(model: keras.Model, logits_layer: keras.layers.Layer) -> None:
    """Raises unless the last global pooling before `logits_layer` averages and feeds it
    through value-preserving layers only: CAM's map averages to the logit (less the bias)
    only then. ConvNeXt's head normalizes the pooled features (LayerNormalization) and
    MobileNetV3's has a hidden 1x1 convolution: CAM is not defined there."""
    layers = inspection.flatten_layers(model)
    if logits_layer not in layers:
        return
    head = layers[:layers.index(logits_layer)]
    pools = [i for i, layer in enumerate(head) if isinstance(layer, inspection.POOLING_LAYERS)
             and not isinstance(layer, keras.layers.Flatten)]
    if not pools:
        return
    pooling = head[pools[-1]]
    between = [layer for layer in head[pools[-1] + 1:]
               if not isinstance(layer, HEAD_PASS_THROUGH) and not (
                   isinstance(layer, keras.layers.Activation)
                   and keras.activations.serialize(layer.activation) == "linear")]
    if "Average" not in type(pooling).__name__ or between:
        found = (f"{pooling.name!r} ({type(pooling).__name__})" if not between else
                 ", ".join(f"{layer.name!r} ({type(layer).__name__})" for layer in between)
                 + f" between {pooling.name!r} and {logits_layer.name!r}")
        raise ExplainError(
            "CAM weighs activations by the logits layer's kernel, which is their logit in a "
            f"head of global average pooling then Dense only; this model's head has {found}: "
            "explain it with gradcam (or another CAM method).")


def _gradient_weighted(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor],
    to_map: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
) -> Tuple[tf.Tensor, tf.Tensor]:
    """One forward pass, then per unit `to_map(activations, ∂f_u/∂activations)`."""
    inputs = tf.convert_to_tensor(inputs)
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        tape.watch(inputs)
        logits, activations = exposed_outputs(model, inputs)
        logits = inspection.gather_units(logits, inspection.select_units(logits, indices))
    # Weighed in the inputs' precision, float32 also under a mixed dtype policy.
    weighed = tf.cast(activations, inputs.dtype)
    maps = unit_maps(tape, logits, activations,
                     lambda grad: to_map(weighed, tf.cast(grad, inputs.dtype)))
    del tape
    return logits, maps


def gradcam(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Grad-CAM: Σ_c α_c A_c with α_c = mean_hw ∂f_u/∂A_c.

    The channel weights are the spatially averaged gradients of the explained score, so any
    head (not only global pooling + Dense) can be explained. On a global-average-pooling +
    Dense head, ∂f_u/∂A_c = w_cu / (h·w) everywhere, hence Grad-CAM = CAM / (h·w).

    Usage:

        exposed = inspection.expose(model)
        logits, maps = gradcam(exposed, images, units)     # maps (B, h, w, K)
        logits, maps = explain_lib.gradcam(exposed, images, units)

    Reference:
        Selvaraju, R. R., Cogswell, M., Das, A., Vedantam, R., Parikh, D., Batra, D. (2017).
        Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization.
        ICCV. arXiv:1610.02391.

    Args:
        model: an exposed model returning [logits, activations (B, h, w, C)].
        inputs: (B, H, W, C') input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of the activations.

    Returns:
        logits (B, K) and maps (B, h, w, K).
    """

    def weighted(activations, grad):
        weights = tf.reduce_mean(grad, axis=spatial_axis, keepdims=True)
        return tf.reduce_sum(weights * activations, axis=-1)

    return _gradient_weighted(model, inputs, indices, weighted)


def gradcampp(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Grad-CAM++: Σ_c w_c A_c with w_c = Σ_ij a_ij^c ReLU(g_ij^c), g = ∂f_u/∂A and

        a_ij^c = (g_ij^c)² / (2 (g_ij^c)² + Σ_ab A_ab^c (g_ij^c)³)   (0 where that is 0/0).

    The closed form of the paper for an exponential of the score, whose higher derivatives
    are powers of g. The paper's weights also carry the factor exp(f_u), one positive number
    per map, which overflows float32 for scores above 88: it is left out, which changes no
    normalised map.

    Usage:

        exposed = inspection.expose(model)
        logits, maps = gradcampp(exposed, images, units)   # maps (B, h, w, K)
        logits, maps = explain_lib.gradcampp(exposed, images, units)

    Reference:
        Chattopadhay, A., Sarkar, A., Howlader, P., Balasubramanian, V. N. (2018).
        Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep Convolutional
        Networks. WACV. arXiv:1710.11063.

    Args:
        model: an exposed model returning [logits, activations (B, h, w, C)].
        inputs: (B, H, W, C') input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of the activations.

    Returns:
        logits (B, K) and maps (B, h, w, K).
    """

    def weighted(activations, grad):
        squared = tf.square(grad)
        total = tf.reduce_sum(activations, axis=spatial_axis, keepdims=True)
        alphas = tf.math.divide_no_nan(squared, 2.0 * squared + total * squared * grad)
        weights = tf.reduce_sum(alphas * tf.nn.relu(grad), axis=spatial_axis, keepdims=True)
        return tf.reduce_sum(weights * activations, axis=-1)

    return _gradient_weighted(model, inputs, indices, weighted)


def layercam(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """LayerCAM: Σ_c ReLU(∂f_u/∂A_c) ⊙ A_c, weights per position rather than per channel.

    Keeping a weight per position makes the method meaningful on early layers too (expose
    any layer as the activation), whose gradients vary strongly across positions.

    Usage:

        exposed = inspection.expose(model, "block3_conv3")
        logits, maps = layercam(exposed, images, units)    # maps (B, h, w, K)
        logits, maps = explain_lib.layercam(exposed, images, units)

    Reference:
        Jiang, P.-T., Zhang, C.-B., Hou, Q., Cheng, M.-M., Wei, Y. (2021). LayerCAM:
        Exploring Hierarchical Class Activation Maps for Localization. IEEE TIP 30.

    Args:
        model: an exposed model returning [logits, activations (B, h, w, C)].
        inputs: (B, H, W, C') input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of the activations.

    Returns:
        logits (B, K) and maps (B, h, w, K).
    """
    return _gradient_weighted(
        model,
        inputs,
        indices,
        lambda activations, grad: tf.reduce_sum(tf.nn.relu(grad) * activations, axis=-1),
    )


def scorecam(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    score: str = "probability",
    chunk_size: int = 16,
    max_channels: Optional[int] = None,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Score-CAM: Σ_c s_c A_c, s_c = p_u(x ⊙ M_c), M_c = A_c upsampled and min-max normalised.

    Each channel, upsampled to the input's size and normalised to [0, 1], is used as a soft
    mask on the input, and weighs the channel by the probability the model gives the
    explained unit for the masked input (the softmax of the logits over the units, as in the
    paper and its official code; `score="logit"` weighs by the raw logit instead). A channel
    whose activation is constant makes no mask and is skipped (weight 0), as in the official
    code. Forward passes only, no gradient. The masked inputs are scored `chunk_size`
    channels per forward pass (`chunk_size × B` inputs), never one pass per channel and
    never all channels at once.

    `max_channels=N` is Faster Score-CAM: only the N channels whose activation varies most
    over positions (per sample) are scored, so the time falls in proportion.

    Usage:

        exposed = inspection.expose(model)
        logits, maps = scorecam(exposed, images, units, chunk_size=32)
        logits, maps = explain_lib.scorecam(exposed, images, units, max_channels=128)

    References:
        Wang, H., Wang, Z., Du, M., Yang, F., Zhang, Z., Ding, S., Mardziel, P., Hu, X.
        (2020). Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
        Networks. CVPR Workshops. arXiv:1910.01279. Official code:
        github.com/haofanwang/Score-CAM (softmax scores, constant channels skipped).
        Faster-Score-CAM (channels of largest variance only): github.com/tabayashi0117/Score-CAM.

    Args:
        model: an exposed model returning [logits, activations (B, h, w, C)].
        inputs: (B, H, W, C') input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of the inputs and activations.
        score: "probability" (softmax over the units; sigmoid for a one-unit model) or
            "logit": what a masked input is scored by.
        chunk_size: channels (masked copies of each input) per forward pass.
        max_channels: keep only this many channels, those of highest spatial variance.

    Returns:
        logits (B, K) and maps (B, h, w, K).
    """
    check_score(score)
    if chunk_size < 1 or (max_channels is not None and max_channels < 1):
        raise ExplainError(
            f"scorecam needs chunk_size >= 1 and max_channels >= 1 (or None), got "
            f"chunk_size={chunk_size} and max_channels={max_channels}."
        )
    inputs = tf.convert_to_tensor(inputs)
    logits, activations = exposed_outputs(model, inputs)
    activations = tf.cast(activations, inputs.dtype)  # float32 under a mixed dtype policy
    indices = inspection.select_units(logits, indices)
    logits = inspection.gather_units(logits, indices)
    if max_channels is not None and max_channels < activations.shape[-1]:
        variance = tf.math.reduce_variance(activations, axis=spatial_axis)  # (B, C)
        kept = tf.math.top_k(variance, k=max_channels).indices
        activations = tf.gather(activations, kept, axis=-1, batch_dims=1)
    shape = tf.shape(inputs)
    size = tf.stack([shape[a] for a in spatial_axis])

    def channel_chunk(start, count):
        chunk = tf.gather(activations, start + tf.range(count), axis=-1)  # (B, h, w, n)
        # Normalised after upsampling, as the official code does: each mask spans [0, 1].
        masks = filters.normalize(utils.resize(chunk, size, spatial_axis), spatial_axis)
        varies = tf.reduce_max(chunk, spatial_axis) > tf.reduce_min(chunk, spatial_axis)
        masks = tf.experimental.numpy.moveaxis(masks, -1, 0)[..., None]  # (n, B, H, W, 1)
        masked_logits, _ = exposed_outputs(model, chunking.merge_copies(masks * inputs))
        scores = inspection.gather_units(
            scores_of(masked_logits, score), chunking.tile_indices(indices, count)
        )
        scores = chunking.split_copies(scores, count)  # (n, B, K)
        scores *= tf.cast(tf.transpose(varies), scores.dtype)[..., None]  # constant: skipped
        return tf.einsum("b...n,nbk->b...k", chunk, tf.cast(scores, chunk.dtype))

    zeros = tf.zeros(
        tf.concat([tf.shape(activations)[:-1], [logits.shape[-1]]], axis=0), activations.dtype
    )
    maps = chunking.chunked_reduce(activations.shape[-1], chunk_size, channel_chunk, initial=zeros)
    return logits, maps


def xgradcam(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """XGrad-CAM: Σ_c α_c A_c with α_c = Σ_hw (A_c / Σ_hw A_c) ⊙ ∂f_u/∂A_c.

    The channel weights are the gradients averaged with the activation's own weights over
    positions, which the paper derives from two axioms, sensitivity and conservation (for a
    ReLU network the map then sums to nearly the score). A channel whose activation sums to
    0 gets weight 0 (the reference code adds 1e-7 to the sum instead).

    Usage:

        exposed = inspection.expose(model)
        logits, maps = xgradcam(exposed, images, units)    # maps (B, h, w, K)
        logits, maps = explain_lib.xgradcam(exposed, images, units)

    Reference:
        Fu, R., Hu, Q., Dong, X., Guo, Y., Gao, Y., Li, B. (2020). Axiom-based Grad-CAM:
        Towards Accurate Visualization and Explanation of CNNs. BMVC. arXiv:2008.02312.
        Official code: github.com/Fu0511/XGrad-CAM.

    Args:
        model: an exposed model returning [logits, activations (B, h, w, C)].
        inputs: (B, H, W, C') input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of the activations.

    Returns:
        logits (B, K) and maps (B, h, w, K).
    """

    def weighted(activations, grad):
        total = tf.reduce_sum(activations, axis=spatial_axis, keepdims=True)
        weights = tf.reduce_sum(tf.math.divide_no_nan(activations, total) * grad,
                                axis=spatial_axis, keepdims=True)
        return tf.reduce_sum(weights * activations, axis=-1)

    return _gradient_weighted(model, inputs, indices, weighted)


def hirescam(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """HiResCAM: Σ_c ∂f_u/∂A_c ⊙ A_c, the gradient times the activation per position.

    Grad-CAM's gradients without their spatial mean: the map is then, for a head that is
    linear in A, each position's exact share of the score (less the bias), and on a
    global-average-pooling + Dense head, where the gradient is the same at every position,
    it equals Grad-CAM (the paper's proof), and CAM / (h·w). Unlike LayerCAM, negative
    gradients are kept.

    Usage:

        exposed = inspection.expose(model)
        logits, maps = hirescam(exposed, images, units)    # maps (B, h, w, K)
        logits, maps = explain_lib.hirescam(exposed, images, units)

    Reference:
        Draelos, R. L., Carin, L. (2020). Use HiResCAM instead of Grad-CAM for faithful
        explanations of convolutional neural networks. arXiv:2011.08891.

    Args:
        model: an exposed model returning [logits, activations (B, h, w, C)].
        inputs: (B, H, W, C') input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of the activations.

    Returns:
        logits (B, K) and maps (B, h, w, K).
    """
    return _gradient_weighted(
        model, inputs, indices,
        lambda activations, grad: tf.reduce_sum(grad * activations, axis=-1))


def eigencam(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """EigenCAM: the activation projected on its first principal component, per sample.

    The activation (h·w positions × C channels), each channel centred over the positions,
    is projected on its first right singular vector: the direction of channel space along
    which the positions vary most. No gradient and no unit: the map is class-agnostic, the
    same for every explained unit. Centring follows pytorch-grad-cam (`get_2d_projection`;
    the paper projects the activation as it is). The sign of a singular vector is arbitrary
    (pytorch-grad-cam takes LAPACK's): here it is chosen so that the map correlates
    positively with the activation summed over channels, so that the conventional
    `positive_normalize` keeps where the network is active.

    Usage:

        exposed = inspection.expose(model)
        logits, maps = eigencam(exposed, images, units)    # maps (B, h, w, K)
        logits, maps = explain_lib.eigencam(exposed, images, units)

    Reference:
        Muhammad, M. B., Yeasin, M. (2020). Eigen-CAM: Class Activation Map using Principal
        Components. IJCNN. arXiv:2008.00299. Reference code: pytorch-grad-cam (EigenCAM).

    Args:
        model: an exposed model returning [logits, activations (B, h, w, C)].
        inputs: (B, H, W, C') input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of the activations.

    Returns:
        logits (B, K) and maps (B, h, w, K), the same map for each unit.
    """
    inputs = tf.convert_to_tensor(inputs)
    logits, activations = exposed_outputs(model, inputs)
    activations = tf.cast(activations, inputs.dtype)  # float32 under a mixed dtype policy
    logits = inspection.gather_units(logits, inspection.select_units(logits, indices))
    shape = tf.shape(activations)
    channels = activations.shape[-1]
    flat = tf.reshape(activations, tf.stack([shape[0], -1, channels]))  # (B, P, C)
    centred = flat - tf.reduce_mean(flat, axis=1, keepdims=True)
    _, _, v = tf.linalg.svd(centred, full_matrices=False)  # v: (B, C, min(P, C))
    projection = tf.einsum("bpc,bc->bp", centred, v[..., 0])
    total = tf.reduce_sum(flat, axis=-1)
    sign = tf.where(tf.reduce_sum(projection * (total - tf.reduce_mean(total, axis=1,
                                                                        keepdims=True)),
                                  axis=1, keepdims=True) < 0, -1.0, 1.0)
    maps = tf.reshape(projection * tf.cast(sign, projection.dtype), shape[:-1])[..., None]
    return logits, tf.repeat(maps, logits.shape[-1], axis=-1)


def ablationcam(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    chunk_size: int = 16,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Ablation-CAM: Σ_c w_c A_c with w_c = (f_u - f_u^c) / f_u, f_u^c the score with
    channel c of A set to 0.

    Each channel's weight is the relative drop of the explained score when that channel is
    ablated (zeroed at every position) where the network reads A, the rest of the network
    run as it is (`inspection.channel_scaled`). Forward passes only, no gradient:
    `chunk_size` channels per pass (`chunk_size × B` inputs), never all at once. A score of
    exactly 0 gives weights 0. On a global-average-pooling + Dense head,
    f_u - f_u^c = w_cu · mean_hw A_c. pytorch-grad-cam zeroes the channel too, but where
    the activation's minimum is not 0 (a transformer's tokens) it sets the channel to that
    minimum less 10⁷ instead; on a transformer here only the patch-token map is ablated,
    not the class token.

    Usage:

        exposed = inspection.expose(model)
        logits, maps = ablationcam(exposed, images, units, chunk_size=32)
        logits, maps = explain_lib.ablationcam(exposed, images, units)

    Reference:
        Desai, S., Ramaswamy, H. G. (2020). Ablation-CAM: Visual Explanations for Deep
        Convolutional Network via Gradient-free Localization. WACV.

    Args:
        model: an exposed model returning [logits, activations (B, h, w, C)], built by
            `inspection.expose` (or a plain model, exposed with its defaults).
        inputs: (B, H, W, C') input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of the activations.
        chunk_size: channels (ablated copies of each input) per forward pass.

    Returns:
        logits (B, K) and maps (B, h, w, K).
    """
    if chunk_size < 1:
        raise ExplainError(f"ablationcam needs chunk_size >= 1, got chunk_size={chunk_size}.")
    inputs = tf.convert_to_tensor(inputs)
    model = exposed_model(model)
    ablated = inspection.channel_scaled(model)
    logits, activations = exposed_outputs(model, inputs)
    activations = tf.cast(activations, inputs.dtype)  # float32 under a mixed dtype policy
    indices = inspection.select_units(logits, indices)
    logits = inspection.gather_units(logits, indices)
    channels = activations.shape[-1]
    batch = tf.shape(inputs)[0]

    def channel_chunk(start, count):
        chunk = tf.gather(activations, start + tf.range(count), axis=-1)  # (B, h, w, n)
        keep = 1.0 - tf.one_hot(start + tf.range(count), channels, dtype=tf.float32)  # (n, C)
        keep = chunking.merge_copies(tf.repeat(keep[:, None], batch, axis=1))  # (n·B, C)
        copies = chunking.merge_copies(tf.repeat(inputs[None], count, axis=0))
        scores = inspection.gather_units(
            keras.tree.flatten(ablated([copies, keep], training=False))[0],
            chunking.tile_indices(indices, count))
        scores = tf.cast(chunking.split_copies(scores, count), logits.dtype)  # (n, B, K)
        weights = tf.math.divide_no_nan(logits[None] - scores, logits[None])
        return tf.einsum("b...n,nbk->b...k", chunk, tf.cast(weights, chunk.dtype))

    zeros = tf.zeros(
        tf.concat([tf.shape(activations)[:-1], [logits.shape[-1]]], axis=0), activations.dtype
    )
    maps = chunking.chunked_reduce(channels, chunk_size, channel_chunk, initial=zeros)
    return logits, maps


METHODS = [cam, gradcam, gradcampp, scorecam, layercam, xgradcam, hirescam, eigencam,
           ablationcam]
"""The methods of this module, for introspection and the registry."""

__all__ = ["cam", "gradcam", "gradcampp", "scorecam", "layercam", "xgradcam", "hirescam",
           "eigencam", "ablationcam", "exposed_model", "exposed_outputs"]
