"""Inspection: find a Keras model's inner layers and build models that expose them.

CAM methods need a model that returns the logits *and* an inner activation; Full-Gradient
needs every biased layer's output. `expose` builds such a model from any Functional or
Sequential Keras 3 model, including the transfer-learning shape where the backbone is a
nested model (`Sequential([base, GlobalAveragePooling2D(), Dense(n)])`): the graph is
re-traced with the same layer objects (weights are shared, nothing is copied), and nested
models that hold a requested layer are re-traced in turn so their inner tensors surface in
the outer graph. The user's model is never changed, called or compiled: a compiled model is
re-traced through an uncompiled functional view of its graph.

A classifier's scores are its output before a final softmax or sigmoid (`find_head`): an
`Activation` or `Softmax` layer ending the model, or the activation fused in its last
`Dense` or convolution, whose output before the activation is computed from the layer's own
variables (`PreActivation`). `scores_model` is the model returning those scores, what every
method explains by default (keras.applications' heads end in a softmax); `expose` takes them
as its default logits.

Usage:

    exposed = inspection.expose(model)              # [logits, input of the last pooling]
    logits, activations = exposed(images)
    exposed = inspection.expose(model, ("resnet50v2", "post_relu"), "predictions")
    scores = inspection.scores_model(model)         # logits before a final softmax
"""

import abc
import inspect
import math
import weakref
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Type, Union

import keras
import numpy as np
import tensorflow as tf

from explain_lib.utils import SPATIAL_AXIS, ExplainError, tolist  # noqa: F401  (SPATIAL_AXIS re-exported)

KERNEL_AXIS = -1

POOLING_LAYERS = (
    keras.layers.Flatten,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)

Endpoint = Union[str, int, Tuple[str, ...], keras.layers.Layer, Dict[str, Any]]
"""How an endpoint is named: a layer name, a path of names into nested models
(`("resnet50v2", "post_relu")`), an index into `model.layers`, the layer itself, a dict
`{"name" | "layer": ..., "link": "output" | "input" | "pre_activation", "node": "last" |
int}` where `node` picks one call of a layer that is called several times and
"pre_activation" is a Dense's or convolution's output before its fused activation, or
`MODEL_OUTPUT`, the model's own first output."""

LINKS = ("output", "input", "pre_activation", "last_block_input", "attentions")
"""How an endpoint takes a tensor of its layer: its output, its input, a Dense's or
convolution's output before its activation, and of a `block_encoder`, the tokens entering
its last block or every block's attention probabilities (B, blocks, heads, T, T)."""


def flatten_layers(model: keras.Model) -> List[keras.layers.Layer]:
    """Every layer of `model` in graph order, descending into nested models (each nested
    model is listed just before its own layers)."""
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if isinstance(layer, keras.Model):
            layers.extend(flatten_layers(layer))
    return layers


def _describe(model: keras.Model) -> str:
    return ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in flatten_layers(model))


def get_nested_layer(model: keras.Model, name: Union[str, Sequence[str]]) -> keras.layers.Layer:
    """The layer at `name`: a layer name, or a path of names through nested models. A
    single name that is not one of the model's own layers is looked for in its nested
    models (an exposed model nests the original one), and must be found there once.

    Usage:

        model = keras.Sequential([keras.applications.ResNet50V2(include_top=False,
                                                                 weights=None, pooling="avg"),
                                  keras.layers.Dense(10, name="predictions")])
        get_nested_layer(model, ("resnet50v2", "post_relu"))
        get_nested_layer(model, "post_relu")          # the same layer, found inside
    """
    if isinstance(name, str) and name not in [sub.name for sub in model.layers]:
        found = [layer for layer in flatten_layers(model) if layer.name == name]
        if len(found) == 1:
            return found[0]
    layer = model
    for part in tolist(name):
        names = [sub.name for sub in getattr(layer, "layers", [])]
        if part not in names:
            raise ExplainError(
                f"No layer named {part!r} in {layer.name!r} (while resolving {name!r}). "
                f"Its layers are: {', '.join(names) or 'none'}. Pass a name from that list, "
                "or a tuple of names to reach into a nested model."
            )
        layer = layer.get_layer(part)
    return layer


def find_layer_with(
    model: keras.Model,
    name: Optional[Union[str, Sequence[str]]] = None,
    properties: Optional[Sequence[str]] = None,
    klass: Optional[Tuple[Type[keras.layers.Layer], ...]] = None,
    search_reversed: bool = True,
) -> keras.layers.Layer:
    """The last (or first) layer, nested models included, that has every attribute in
    `properties` and is an instance of `klass`; or simply the layer called `name`."""
    if name is None and properties is None and klass is None:
        raise ExplainError("find_layer_with needs a name, properties or klass to search for.")
    if name is not None:
        return get_nested_layer(model, name)
    layers = flatten_layers(model)
    for layer in reversed(layers) if search_reversed else layers:
        if klass and not isinstance(layer, klass):
            continue
        if properties and not all(getattr(layer, p, None) is not None for p in properties):
            continue
        return layer
    wanted = " and ".join(
        part
        for part in (
            properties and f"attributes {list(properties)}",
            klass and f"type {' | '.join(k.__name__ for k in klass)}",
        )
        if part
    )
    raise ExplainError(
        f"No layer with {wanted} in model {model.name!r}. Its layers are: {_describe(model)}. "
        "Name the layer explicitly (for instance expose(model, arguments='layer_name'))."
    )


def get_logits_layer(model: keras.Model, name: Optional[str] = None) -> keras.layers.Layer:
    """The logits layer: the last layer with a kernel (a Dense or Conv head), or `name`."""
    return find_layer_with(model, name, properties=["kernel"])


def get_global_pooling_layer(model: keras.Model, name: Optional[str] = None) -> keras.layers.Layer:
    """The last global pooling (or Flatten) layer, or `name`: its input is the spatial
    activation CAM methods weigh. A Flatten of a 1x1 map pools nothing (MobileNetV3's, of its
    logits after its global pooling) and is passed over."""
    if name is not None:
        return get_nested_layer(model, name)
    for layer in reversed(flatten_layers(model)):
        if isinstance(layer, POOLING_LAYERS) and not (
                isinstance(layer, keras.layers.Flatten) and _extent(layer, "input") == 1):
            return layer
    return find_layer_with(model, klass=POOLING_LAYERS)


class _ModelOutput:
    """The endpoint of a model's own first output (`MODEL_OUTPUT`)."""

    def __repr__(self) -> str:
        return "inspection.MODEL_OUTPUT"


MODEL_OUTPUT = _ModelOutput()
"""An endpoint: the model's (first) output itself."""

FINAL_ACTIVATIONS = ("softmax", "sigmoid")
"""Activations that turn a classifier's scores into probabilities, and end its model."""

SCORES = ("logits", "output")
"""What a method explains (`scores_model`): "logits", the scores before a final softmax or
sigmoid (the default), or "output", the model's output as it is."""


class Head(NamedTuple):
    """Where a model's scores are (`find_head`): `endpoint`, the tensor before its final
    softmax or sigmoid (an `Endpoint`, or `MODEL_OUTPUT` when the output is the scores),
    and `activation`, that activation ("softmax", "sigmoid", or None). `unreachable` says
    why a final softmax or sigmoid was found whose scores cannot be reached (the output is
    then explained as it is)."""

    endpoint: Any
    activation: Optional[str]
    unreachable: Optional[str] = None


def _activation_name(layer) -> Optional[str]:
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None or not callable(activation):
        return None
    try:
        return keras.activations.serialize(activation)
    except (ValueError, TypeError):  # a function Keras does not know
        return getattr(activation, "__name__", None)


def _producer(model: keras.Model, tensor):
    """The operation of `model` whose output is `tensor`: a layer, or an operation that is
    not one (`x[:, 0]`, `keras.ops.softmax`); None without a graph."""
    if isinstance(model, keras.Sequential):
        return model.layers[-1] if model.layers else None
    operations = getattr(model, "operations", None) or model.layers
    for operation in reversed(operations):
        try:
            output = operation.output
        except (AttributeError, ValueError, RuntimeError):  # called several times, or never
            continue
        if any(t is tensor for t in keras.tree.flatten(output)):
            return operation
    # A nested model's `output` is its own graph's, not its call's in this one: a model
    # called last is taken to make the output.
    last = operations[-1] if operations else None
    return last if isinstance(last, keras.Model) else None


def find_head(model: keras.Model) -> Head:
    """Where `model`'s scores are: before the softmax or sigmoid that ends it, found through
    its graph (a nested model ending the outer one is looked into): an `Activation` or
    `Softmax` layer (the scores are its input; MobileNetV3's head), or a `Dense` or
    convolution with the activation fused (the scores are its output before the activation:
    keras.applications' `classifier_activation`, KerasHub's classifier `activation`).
    Otherwise the model's output is its scores (`Head(MODEL_OUTPUT, None)`): a linear head,
    or a model without a graph (subclassed); a final softmax or sigmoid that is an operation
    outside any layer (`keras.ops.softmax`), or fused in another kind of layer, is named in
    `unreachable`.

    Usage:

        find_head(keras.applications.ResNet50V2(weights=None))
        # Head(endpoint={'layer': <Dense name=predictions>, 'link': 'pre_activation'},
        #      activation='softmax')
    """
    outputs = keras.tree.flatten(getattr(model, "outputs", None) or [])
    layer = _producer(model, outputs[0]) if outputs else None
    if isinstance(layer, keras.Model):
        # A nested model ending this one, with one output, ends in its head.
        single = len(keras.tree.flatten(layer.outputs or [])) == 1
        inner = find_head(layer) if single else Head(MODEL_OUTPUT, None)
        return inner if inner.activation else Head(MODEL_OUTPUT, None)
    if layer is not None and not isinstance(layer, keras.layers.Layer):
        name = type(layer).__name__.lower()  # an operation: keras.ops.softmax's is Softmax
        return Head(MODEL_OUTPUT, None, None if name not in FINAL_ACTIVATIONS else (
            f"{model.name!r} ends in keras.ops.{name}, an operation outside any layer, whose "
            "input cannot be reached through the model's layers"))
    name = _activation_name(layer) if layer is not None else None
    if name not in FINAL_ACTIVATIONS:
        return Head(MODEL_OUTPUT, None)
    if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)):
        return Head({"layer": layer, "link": "input"}, name)
    if not PreActivation.supports(layer):
        return Head(MODEL_OUTPUT, None, (
            f"{model.name!r} ends in {layer.name!r} ({type(layer).__name__}) with a fused "
            f"{name}, whose output before it explain_lib does not compute"))
    return Head({"layer": layer, "link": "pre_activation"}, name)


class PreActivation(keras.layers.Layer):
    """The output of `layer` (a `Dense`, or a `Conv1D`, `Conv2D` or `Conv3D`) before its
    fused activation, computed from the layer's own variables (shared, not copied): the
    scores a softmax head turns into probabilities. Under a mixed dtype policy it computes
    in the layer's compute dtype, as the layer does."""

    activation = None  # (what the methods that weigh a layer's activation look for)

    def __init__(self, layer: keras.layers.Layer, **kwargs):
        super().__init__(name=f"{layer.name}_scores", dtype=layer.dtype_policy, **kwargs)
        self.head = layer

    @property
    def kernel(self):
        """The head's kernel: CAM weighs by it (`get_logits_layer`)."""
        return self.head.kernel

    @property
    def bias(self):
        """The head's bias: Full-Gradient counts it (`layers_with_biases`)."""
        return self.head.bias

    @staticmethod
    def supports(layer: keras.layers.Layer) -> bool:
        """Whether the scores before `layer`'s activation can be computed: a plain
        (unquantized) Dense or convolution."""
        kinds = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                 keras.layers.Conv3D)
        return (type(layer) in kinds and not getattr(layer, "quantization_mode", None)
                and getattr(layer, "groups", 1) == 1)

    def call(self, inputs):
        layer = self.head
        if isinstance(layer, keras.layers.Dense):
            outputs = keras.ops.matmul(inputs, layer.kernel)
        else:
            outputs = keras.ops.conv(inputs, layer.kernel, strides=layer.strides,
                                     padding=layer.padding, data_format=layer.data_format,
                                     dilation_rate=layer.dilation_rate)
        if layer.bias is None:
            return outputs
        bias = layer.bias
        if getattr(layer, "data_format", "channels_last") == "channels_first":
            bias = keras.ops.reshape(bias, (1, -1) + (1,) * (len(outputs.shape) - 2))
        return keras.ops.add(outputs, bias)


def scores_model(model: keras.Model, scores: str = "logits") -> keras.Model:
    """A model returning `model`'s scores (`scores="logits"`: before a final softmax or
    sigmoid, see `find_head`), built from the same layers; `model` itself when its output
    is its scores, or with `scores="output"`.

    Usage:

        scores = scores_model(keras.applications.MobileNetV3Small(weights=None))
        scores(images)            # the logits the softmax turns into the model's output
    """
    if scores not in SCORES:
        raise ExplainError(f"scores must be one of {', '.join(SCORES)}, not {scores!r}.")
    head = find_head(model) if scores == "logits" else Head(MODEL_OUTPUT, None)
    if head.endpoint is MODEL_OUTPUT:
        return model
    # The head's layer is not called in the new graph: in its place, its input (an
    # Activation or Softmax layer) or its output before the activation (`PreActivation`).
    layer = head.endpoint["layer"]
    if head.endpoint["link"] == "input":
        def instead(tensor):
            return tensor
    else:
        def instead(tensor):
            return PreActivation(layer)(tensor)
    inputs = _symbolic_inputs(model)
    extended = _with_endpoints(model, [], replaced={layer: instead})
    return keras.Model(inputs, keras.tree.flatten(extended(inputs))[0],
                       name=f"{model.name}_scores")


def rerouted(model: keras.Model, replaced: Dict[keras.layers.Layer, Any]) -> keras.Model:
    """A model computing `model`'s outputs (all of them, flattened) from the same layers,
    nested models included, but for each layer in `replaced`, called as
    `replaced[layer](its input)` instead. The weights are shared, nothing is copied, and
    `model` is not changed: the gradient rules (`methods.rules`) reroute the backward pass
    of its ReLUs this way.

    Usage:

        relu = model.get_layer("relu")
        rerouted(model, {relu: lambda x: keras.ops.relu(x) * 2.0})
    """
    inputs = _symbolic_inputs(model)
    extended = _with_endpoints(model, [], replaced=replaced)
    return keras.Model(inputs, keras.tree.flatten(extended(inputs)),
                       name=f"{model.name}_rerouted")


def _resolve(model: keras.Model, endpoint: Endpoint) -> Tuple[keras.layers.Layer, str, Any]:
    """An endpoint description as (layer, link, node); `MODEL_OUTPUT` stays itself."""
    if endpoint is MODEL_OUTPUT:
        return endpoint
    if isinstance(endpoint, int):
        endpoint = {"layer": model.layers[endpoint]}
    elif isinstance(endpoint, keras.layers.Layer):
        endpoint = {"layer": endpoint}
    elif isinstance(endpoint, (str, tuple)):
        endpoint = {"name": endpoint}
    if not isinstance(endpoint, dict) or not ({"name", "layer"} & endpoint.keys()):
        raise ExplainError(
            f"Cannot read endpoint {endpoint!r}: give a layer name, a tuple of names, a layer "
            "index, a Layer, or a dict with 'name' or 'layer' (and optional 'link', 'node')."
        )
    layer = endpoint.get("layer") or get_nested_layer(model, endpoint["name"])
    link = endpoint.get("link", "output")
    if link not in LINKS:
        raise ExplainError(f"Endpoint link must be one of {', '.join(LINKS)}, not {link!r}.")
    if link == "pre_activation" and not PreActivation.supports(layer):
        raise ExplainError(f"Endpoint link 'pre_activation' needs a Dense or convolution "
                         f"layer, not {layer.name!r} ({type(layer).__name__}).")
    if link in ("last_block_input", "attentions") and not block_encoder(layer):
        raise ExplainError(f"Endpoint link {link!r} needs a transformer encoder holding its "
                         f"blocks (inspection.block_encoder), not {layer.name!r} "
                         f"({type(layer).__name__}).")
    return layer, link, endpoint.get("node", "last")


def _contains(container: keras.layers.Layer, layer: keras.layers.Layer) -> bool:
    return isinstance(container, keras.Model) and any(
        sub is layer for sub in flatten_layers(container)
    )


def _symbolic_inputs(model: keras.Model):
    """New `keras.Input`s shaped like the model's: one tensor, or a list for several."""
    if not isinstance(model, keras.Sequential) and not getattr(model, "outputs", None):
        raise ExplainError(
            f"Cannot expose the inner layers of {model.name!r} ({type(model).__name__}): only "
            "Functional and Sequential models have a graph to re-trace. Build the model "
            "functionally, or give the method a model that already returns [logits, activations]."
        )
    if not getattr(model, "inputs", None):
        raise ExplainError(
            f"Model {model.name!r} has no symbolic inputs: build it first (give its first "
            "layer an input shape, or call model.build(input_shape))."
        )
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype) for t in model.inputs]
    return inputs[0] if len(inputs) == 1 else inputs


class ChannelOnes(keras.layers.Layer):
    """Ones (B, channels) for a tensor of batch B: the channel scales `channel_scaled`
    replaces by its `keep` input."""

    def __init__(self, channels: int, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.channels = channels

    def call(self, tensor):
        return keras.ops.ones((keras.ops.shape(tensor)[0], self.channels), "float32")

    def compute_output_spec(self, tensor):
        return keras.KerasTensor((tensor.shape[0], self.channels), "float32")


def _with_endpoints(model: keras.Model, targets: List[Tuple],
                    grids: Optional[Dict[Tuple, Tuple]] = None,
                    replaced: Optional[Dict[keras.layers.Layer, Any]] = None,
                    scaled: Optional[Tuple[Tuple, Any]] = None) -> keras.Model:
    """A Functional model computing `model`'s outputs followed by each target's tensor.

    The layers are re-called (not cloned) on new inputs, but a layer in `replaced`, whose
    call is `replaced[layer](its input)` instead; a nested model holding a target (or a
    replaced layer) is replaced, for this call only, by its own `_with_endpoints` version.
    A target in `grids`
    (target -> (grid, prefix tokens, image size), see `token_grid`) whose tensor is tokens
    comes back as a map of its patch tokens, spliced into the graph (the tokens downstream
    are rebuilt from it), so that what depends on the tokens depends on the map: a gradient
    taken with respect to it is the tokens' own.

    `scaled`, (a target, its channel count C), multiplies that target's tensor (its map,
    for a target on a grid) channel by channel by a (B, C) tensor `keep` where it is
    captured, and the graph goes on with the product; the returned model then takes
    `[inputs, keep]` (`channel_scaled`). (`keep` is made in the graph as ones computed from
    the model's input, so that every graph built on the way is connected, and then made an
    input of the returned model, which replaces it by the value given.)
    """
    grids, replaced = grids or {}, replaced or {}
    calls = {target: [] for target in targets}
    keeps, first_input = [], []

    def keep_for(tensor):
        keeps.append(ChannelOnes(scaled[1])(first_input[0]))
        if len(keeps) > 1:
            raise ExplainError(f"Cannot scale the channels of {scaled[0][0].name!r}: it is "
                               "called more than once in the model.")
        return keeps[-1]

    def scale(target, tensor):
        if not scaled or target != scaled[0]:
            return tensor
        shape = (-1,) + (1,) * (len(tensor.shape) - 2) + (tensor.shape[-1],)
        keep = keep_for(tensor)
        return tensor * keras.ops.cast(keras.ops.reshape(keep, shape), tensor.dtype)

    def capture(target, tensor):
        """Record `tensor` for `target`; returns what the graph goes on with."""
        if target not in grids or len(tensor.shape) != 3:
            tensor = scale(target, tensor)
            calls[target].append(tensor)
            return tensor
        prefix, (rows, cols) = token_grid(tensor.shape, grids[target][2], *grids[target][:2])
        channels = tensor.shape[-1]
        grid = scale(target, keras.ops.reshape(tensor[:, prefix:], (-1, rows, cols, channels)))
        calls[target].append(grid)
        patches = keras.ops.reshape(grid, (-1, rows * cols, channels))
        return keras.ops.concatenate([tensor[:, :prefix], patches], axis=1) if prefix else patches

    def call(layer, *args, **kwargs):
        mine = [t for t in targets if t[0] is layer]
        for target in (t for t in mine if t[1] == "input"):
            args = (capture(target, args[0]), *args[1:])
        inner = [t for t in targets if t[0] is not layer and _contains(layer, t[0])]
        inner_replaced = {other: instead for other, instead in replaced.items()
                          if other is not layer and _contains(layer, other)}
        encoded = [t for t in mine if t[1] in ("last_block_input", "attentions")]
        if inner or inner_replaced:
            inner_scaled = scaled if scaled and scaled[0] in inner else None
            extended = _with_endpoints(layer, inner, {t: grids[t] for t in inner if t in grids},
                                       inner_replaced, inner_scaled)
            if inner_scaled:
                flat = keras.tree.flatten(extended([*keras.tree.flatten(args[0]),
                                                    keep_for(args[0])]))
            else:
                flat = keras.tree.flatten(extended(*args, **kwargs))
            count = len(keras.tree.flatten(layer.output))
            for target, tensor in zip(inner, flat[count:]):
                calls[target].append(tensor)
            result = keras.tree.pack_sequence_as(layer.output, flat[:count])
        elif encoded:
            gridded = [t for t in encoded if t[1] == "last_block_input" and t in grids]
            grid = (token_grid(args[0].shape, grids[gridded[0]][2], *grids[gridded[0]][:2])
                    if gridded and len(args[0].shape) == 3 else None)
            encoder = UnrolledEncoder(layer, attention=any(t[1] == "attentions"
                                                           for t in encoded), grid=grid)
            if scaled and scaled[0] in encoded:
                unrolled = encoder(args[0], keep_for(args[0]))
            else:
                unrolled = encoder(args[0])
            for target in encoded:
                calls[target].append(unrolled[1 if target[1] == "last_block_input" else 2])
            # The encoder's own outputs besides its tokens (DeiT's optional states) are
            # unused by the graph: the tokens stand in for them.
            count = len(keras.tree.flatten(layer.output))
            result = keras.tree.pack_sequence_as(layer.output, [unrolled[0]] * count)
        elif any(other is layer for other in replaced):
            result = next(instead for other, instead in replaced.items()
                          if other is layer)(args[0])
        else:
            result = layer(*args, **kwargs)
        for target in mine:
            if target[1] == "pre_activation":
                calls[target].append(PreActivation(layer)(args[0]))
            elif target[1] == "output":
                result = capture(target, result)
        return result

    if scaled and scaled[0][1] in ("pre_activation", "attentions"):
        raise ExplainError(f"Cannot scale the channels of a {scaled[0][1]!r} endpoint: it is a "
                           "side output, not a tensor the model's output is computed from.")

    if isinstance(model, keras.Sequential):
        inputs = outputs = _symbolic_inputs(model)
        first_input.append(keras.tree.flatten(inputs)[0])
        for layer in model.layers:
            outputs = call(layer, outputs)
    else:
        given = _symbolic_inputs(model)  # (also checks that the model has a graph)
        # The keep scales of `scaled` are computed from the model's input (a Functional
        # model refuses an input computed from an inner tensor): the clone is built on
        # inputs made here.
        first_input.append(keras.tree.flatten(given)[0])
        # Re-traced through an uncompiled view of its graph: cloning a compiled model would
        # copy its compile config, whose optimizer needs eager execution (inside a step).
        view = keras.Model(model.inputs, model.outputs, name=model.name)
        clone = keras.models.clone_model(
            view, clone_function=lambda layer: layer, call_function=call,
            **({"input_tensors": keras.tree.pack_sequence_as(
                view.input, keras.tree.flatten(given))} if scaled else {}))
        inputs, outputs = clone.inputs, clone.outputs

    captured = []
    for (layer, link, node), tensors in calls.items():
        if not tensors:
            raise ExplainError(
                f"Layer {layer.name!r} is not called in the graph of {model.name!r}.")
        if node != "last" and not -len(tensors) <= node < len(tensors):
            raise ExplainError(
                f"Layer {layer.name!r} is called {len(tensors)} time(s); "
                f"node={node} does not exist."
            )
        captured.append(tensors[-1 if node == "last" else node])
    if scaled:
        inputs = [*keras.tree.flatten(inputs), keeps[-1]]
        # A tensor that is both an output and a captured one is refused by a Functional
        # model with an input computed in its graph (`keep`): the captured ones are copies.
        captured = [keras.layers.Identity()(tensor) for tensor in captured]
    return keras.Model(inputs, keras.tree.flatten(outputs) + captured, name=f"{model.name}_exposed")


def _endpoint_list(endpoints) -> list:
    # A tuple is one path into nested models, not several endpoints.
    return [endpoints] if isinstance(endpoints, tuple) else tolist(endpoints)


def endpoints(
    model: keras.Model, endpoints: Sequence[Endpoint], inputs: Optional[Any] = None,
    on_grid: Sequence[Endpoint] = (), grid: Union[str, Sequence[int]] = "auto",
    prefix_tokens: Optional[int] = None,
) -> List[keras.KerasTensor]:
    """The symbolic tensors named by `endpoints`, computed from `inputs`; those also in
    `on_grid` that are tokens (B, prefix + h·w, C) come back as maps of their patch tokens
    (B, h, w, C) (`token_grid` with `grid` and `prefix_tokens`), spliced into the graph.

    `inputs` are symbolic tensors of the caller's graph (default: new `keras.Input`s shaped
    like the model's, reachable as `keras.Model(...).inputs` of what you build from them).

    Usage:

        inputs = keras.Input((224, 224, 3))
        logits, features = inspection.endpoints(model, ["predictions", "post_relu"], inputs)
        exposed = keras.Model(inputs, [logits, features])
    """
    return _endpoints(model, endpoints, inputs, on_grid, grid, prefix_tokens)


def _endpoints(model, endpoints, inputs, on_grid, grid, prefix_tokens, keep=None):
    """`endpoints`; with `keep`, a symbolic (B, C) tensor, the last endpoint's channels are
    multiplied by it where the graph reads them (`_with_endpoints`' `scaled`)."""
    targets = [_resolve(model, e) for e in _endpoint_list(endpoints)]
    # An endpoint named twice is traced once; the model's output is the extended model's.
    unique = list(dict.fromkeys(t for t in targets if t is not MODEL_OUTPUT))
    image_size = tuple(keras.tree.flatten(model.inputs)[0].shape[1:3]) if getattr(
        model, "inputs", None) else (None, None)
    grids = {_resolve(model, e): (grid, prefix_tokens, image_size) for e in on_grid}
    if keep is not None and targets[-1] is MODEL_OUTPUT:
        raise ExplainError("Cannot scale the channels of the model's own output.")
    extended = _with_endpoints(model, unique, grids,
                               scaled=(targets[-1], keep.shape[-1]) if keep is not None else None)
    if inputs is None:
        inputs = _symbolic_inputs(model)
    flat = keras.tree.flatten(extended(
        inputs if keep is None else [*keras.tree.flatten(inputs), keep]))
    tensors = dict(zip(unique, flat[len(flat) - len(unique):]))
    tensors[MODEL_OUTPUT] = flat[0]
    return [tensors[target] for target in targets]


def expose(
    model: keras.Model,
    arguments: Optional[Union[Endpoint, List[Endpoint]]] = None,
    outputs: Optional[Union[Endpoint, List[Endpoint]]] = None,
    scores: str = "logits",
    grid: Union[str, Sequence[int], None] = "auto",
    prefix_tokens: Optional[int] = None,
) -> keras.Model:
    """A model returning `[*outputs, *arguments]`: the logits, then the inner signals the
    maps are computed against.

    Args:
        model: a Functional or Sequential Keras model (nested backbones included).
        arguments: the inner signal(s). Default: the activation CAM methods weigh
            (`default_activation`: the input of the last global pooling layer; a
            transformer's tokens before its last block).
        outputs: the logits. Default: the model's scores, its own output before a final
            softmax or sigmoid (`find_head`; with `scores="output"`, the output as it is).
        scores: "logits" or "output", for the default `outputs` (see `SCORES`).
        grid: how token arguments (B, prefix + h·w, C) of an image model come back: "auto"
            puts the patch tokens back on their (h, w) grid, dropping the prefix tokens
            (class, distillation, registers), when the model's input size makes the grid
            unambiguous (`token_grid`); an (h, w) says the grid; None keeps tokens as they are.
        prefix_tokens: the number of tokens before the patch tokens, when the grid needs it.

    Usage:

        exposed = expose(model)                      # [logits, activations (B, h, w, C)]
        exposed = expose(model, "conv5_block3_out")  # another layer's output
        exposed = expose(vit_classifier)             # [logits, tokens on their 14x14 grid]
    """
    if outputs is None:  # the scores: the output of the model without its softmax
        model, outputs = scores_model(model, scores), MODEL_OUTPUT
    if arguments is None:
        arguments = default_activation(model)
    outputs, arguments = _endpoint_list(outputs), _endpoint_list(arguments)
    exposed = _exposed(model, outputs, arguments, grid, prefix_tokens)
    _EXPOSURES[exposed] = (model, outputs, arguments, grid, prefix_tokens)
    return exposed


def _exposed(model, outputs, arguments, grid, prefix_tokens, keep=None) -> keras.Model:
    inputs = _symbolic_inputs(model)
    image = len(keras.tree.flatten(inputs)[0].shape) == 4
    tensors = _endpoints(model, outputs + arguments, inputs,
                         arguments if grid is not None and image else (), grid, prefix_tokens,
                         keep)
    return keras.Model(inputs if keep is None else [*keras.tree.flatten(inputs), keep], tensors,
                       name=f"{model.name}_exposed")


_EXPOSURES: "weakref.WeakKeyDictionary[keras.Model, Tuple]" = weakref.WeakKeyDictionary()
"""How each model `expose` built was exposed, for `channel_scaled` (kept here, weakly)."""

_SCALED: "weakref.WeakKeyDictionary[keras.Model, keras.Model]" = weakref.WeakKeyDictionary()


def channel_scaled(exposed: keras.Model) -> keras.Model:
    """`exposed`, a model `expose` built, taking `[inputs, keep]` instead of its inputs:
    its last argument (the activation A (B, h, w, C), or the patch-token map of a
    transformer) is multiplied channel by channel by `keep` (B, C) where the model reads
    it, so that its outputs are those of the model with the channels scaled: with a 0 in
    `keep`, a channel ablated (Ablation-CAM). The layers are the same (weights shared).
    Built once per exposed model, kept here and not on it.

    Usage:

        exposed = expose(model)
        logits, activations = channel_scaled(exposed)([images, keep])

    Raises:
        ExplainError: for a model `expose` did not build.
    """
    if exposed in _SCALED:
        return _SCALED[exposed]
    if exposed not in _EXPOSURES:
        raise ExplainError(
            f"{exposed.name!r} was not built by explain_lib.inspection.expose: only then is it "
            "known where its activation is read, to scale its channels. Expose the model with "
            "inspection.expose(model, layer).")
    model, outputs, arguments, grid, prefix_tokens = _EXPOSURES[exposed]
    channels = keras.tree.flatten(exposed.outputs)[-1].shape[-1]
    keep = keras.Input((channels,), name="keep")
    _SCALED[exposed] = _exposed(model, outputs, arguments, grid, prefix_tokens, keep)
    return _SCALED[exposed]


def default_activation(model: keras.Model) -> Endpoint:
    """The activation CAM methods weigh by default (`expose`'s `arguments`):

    - the input of the last global pooling (or Flatten) layer (`get_global_pooling_layer`)
      when it has more than one position: a CNN's last feature map, MiT's;
    - for a transformer whose blocks one encoder layer holds (KerasHub's ViT and DeiT,
      `block_encoder`), the tokens entering its last block, as pytorch-grad-cam weighs
      `blocks[-1].norm1`: a class-token head reads the patch tokens only through the last
      block's attention, so the encoder's output tokens get no gradient from it;
    - else the output of the last layer whose output is a map of more than one position,
      or tokens (Swin's final tokens, which its head averages; KerasHub VGG's last map,
      before its head's 7x7 convolution);
    - else the 1x1 input of the last pooling (a map of one position: a constant map).
    """
    layers = flatten_layers(model)
    pooling = (get_global_pooling_layer(model)
               if any(isinstance(layer, POOLING_LAYERS) for layer in layers) else None)
    if pooling is not None and _extent(pooling, "input") > 1:
        return {"layer": pooling, "link": "input"}
    encoders = [layer for layer in layers if block_encoder(layer)]
    if encoders:
        return {"layer": encoders[-1], "link": "last_block_input"}
    padding = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D,
               keras.layers.ZeroPadding3D)
    for layer in reversed(layers):
        if not isinstance(layer, (keras.Model, *padding)) and _extent(layer, "output") > 1:
            return {"layer": layer, "link": "output"}
    if pooling is not None and _extent(pooling, "input"):  # 1x1: the model has no larger map
        return {"layer": pooling, "link": "input"}
    raise ExplainError(
        f"No spatial activation found in {model.name!r} for CAM methods to weigh: no global "
        "pooling layer, transformer encoder or layer with a spatial or token output. Its "
        f"layers are: {_describe(model)}. Name one (expose(model, 'layer_name'), or the "
        "job's --activation_layer)."
    )


def _extent(layer: keras.layers.Layer, link: str) -> int:
    """How many positions `layer`'s input (or output) has, a map's or tokens' (unknown sizes
    count as large); 0 for a tensor without spatial axes, or a layer called several times."""
    try:
        shape = getattr(layer, link).shape
    except (AttributeError, ValueError, RuntimeError):  # called several times, or never
        return 0
    if len(shape) < 3:
        return 0
    return int(np.prod([1 << 30 if size is None else size for size in shape[1:-1]]))


MAX_PREFIX_TOKENS = 8
"""Tokens a transformer may put before its patch tokens (class, distillation, registers)."""


def token_grid(shape: Sequence[Optional[int]], image_size: Sequence[Optional[int]],
               grid: Union[str, Sequence[int]] = "auto", prefix_tokens: Optional[int] = None
               ) -> Tuple[int, Tuple[int, int]]:
    """(prefix tokens, (h, w)) of tokens of `shape` (B, T, C) computed from an image of
    `image_size` (H, W): with `grid="auto"`, a split T = prefix + h·w (prefix up to
    `MAX_PREFIX_TOKENS`, or `prefix_tokens`) whose grid has the image's proportions and
    divides it into whole patches; where several do (a small grid: 17 tokens are 1 + 4x4
    or 8 + 3x3), the one with the fewest prefix tokens, which transformers keep few
    (class, distillation, a few registers). Raises ValueError, asking for `grid` and
    `prefix_tokens`, when none does.

    Usage:

        token_grid((None, 197, 768), (224, 224))     # (1, (14, 14)): ViT-B/16's
    """
    tokens = shape[1]
    height, width = image_size
    if grid != "auto":
        rows, cols = (int(v) for v in grid)
        if tokens is None and prefix_tokens is None:
            raise ExplainError(f"Tokens of shape {tuple(shape)} have no known count: pass "
                             "prefix_tokens with the grid.")
        prefix = tokens - rows * cols if prefix_tokens is None else int(prefix_tokens)
        if tokens is not None and (prefix < 0 or prefix + rows * cols != tokens):
            raise ExplainError(f"{tokens} tokens are not {prefix} prefix tokens and a "
                             f"{rows}x{cols} grid.")
        return prefix, (rows, cols)
    prefixes = range(MAX_PREFIX_TOKENS + 1) if prefix_tokens is None else [int(prefix_tokens)]
    for prefix in prefixes if None not in (tokens, height, width) else []:
        count = tokens - prefix
        rows = round(math.sqrt(max(count, 0) * height / width))
        if rows < 1 or count % rows:
            continue
        cols = count // rows
        if rows * width == cols * height and height % rows == 0 and width % cols == 0:
            return prefix, (rows, cols)
    raise ExplainError(
        f"Cannot tell how tokens of shape {tuple(shape)} lie on a grid of the proportions of a "
        f"{height}x{width} image: pass grid=(h, w) and prefix_tokens to expose.")


def block_encoder(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is a transformer encoder that runs its blocks in its own call, as
    KerasHub's ViT and DeiT encoders do: a layer (not a model) holding them in
    `encoder_layers`, then a final `layer_norm` (and, for ViT, a `dropout` first). Its
    blocks are not in the model's graph: `UnrolledEncoder` runs them one by one."""
    blocks = getattr(layer, "encoder_layers", None)
    return (not isinstance(layer, keras.Model) and isinstance(blocks, (list, tuple))
            and len(blocks) > 0 and all(isinstance(b, keras.layers.Layer) for b in blocks)
            and isinstance(getattr(layer, "layer_norm", None), keras.layers.Layer))


class UnrolledEncoder(keras.layers.Layer):
    """A `block_encoder` run block by block as its own call runs them, returning
    `[its output, the tokens entering its last block]`, and with `attention`, also every
    block's attention probabilities stacked, (B, blocks, heads, T, T) (`block_attention`).
    With `grid` (prefix tokens, (h, w)), the last block's input comes back as the map of
    its patch tokens (B, h, w, C), which the last block's tokens are rebuilt from."""

    def __init__(self, encoder: keras.layers.Layer, attention: bool = False,
                 grid: Optional[Tuple[int, Tuple[int, int]]] = None, **kwargs):
        super().__init__(name=f"{encoder.name}_unrolled", dtype=encoder.dtype_policy, **kwargs)
        self.encoder, self.attention, self.grid = encoder, attention, grid

    def call(self, tokens, keep=None):
        encoder = self.encoder
        dropout = getattr(encoder, "dropout", None)
        x = dropout(tokens) if isinstance(dropout, keras.layers.Layer) else tokens
        attentions = []
        blocks = encoder.encoder_layers
        for index, block in enumerate(blocks):
            if index == len(blocks) - 1:
                x, last = self._split(x, keep)
            if self.attention and _returns_attention(block):
                # (Its tokens then come from the attention kernel that returns the scores,
                # which may round differently in the last bits from the fused one.)
                x, scores = block(x, return_attention_scores=True)
                attentions.append(scores)
                continue
            if self.attention:
                attentions.append(block_attention(block, x))
            x = block(x)
            if isinstance(x, (list, tuple)):  # DeiT's blocks return (tokens, scores or None)
                x = x[0]
        outputs = [encoder.layer_norm(x), last]
        return outputs + [keras.ops.stack(attentions, axis=1)] if self.attention else outputs

    def _split(self, tokens, keep=None):
        """(the tokens the last block takes, what is exposed of them); `keep` (B, C) scales
        the exposed tensor's channels (`channel_scaled`)."""
        if self.grid is None:
            if keep is not None:
                tokens = tokens * keras.ops.cast(keep[:, None, :], tokens.dtype)
            return tokens, tokens
        prefix, (rows, cols) = self.grid
        channels = tokens.shape[-1]
        grid = keras.ops.reshape(tokens[:, prefix:], (-1, rows, cols, channels))
        if keep is not None:
            grid = grid * keras.ops.cast(keep[:, None, None, :], grid.dtype)
        patches = keras.ops.reshape(grid, (-1, rows * cols, channels))
        rebuilt = keras.ops.concatenate([tokens[:, :prefix], patches], axis=1) if prefix else (
            patches)
        return rebuilt, grid


def _returns_attention(block: keras.layers.Layer) -> bool:
    """Whether `block` returns its attention scores when asked (DeiT's blocks)."""
    return "return_attention_scores" in inspect.signature(block.call).parameters


def block_attention(block: keras.layers.Layer, tokens) -> Any:
    """A transformer block's attention probabilities (B, heads, T, T) for its input
    `tokens`: from the block itself when it returns them (DeiT's
    `block(x, return_attention_scores=True)`), else from its `MultiHeadAttention` on its
    first `LayerNormalization` (ViT's `mha(ln_1(x), ln_1(x))`). Raises ValueError for a
    block that has neither."""
    if _returns_attention(block):
        return block(tokens, return_attention_scores=True)[1]
    attention = getattr(block, "mha", None)
    norm = getattr(block, "layer_norm_1", None)
    if isinstance(attention, keras.layers.MultiHeadAttention) and norm is not None:
        normed = norm(tokens)
        return attention(normed, normed, return_attention_scores=True)[1]
    raise ExplainError(f"Cannot reach the attention of {block.name!r} ({type(block).__name__}): "
                     "it neither returns its attention scores nor holds a MultiHeadAttention "
                     "`mha` after a `layer_norm_1`.")


def gather_units(
    tensor: tf.Tensor,
    indices: Optional[tf.Tensor],
    axis: int = KERNEL_AXIS,
    batch_dims: int = -1,
) -> tf.Tensor:
    """Pick the units `indices` (B, K) of each sample from `tensor` (B, U) -> (B, K);
    `None` keeps every unit."""
    if indices is None:
        return tensor
    return tf.gather(tensor, indices, axis=axis, batch_dims=batch_dims)


PROBABILITIES = ("softmax", "sigmoid", "identity")
"""How explained scores become the model's probabilities (`probabilities_of`): the model's
final activation, or "identity" for scores that are its probabilities already."""


def probabilities_of(logits: tf.Tensor, activation: Optional[str] = None) -> tf.Tensor:
    """Each unit's probability from the logits (B, U), as the model's `activation` makes
    them (`PROBABILITIES`; the final activation `find_head` finds); without one, the softmax
    over the units, or the sigmoid for a model with one output unit (whose softmax would be
    1 whatever the input). Float32 for a model computing in half precision.

    Usage:

        probabilities = probabilities_of(model(images))      # (B, U), rows sum to 1
        probabilities_of(scores, "sigmoid")                  # a multi-label head's
    """
    if logits.dtype in (tf.float16, tf.bfloat16):
        logits = tf.cast(logits, tf.float32)
    if activation == "identity":
        return logits
    if activation == "sigmoid" or (activation is None and logits.shape[-1] == 1):
        return tf.sigmoid(logits)
    return tf.nn.softmax(logits, axis=-1)


class UnitSelector(abc.ABC):
    """What a method is given as `indices` when the engine wants more than the maps: the
    method calls `select_units` on the logits (B, U) of its forward pass at the input, and
    the selector returns the units to explain (B, K), recording them in `units` and their
    probabilities (`probabilities_of` the full logits, gathered: (B, K)) in `probabilities`.

    That forward pass is the only place the full logits exist, so this is how the engine
    learns each explained unit's probability, and chooses the top units, without a
    forward pass of its own. Subclasses say which units: `TopUnits(k)` the k best,
    `GivenUnits(indices)` the given ones.
    """

    k: int
    units: Optional[tf.Tensor] = None
    probabilities: Optional[tf.Tensor] = None
    activation: Optional[str] = None
    """How the scores become probabilities (`probabilities_of`), as the engine knows it of
    the model (`find_head`)."""

    @abc.abstractmethod
    def choose(self, logits: tf.Tensor) -> tf.Tensor:
        """The units (B, K) int32 to explain, given the logits (B, U)."""

    def select(self, logits: tf.Tensor) -> tf.Tensor:
        self.units = self.choose(logits)
        self.probabilities = gather_units(probabilities_of(logits, self.activation),
                                          self.units)
        return self.units


class TopUnits(UnitSelector):
    """Explain each input's `k` highest-scoring units, chosen from the scores of the
    method's own forward pass at the input: no separate prediction pass.

    Pass it to a method as `indices`; the method calls `select_units` on the logits of its
    forward pass at the (unperturbed) input, which chooses the units, records them in
    `units` (and their probabilities in `probabilities`) and returns them.
    `engine.explaining.explain_predicted` does all of this.

    Usage:

        selector = TopUnits(2)
        logits, maps = gradcam(exposed, images, selector)
        selector.units  # (B, 2) int32, best first; on ties the lower unit first
    """

    def __init__(self, k: int, activation: Optional[str] = None):
        if int(k) < 1:
            raise ExplainError(f"TopUnits needs k >= 1 units per input, got {k}.")
        self.k = int(k)
        self.activation = activation

    def choose(self, logits: tf.Tensor) -> tf.Tensor:
        if logits.shape[-1] is not None and logits.shape[-1] < self.k:
            raise ExplainError(
                f"Cannot explain the top {self.k} units of a model with {logits.shape[-1]} "
                f"output units: ask for at most {logits.shape[-1]}."
            )
        return tf.math.top_k(logits, k=self.k).indices


class GivenUnits(UnitSelector):
    """Explain the given units (B, K), and record their probabilities at the input from the
    method's own forward pass (`UnitSelector`): what `explain(...,
    return_probabilities=True)` passes to a method.

    Usage:

        selector = GivenUnits(tf.constant([[3], [7]]))
        logits, maps = gradients(model, images, selector)
        selector.probabilities  # (2, 1): softmax(model(images))[i, units[i]]
    """

    def __init__(self, indices: tf.Tensor, activation: Optional[str] = None):
        self.indices = tf.convert_to_tensor(indices)
        self.k = int(self.indices.shape[-1])
        self.activation = activation

    def choose(self, logits: tf.Tensor) -> tf.Tensor:
        return self.indices


def select_units(logits: tf.Tensor, indices):
    """The units to explain, given the logits (B, U) of the method's forward pass at the
    input: `indices` itself, or the units a `UnitSelector` (`TopUnits`, `GivenUnits`)
    chooses from `logits`, recording their probabilities.

    Every method calls it once, right after that forward pass, and uses what it returns
    from then on.
    """
    if isinstance(indices, UnitSelector):
        return indices.select(logits)
    return indices


def layers_with_biases(
    model: keras.Model, exclude: Sequence[keras.layers.Layer] = (), return_biases: bool = True
):
    """Layers that add a bias: an explicit `bias`, or BatchNormalization's implicit one.

    Returns the layers, and with `return_biases` also their biases (see `biases`).
    """
    layers = [
        layer
        for layer in flatten_layers(model)
        if not isinstance(layer, keras.Model)
        and not any(layer is e for e in exclude)
        and (
            isinstance(layer, keras.layers.BatchNormalization)
            or getattr(layer, "bias", None) is not None
            or (isinstance(layer, keras.layers.LayerNormalization) and layer.beta is not None)
        )
    ]
    if return_biases:
        return layers, biases(layers)
    return layers


def biases(layers: Sequence[keras.layers.Layer]) -> List[tf.Tensor]:
    """The bias each layer adds to its output.

    BatchNormalization computes `(x - mean) / sqrt(var + eps) * gamma + beta` in inference,
    so its bias is `beta - mean * gamma / sqrt(var + eps)`; LayerNormalization's is its
    `beta`; other layers' is their `bias` variable.
    """
    result = []
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma = 1.0 if layer.gamma is None else tf.convert_to_tensor(layer.gamma)
            beta = 0.0 if layer.beta is None else tf.convert_to_tensor(layer.beta)
            mean = tf.convert_to_tensor(layer.moving_mean)
            scale = gamma / tf.sqrt(tf.convert_to_tensor(layer.moving_variance) + layer.epsilon)
            result.append(beta - mean * scale)
        elif isinstance(layer, keras.layers.LayerNormalization):
            result.append(tf.convert_to_tensor(layer.beta))
        else:
            result.append(tf.convert_to_tensor(layer.bias))
    return result


__all__ = [
    "channel_scaled",
    "rerouted",
    "FINAL_ACTIVATIONS",
    "Head",
    "MODEL_OUTPUT",
    "PROBABILITIES",
    "PreActivation",
    "SCORES",
    "MAX_PREFIX_TOKENS",
    "UnrolledEncoder",
    "block_attention",
    "block_encoder",
    "default_activation",
    "expose",
    "endpoints",
    "find_head",
    "token_grid",
    "scores_model",
    "flatten_layers",
    "find_layer_with",
    "get_logits_layer",
    "get_global_pooling_layer",
    "get_nested_layer",
    "gather_units",
    "probabilities_of",
    "UnitSelector",
    "TopUnits",
    "GivenUnits",
    "select_units",
    "layers_with_biases",
    "biases",
]
