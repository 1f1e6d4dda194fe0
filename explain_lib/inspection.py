"""Inspection: find a Keras model's inner layers and build models that expose them.

CAM methods need a model that returns the logits *and* an inner activation; Full-Gradient
needs every biased layer's output. `expose` builds such a model from any Functional or
Sequential Keras 3 model, including the transfer-learning shape where the backbone is a
nested model (`Sequential([base, GlobalAveragePooling2D(), Dense(n)])`): the graph is
re-traced with the same layer objects (weights are shared, nothing is copied), and nested
models that hold a requested layer are re-traced in turn so their inner tensors surface in
the outer graph.

Usage:

    exposed = inspection.expose(model)              # [logits, input of the last pooling]
    logits, activations = exposed(images)
    exposed = inspection.expose(model, ("resnet50v2", "post_relu"), "predictions")
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import keras
import tensorflow as tf

from explain_lib.utils import SPATIAL_AXIS, tolist  # noqa: F401  (SPATIAL_AXIS re-exported)

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
(`("resnet50v2", "post_relu")`), an index into `model.layers`, the layer itself, or a dict
`{"name" | "layer": ..., "link": "output" | "input", "node": "last" | int}` where `node`
picks one call of a layer that is called several times."""


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
            raise ValueError(
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
        raise ValueError("find_layer_with needs a name, properties or klass to search for.")
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
    raise ValueError(
        f"No layer with {wanted} in model {model.name!r}. Its layers are: {_describe(model)}. "
        "Name the layer explicitly (for instance expose(model, arguments='layer_name'))."
    )


def get_logits_layer(model: keras.Model, name: Optional[str] = None) -> keras.layers.Layer:
    """The logits layer: the last layer with a kernel (a Dense or Conv head), or `name`."""
    return find_layer_with(model, name, properties=["kernel"])


def get_global_pooling_layer(model: keras.Model, name: Optional[str] = None) -> keras.layers.Layer:
    """The last global pooling (or Flatten) layer, or `name`: its input is the spatial
    activation CAM methods weigh."""
    return find_layer_with(model, name, klass=POOLING_LAYERS)


def _resolve(model: keras.Model, endpoint: Endpoint) -> Tuple[keras.layers.Layer, str, Any]:
    """An endpoint description as (layer, link, node)."""
    if isinstance(endpoint, int):
        endpoint = {"layer": model.layers[endpoint]}
    elif isinstance(endpoint, keras.layers.Layer):
        endpoint = {"layer": endpoint}
    elif isinstance(endpoint, (str, tuple)):
        endpoint = {"name": endpoint}
    if not isinstance(endpoint, dict) or not ({"name", "layer"} & endpoint.keys()):
        raise ValueError(
            f"Cannot read endpoint {endpoint!r}: give a layer name, a tuple of names, a layer "
            "index, a Layer, or a dict with 'name' or 'layer' (and optional 'link', 'node')."
        )
    layer = endpoint.get("layer") or get_nested_layer(model, endpoint["name"])
    link = endpoint.get("link", "output")
    if link not in ("input", "output"):
        raise ValueError(f"Endpoint link must be 'input' or 'output', not {link!r}.")
    return layer, link, endpoint.get("node", "last")


def _contains(container: keras.layers.Layer, layer: keras.layers.Layer) -> bool:
    return isinstance(container, keras.Model) and any(
        sub is layer for sub in flatten_layers(container)
    )


def _symbolic_inputs(model: keras.Model):
    """New `keras.Input`s shaped like the model's: one tensor, or a list for several."""
    if not isinstance(model, keras.Sequential) and not getattr(model, "outputs", None):
        raise ValueError(
            f"Cannot expose the inner layers of {model.name!r} ({type(model).__name__}): only "
            "Functional and Sequential models have a graph to re-trace. Build the model "
            "functionally, or give the method a model that already returns [logits, activations]."
        )
    if not getattr(model, "inputs", None):
        raise ValueError(
            f"Model {model.name!r} has no symbolic inputs: build it first (give its first "
            "layer an input shape, or call model.build(input_shape))."
        )
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype) for t in model.inputs]
    return inputs[0] if len(inputs) == 1 else inputs


def _with_endpoints(model: keras.Model, targets: List[Tuple]) -> keras.Model:
    """A Functional model computing `model`'s outputs followed by each target's tensor.

    The layers are re-called (not cloned) on new inputs; a nested model holding a target is
    replaced, for this call only, by its own `_with_endpoints` version.
    """
    calls = {target: [] for target in targets}

    def call(layer, *args, **kwargs):
        inner = [t for t in targets if t[0] is not layer and _contains(layer, t[0])]
        if inner:
            extended = _with_endpoints(layer, inner)
            flat = keras.tree.flatten(extended(*args, **kwargs))
            count = len(keras.tree.flatten(layer.output))
            for target, tensor in zip(inner, flat[count:]):
                calls[target].append(tensor)
            result = keras.tree.pack_sequence_as(layer.output, flat[:count])
        else:
            result = layer(*args, **kwargs)
        for target in targets:
            if target[0] is layer:
                calls[target].append(args[0] if target[1] == "input" else result)
        return result

    if isinstance(model, keras.Sequential):
        inputs = outputs = _symbolic_inputs(model)
        for layer in model.layers:
            outputs = call(layer, outputs)
    else:
        _symbolic_inputs(model)  # checks that the model has a graph
        clone = keras.models.clone_model(
            model, clone_function=lambda layer: layer, call_function=call
        )
        inputs, outputs = clone.inputs, clone.outputs

    captured = []
    for (layer, link, node), tensors in calls.items():
        if not tensors:
            raise ValueError(f"Layer {layer.name!r} is not called in the graph of {model.name!r}.")
        if node != "last" and not -len(tensors) <= node < len(tensors):
            raise ValueError(
                f"Layer {layer.name!r} is called {len(tensors)} time(s); node={node} does not exist."
            )
        captured.append(tensors[-1 if node == "last" else node])
    return keras.Model(inputs, keras.tree.flatten(outputs) + captured, name=f"{model.name}_exposed")


def _endpoint_list(endpoints) -> list:
    # A tuple is one path into nested models, not several endpoints.
    return [endpoints] if isinstance(endpoints, tuple) else tolist(endpoints)


def endpoints(
    model: keras.Model, endpoints: Sequence[Endpoint], inputs: Optional[Any] = None
) -> List[keras.KerasTensor]:
    """The symbolic tensors named by `endpoints`, computed from `inputs`.

    `inputs` are symbolic tensors of the caller's graph (default: new `keras.Input`s shaped
    like the model's, reachable as `keras.Model(...).inputs` of what you build from them).

    Usage:

        inputs = keras.Input((224, 224, 3))
        logits, features = inspection.endpoints(model, ["predictions", "post_relu"], inputs)
        exposed = keras.Model(inputs, [logits, features])
    """
    targets = [_resolve(model, e) for e in _endpoint_list(endpoints)]
    unique = list(dict.fromkeys(targets))  # an endpoint named twice is traced once
    extended = _with_endpoints(model, unique)
    if inputs is None:
        inputs = _symbolic_inputs(model)
    flat = keras.tree.flatten(extended(inputs))
    tensors = dict(zip(unique, flat[len(flat) - len(unique):]))
    return [tensors[target] for target in targets]


def expose(
    model: keras.Model,
    arguments: Optional[Union[Endpoint, List[Endpoint]]] = None,
    outputs: Optional[Union[Endpoint, List[Endpoint]]] = None,
) -> keras.Model:
    """A model returning `[*outputs, *arguments]`: the logits, then the inner signals the
    maps are computed against.

    Args:
        model: a Functional or Sequential Keras model (nested backbones included).
        arguments: the inner signal(s). Default: the *input* of the last global pooling
            layer, the spatial activation of CAM methods.
        outputs: the logits. Default: the output of the last layer with a kernel.

    Usage:

        exposed = expose(model)                      # [logits, activations (B, h, w, C)]
        exposed = expose(model, "conv5_block3_out")  # another layer's output
    """
    if outputs is None:
        outputs = get_logits_layer(model)
    if arguments is None:
        arguments = {"layer": get_global_pooling_layer(model), "link": "input"}
    wanted = _endpoint_list(outputs) + _endpoint_list(arguments)
    inputs = _symbolic_inputs(model)
    return keras.Model(inputs, endpoints(model, wanted, inputs), name=f"{model.name}_exposed")


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


def probabilities_of(logits: tf.Tensor) -> tf.Tensor:
    """Each unit's probability from the logits (B, U): the softmax over the units, or the
    sigmoid for a model with one output unit (whose softmax would be 1 whatever the input);
    float32 for a model computing in half precision.

    Usage:

        probabilities = probabilities_of(model(images))      # (B, U), rows sum to 1
    """
    if logits.dtype in (tf.float16, tf.bfloat16):
        logits = tf.cast(logits, tf.float32)
    if logits.shape[-1] == 1:
        return tf.sigmoid(logits)
    return tf.nn.softmax(logits, axis=-1)


class UnitSelector:
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

    def choose(self, logits: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def select(self, logits: tf.Tensor) -> tf.Tensor:
        self.units = self.choose(logits)
        self.probabilities = gather_units(probabilities_of(logits), self.units)
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

    def __init__(self, k: int):
        if int(k) < 1:
            raise ValueError(f"TopUnits needs k >= 1 units per input, got {k}.")
        self.k = int(k)

    def choose(self, logits: tf.Tensor) -> tf.Tensor:
        if logits.shape[-1] is not None and logits.shape[-1] < self.k:
            raise ValueError(
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

    def __init__(self, indices: tf.Tensor):
        self.indices = tf.convert_to_tensor(indices)
        self.k = int(self.indices.shape[-1])

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
    "expose",
    "endpoints",
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
