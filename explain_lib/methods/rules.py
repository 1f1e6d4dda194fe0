"""Modified gradient rules: the gradient of the explained unit with respect to the input, with
the backward pass through every ReLU changed.

- `guided_backprop`: at each ReLU, only the positive part of the incoming gradient passes,
  through the ReLU's own derivative (Springenberg et al., 2014);
- `deconvnet`: at each ReLU, the positive part of the incoming gradient passes, whatever
  the ReLU's input was (Zeiler & Fergus, 2014);
- `guided_gradcam`: guided backpropagation times the upsampled Grad-CAM map (Selvaraju et
  al., 2017).

The user's model is never changed, not even for a moment: the rules run on a *rerouted*
model (`inspection.rerouted`), which calls the same layers (the same variables: training the
model later is seen) and, in place of each ReLU, the ReLU followed by a gate that changes
only the backward pass. It is built once per model and rule, kept here in a weak cache, not
on the model. The ReLUs reached are `keras.layers.ReLU` layers (any `max_value`,
`threshold`, `negative_slope`: ReLU6 included), `Activation("relu")` and `Activation("relu6")`
layers, and the same activations fused in any layer (`Conv2D(..., activation="relu")`);
a model with none gets an `ExplainError`, since both rules would then be its plain gradient.

ReLU6 (MobileNetV2) and other clipped ReLUs: the guided rule keeps the activation's own
derivative (1 on (0, 6) for ReLU6) and zeroes the negative incoming gradient, which is what
the official Guided Grad-CAM code's `GuidedBackpropReLU` does for a ReLU (the module's own
backward pass, then `gradInput ⊙ (gradOutput > 0)`), carried over to the clipped ReLU as it
is. xplique's rule gates on the input being positive only (a saturated ReLU6 unit passes its
gradient there); Captum applies its rules to `nn.ReLU` modules only and leaves `nn.ReLU6`
with its plain gradient. The two agree with ours on a plain ReLU.
"""

import weakref
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import keras
import tensorflow as tf

from explain_lib import inspection, utils
from explain_lib.methods import cams
from explain_lib.methods.common import by_name, unit_maps
from explain_lib.methods.gradient import GRADIENT_FILTERS
from explain_lib.utils import SPATIAL_AXIS, ExplainError

RELU_ACTIVATIONS = ("relu", "relu6")
"""The activations (by their Keras name) the rules apply to, in Activation layers and fused
in other layers; every `keras.layers.ReLU` layer counts too."""


@tf.custom_gradient
def _positive_gradient(x):
    """The identity, whose backward pass keeps the positive part of the gradient only."""
    return tf.identity(x), tf.nn.relu


@tf.custom_gradient
def _deconvolved(x, y):
    """`y` (a ReLU of `x`), whose backward pass sends the positive part of the gradient to
    `x` as it is, and nothing to `y`: DeconvNet's backward ReLU, which ignores the input."""
    return tf.identity(y), lambda grad: (tf.nn.relu(grad), tf.zeros_like(y))


class PositiveGradient(keras.layers.Layer):
    """The identity; backward, only the positive part of the incoming gradient passes."""

    def call(self, inputs):
        return _positive_gradient(inputs)


class Deconvolved(keras.layers.Layer):
    """`[x, relu(x)]` -> `relu(x)`; backward, the positive part of the incoming gradient goes
    to `x` as it is (DeconvNet)."""

    def call(self, inputs):
        return _deconvolved(inputs[0], inputs[1])


def _activation_name(layer: keras.layers.Layer) -> Optional[str]:
    activation = getattr(layer, "activation", None)
    if activation is None or not callable(activation):
        return None
    try:
        return keras.activations.serialize(activation)
    except (ValueError, TypeError):  # a function Keras does not know
        return getattr(activation, "__name__", None)


def relu_layers(model: keras.Model) -> Dict[keras.layers.Layer, bool]:
    """The layers of `model` (nested models included) holding a ReLU, each mapped to
    whether the ReLU is fused in it (True: `Conv2D(..., activation="relu")`) or is the whole
    layer (False: `ReLU`, `Activation("relu")`)."""
    found = {}
    for layer in inspection.flatten_layers(model):
        if isinstance(layer, keras.Model):
            continue
        if isinstance(layer, keras.layers.ReLU):
            found[layer] = False
        elif _activation_name(layer) in RELU_ACTIVATIONS:
            found[layer] = not isinstance(layer, keras.layers.Activation)
    return found


def _guided(layer: keras.layers.Layer, fused: bool) -> Callable:
    # The ReLU's own backward pass applies its derivative; the gate after it keeps the
    # positive part of the gradient arriving there: a fused ReLU needs nothing else.
    return lambda x: PositiveGradient(dtype=layer.dtype_policy)(layer(x))


def _deconv(layer: keras.layers.Layer, fused: bool) -> Callable:
    if not fused:
        return lambda x: Deconvolved(dtype=layer.dtype_policy)([x, layer(x)])
    if not inspection.PreActivation.supports(layer):
        raise ExplainError(
            f"deconvnet needs the input of the ReLU fused in {layer.name!r} "
            f"({type(layer).__name__}), which explain_lib computes for Dense and convolution "
            "layers only: build the model with a separate ReLU layer after it, or explain it "
            "with guided_backprop.")

    def instead(x):
        before = inspection.PreActivation(layer)(x)
        return Deconvolved(dtype=layer.dtype_policy)([before, layer.activation(before)])
    return instead


RULES = {"guided": _guided, "deconvnet": _deconv}
"""Each rule: (a ReLU layer, whether fused) -> what the rerouted model calls in its place."""

_rerouted: "weakref.WeakKeyDictionary[keras.Model, Dict[str, keras.Model]]" = (
    weakref.WeakKeyDictionary()
)


def with_rule(model: keras.Model, rule: str) -> keras.Model:
    """`model` rerouted so that its ReLUs' backward pass follows `rule` ("guided" or
    "deconvnet"); its forward pass and outputs are `model`'s. Built once per model and
    rule, kept here, not on the model.

    Raises:
        ExplainError: for a model without a ReLU, or without a graph (subclassed).
    """
    cache = _rerouted.setdefault(model, {})
    if rule not in cache:
        if not getattr(model, "outputs", None) and not isinstance(model, keras.Sequential):
            raise ExplainError(
                f"{model.name!r} is a subclassed model ({type(model).__name__}): the gradient "
                "rules reroute the backward pass of its ReLUs, which only a Functional or "
                "Sequential model's graph lets explain_lib reach. Build it functionally, or "
                "explain it with gradients.")
        layers = relu_layers(model)
        if not layers:
            raise ExplainError(
                f"{model.name!r} has no ReLU (no ReLU layer, and no relu or relu6 activation, "
                "in a layer or fused in one): guided backpropagation and DeconvNet change the "
                "backward pass of ReLUs only, so they would be its plain gradient. Explain it "
                "with gradients.")
        make = RULES[rule]
        cache[rule] = inspection.rerouted(
            model, {layer: make(layer, fused) for layer, fused in layers.items()})
    return cache[rule]


def _rule_gradients(model, inputs, indices, rule, to_map):
    """Logits and, per unit, `to_map(the gradient under `rule` with respect to inputs)`."""
    inputs = tf.convert_to_tensor(inputs)
    rerouted = with_rule(model, rule)
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        tape.watch(inputs)
        logits = keras.tree.flatten(rerouted(inputs, training=False))[0]
        logits = inspection.gather_units(logits, inspection.select_units(logits, indices))
    maps = unit_maps(tape, logits, inputs, to_map)
    del tape
    return logits, maps


def guided_backprop(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    gradient_filter: Union[str, Callable] = "abs",
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Guided backpropagation: ψ(the gradient of f_u where every ReLU's backward pass keeps
    only the positive gradients of positive inputs), averaged over channels.

    At a ReLU y = max(x, 0) the gradient dL/dx = dL/dy ⊙ 1[x > 0] becomes
    dL/dy ⊙ 1[x > 0] ⊙ 1[dL/dy > 0]: the plain gradient's mask from the forward pass and
    DeconvNet's from the backward pass, both. On a model whose ReLUs all pass (inputs
    positive) and receive positive gradients, it is the plain gradient; the maps are then
    `gradients`' with the same `gradient_filter`. See the module docstring for the ReLUs
    reached and ReLU6.

    Usage:

        logits, maps = guided_backprop(model, images, units)         # maps (B, H, W, K)
        logits, maps = explain_lib.guided_backprop(model, images, units)

    Reference:
        Springenberg, J. T., Dosovitskiy, A., Brox, T., Riedmiller, M. (2014). Striving for
        Simplicity: The All Convolutional Net. ICLR 2015 workshop. arXiv:1412.6806.

    Args:
        model: the model; its (first) output is the logits (B, U). It is not changed.
        inputs: (B, H, W, C) input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of `inputs`.
        gradient_filter: ψ, applied before the channel mean: a name in
            `gradient.GRADIENT_FILTERS` ("abs", "square", "positive", "identity") or a
            function.

    Returns:
        logits (B, K) and maps (B, H, W, K).

    Raises:
        ExplainError: for a model without a ReLU.
    """
    psi = by_name(gradient_filter, GRADIENT_FILTERS, "gradient_filter")
    return _rule_gradients(model, inputs, indices, "guided",
                           lambda grad: tf.reduce_mean(psi(grad), -1))


def deconvnet(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    gradient_filter: Union[str, Callable] = "abs",
) -> Tuple[tf.Tensor, tf.Tensor]:
    """DeconvNet: ψ(the gradient of f_u where every ReLU's backward pass is a ReLU of the
    incoming gradient), averaged over channels.

    At a ReLU the gradient becomes max(dL/dy, 0), whatever the ReLU's input was: the
    deconvolutional network reconstructs the input by passing the signal back through
    rectifications (and the transposed filters, which the gradient of a convolution is).
    Max pooling's backward pass routes to the arg-max, the paper's "switches".

    Usage:

        logits, maps = deconvnet(model, images, units)               # maps (B, H, W, K)
        logits, maps = explain_lib.deconvnet(model, images, units)

    Reference:
        Zeiler, M. D., Fergus, R. (2014). Visualizing and Understanding Convolutional
        Networks. ECCV. arXiv:1311.2901.

    Args:
        model: the model; its (first) output is the logits (B, U). It is not changed.
        inputs: (B, H, W, C) input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of `inputs`.
        gradient_filter: ψ, applied before the channel mean (see `guided_backprop`).

    Returns:
        logits (B, K) and maps (B, H, W, K).

    Raises:
        ExplainError: for a model without a ReLU, or with a ReLU fused in a layer that is not
            a Dense or convolution (its input cannot be reached).
    """
    psi = by_name(gradient_filter, GRADIENT_FILTERS, "gradient_filter")
    return _rule_gradients(model, inputs, indices, "deconvnet",
                           lambda grad: tf.reduce_mean(psi(grad), -1))


def guided_gradcam(
    model: keras.Model,
    inputs: tf.Tensor,
    indices: Optional[tf.Tensor] = None,
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    gradient_filter: Union[str, Callable] = "abs",
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Guided Grad-CAM: ψ(guided backpropagation ⊙ ReLU(Grad-CAM) upsampled to the input),
    averaged over channels.

    The guided gradient (B, H, W, C) is multiplied, channel by channel, by the Grad-CAM map
    of the exposed activation, rectified and bilinearly upsampled to the input's size, as
    the official code does (`gb_viz:cmul(gcam:expandAs(gb_viz))`, the map from
    `utils.grad_cam`, rectified, then `image.scale`); then ψ and the channel mean as in
    `guided_backprop`. The official code sums the gradients over positions where Grad-CAM
    here averages them: a factor h·w, the same for every map of a layer. Captum's
    `GuidedGradCam` upsamples by nearest neighbours and does not rectify.

    Usage:

        exposed = inspection.expose(model)
        logits, maps = guided_gradcam(exposed, images, units)       # maps (B, H, W, K)
        logits, maps = explain_lib.guided_gradcam(exposed, images, units)

    Reference:
        Selvaraju, R. R., Cogswell, M., Das, A., Vedantam, R., Parikh, D., Batra, D. (2017).
        Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization.
        ICCV. arXiv:1610.02391. Official code: github.com/ramprs/grad-cam.

    Args:
        model: an exposed model returning [logits, activations (B, h, w, C)] (or a plain
            model, exposed with `inspection.expose`'s defaults). It is not changed.
        inputs: (B, H, W, C') input signals.
        indices: (B, K) units to explain, an `inspection.TopUnits` selector, or None for all
            U units.
        spatial_axis: the spatial axes of the inputs and activations.
        gradient_filter: ψ, applied to the product before the channel mean (see
            `guided_backprop`).

    Returns:
        logits (B, K) and maps (B, H, W, K).
    """
    psi = by_name(gradient_filter, GRADIENT_FILTERS, "gradient_filter")
    inputs = tf.convert_to_tensor(inputs)
    exposed = cams.exposed_model(model)
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        tape.watch(inputs)
        # The model's logits, through the same layers.
        logits = keras.tree.flatten(with_rule(exposed, "guided")(inputs, training=False))[0]
        indices = inspection.select_units(logits, indices)
        logits = inspection.gather_units(logits, indices)
    guided = unit_maps(tape, logits, inputs, lambda grad: grad)  # (B, H, W, C, K)
    del tape
    _, cam = cams.gradcam(exposed, inputs, indices, spatial_axis=spatial_axis)
    shape = tf.shape(inputs)
    cam = utils.resize(tf.nn.relu(cam), tf.stack([shape[a] for a in spatial_axis]),
                       spatial_axis)  # (B, H, W, K)
    maps = tf.reduce_mean(psi(guided * tf.cast(cam[..., None, :], guided.dtype)), axis=-2)
    return logits, maps


METHODS = [guided_backprop, deconvnet, guided_gradcam]
"""The methods of this module, for introspection and the registry."""

__all__ = ["deconvnet", "guided_backprop", "guided_gradcam", "relu_layers", "with_rule",
           "RELU_ACTIVATIONS"]
