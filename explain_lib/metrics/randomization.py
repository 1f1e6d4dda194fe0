"""Model-parameter randomisation (Adebayo et al., 2018): a sanity check of the method itself.

A map that explains the model must change when the model's parameters are destroyed. The
check re-initialises the model's layers from the top (the logits) down, cascading, explains
the same inputs with each copy and compares the maps with those of the trained model: a
method that passes has maps that no longer resemble the trained model's (rank correlation
and SSIM near 0); a method whose maps stay the same shows the input, not the model.

- `cascading_layers` lists the layers that carry weights, from the top.
- `randomized_copy` builds a copy of the model with some layers re-initialised: a clone
  (`keras.models.clone_model`, the trained weights set on it), whose layers draw new weights
  from their own initializers, seeded. The user's model is never touched.
- `map_similarity` compares two batches of maps: Spearman's rank correlation of their
  absolute values and the SSIM of their min-max normalisations, per sample and unit.
- `model_randomization` runs the check: it takes an explaining method rather than maps, and
  the engine's `explain`, which `evaluate` gives it (the metrics sit below the engine).
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from explain_lib import filters, inspection, methods
from explain_lib.metrics.common import flat_maps, spearman
from explain_lib.utils import ExplainError


def cascading_layers(model: keras.Model) -> List[str]:
    """The names of `model`'s layers that hold trainable weights, from the top (the logits
    layer first) down, nested models' layers included: the order the check re-initialises
    them in.

    Usage:

        cascading_layers(model)   # ['logits', 'features', 'conv2d_1', 'conv2d']
    """
    return [layer.name for layer in reversed(_weighted(model))]


def _weighted(model: keras.Model) -> List[keras.layers.Layer]:
    return [layer for layer in inspection.flatten_layers(model)
            if not isinstance(layer, keras.Model) and layer.trainable_weights]


def _initializer(layer: keras.layers.Layer, variable, seed: int):
    """The layer's own initializer of `variable` (`kernel_initializer` for `kernel`, ...),
    re-seeded with `seed` when it draws at random."""
    name = variable.name.split("/")[-1].split(":")[0]
    candidates = [f"{name}_initializer", f"{name.replace('_kernel', '')}_initializer"]
    if name == "kernel":
        candidates.append("depthwise_initializer")  # DepthwiseConv2D's kernel
    for attribute in candidates:
        initializer = getattr(layer, attribute, None)
        if isinstance(initializer, keras.initializers.Initializer):
            config = initializer.get_config()
            if "seed" in config:
                config["seed"] = seed
            return type(initializer).from_config(config)
    raise ExplainError(
        f"Cannot re-initialise weight {name!r} of layer {layer.name!r} "
        f"({type(layer).__name__}): the layer has no {candidates[0]} attribute. Leave the layer "
        "out (layers=[...] names the layers to stop at) or give it a standard initializer."
    )


def _layer_seed(seed: int, position: int) -> int:
    """A seed per layer, derived from the check's seed: a layer gets the same new weights
    at every stage of the cascade."""
    return int(np.random.SeedSequence([int(seed), position]).generate_state(1)[0] >> 1)


def randomized_copy(model: keras.Model, layers: Sequence[str], seed: int = 0) -> keras.Model:
    """A copy of `model` with the trained weights, except that the layers named in `layers`
    hold new weights drawn from their own initializers (seeded by `seed` and the layer's
    place). Built under the model's distribution strategy, so it runs where the model runs.
    Only trainable weights are drawn anew, as the paper's code re-initialises the trainable
    variables (BatchNormalization's moving statistics stay).

    Usage:

        copy = randomized_copy(model, cascading_layers(model)[:2])   # the top two layers

    Raises:
        ValueError: for a model `clone_model` cannot copy (a subclassed model), or a name
            that is not a layer with weights.
    """
    with model.distribute_strategy.scope():
        try:
            copy = keras.models.clone_model(model)
        except Exception as error:  # Keras raises several types for uncloneable models
            raise ExplainError(
                f"Cannot copy model {model.name!r} to re-initialise its layers "
                f"(keras.models.clone_model failed: {error}). The randomisation check needs a "
                "Functional or Sequential model."
            ) from error
        copy.set_weights(model.get_weights())
    originals, copies = _weighted(model), _weighted(copy)
    names = [layer.name for layer in originals]
    unknown = sorted(set(layers) - set(names))
    if unknown:
        raise ExplainError(
            f"Layer(s) {', '.join(unknown)} of {model.name!r} hold no trainable weights or do "
            f"not exist; the layers with weights are, from the top: "
            f"{', '.join(reversed(names))}."
        )
    for position, (original, layer) in enumerate(zip(originals, copies)):
        if original.name not in layers:
            continue
        for index, variable in enumerate(layer.trainable_weights):
            initializer = _initializer(layer, variable, _layer_seed(seed, position * 64 + index))
            variable.assign(initializer(tuple(variable.shape), variable.dtype))
    return copy


def map_similarity(maps: tf.Tensor, others: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """How alike two batches of maps (B, H, W, K) are, per sample and unit: (Spearman's
    rank correlation of their absolute values, SSIM of their min-max normalisations to
    [0, 1]), each (B, K).

    As the paper's code (github.com/adebayoj/sanity_checks_saliency, the cascading
    randomisation notebooks): `spearmanr` of the absolute-value maps, and SSIM with a
    Gaussian window (11 pixels, σ = 1.5; `skimage`'s `gaussian_weights=True`) of maps
    normalised to [0, 1], here with `tf.image.ssim` (data range 1, the normalised maps';
    the window shrinks to an odd size that fits smaller maps). A constant map normalises to
    zeros.

    Usage:

        rank, structure = map_similarity(trained_maps, randomized_maps)   # (B, K) each
    """
    maps, others = tf.cast(maps, tf.float32), tf.cast(others, tf.float32)
    rank = spearman(tf.abs(flat_maps(maps)), tf.abs(flat_maps(others)))
    size = min(11, *maps.shape[1:3])
    size -= 1 - size % 2
    # (B, K, H, W, 1): tf.image.ssim compares images channel by channel and averages the
    # channels, so each unit's map is an image of its own.
    first = tf.transpose(filters.normalize(maps), [0, 3, 1, 2])[..., None]
    second = tf.transpose(filters.normalize(others), [0, 3, 1, 2])[..., None]
    structure = tf.image.ssim(first, second, max_val=1.0, filter_size=size, filter_sigma=1.5)
    return rank, structure


def _method_and_defaults(method) -> Tuple[Callable, Dict]:
    """The method function and its conventional `explain` parameters (the registry's
    `explain_defaults`), for a registered name or function; a function the registry does
    not know runs with `explain`'s own defaults."""
    if isinstance(method, str):
        entry = methods.get(method)
        return entry.function, dict(entry.explain_defaults)
    for entry in methods.REGISTRY.values():
        if entry.function is method:
            return method, dict(entry.explain_defaults)
    if not callable(method):
        raise ExplainError(
            f"method must be a registered method's name or an explaining function, got "
            f"{method!r}. Valid names: {', '.join(sorted(methods.REGISTRY))}."
        )
    return method, {}


def model_randomization(
    model: keras.Model,
    inputs,
    units,
    method: Union[str, Callable] = "gradients",
    layers: Optional[Sequence[str]] = None,
    seed: int = 0,
    method_params: Optional[Dict] = None,
    batch_size: Optional[int] = None,
    verbose: Union[str, int] = 0,
    explain: Optional[Callable] = None,
) -> pd.DataFrame:
    """Cascading model-parameter randomisation: for each stage, re-initialise the model's
    layers from the top down to one more layer, explain `inputs` with `method` on the copy,
    and compare its maps with the trained model's (`map_similarity`).

    Follows the paper and its code: cascading from the logits, each layer re-initialised
    with its own initializer (the code runs the variables' initializers), Spearman's rank
    correlation of absolute maps and SSIM of [0, 1]-normalised maps, per image. Where it
    differs: the code explains each copy's own top class; here the given `units` are
    explained on every copy, so that only the parameters change; draws are seeded.

    Usage:

        table = explain_lib.evaluate("model_randomization", model, x, y, method="gradcam")
        table.groupby("depth")[["spearman", "ssim"]].mean()   # falls from the top layer down
        table = model_randomization(model, images, labels, "gradcam",
                                    explain=explain_lib.explain)   # what evaluate passes

    Reference:
        Adebayo, J., Gilmer, J., Muelly, M., Goodfellow, I., Hardt, M., Kim, B. (2018).
        Sanity Checks for Saliency Maps. NeurIPS. arXiv:1810.03292.

    Args:
        model: the trained model (Functional or Sequential); it is not modified. Give the
            plain model to a CAM method: it exposes each copy itself.
        inputs: what `explain` takes: images (N, H, W, C), a dataset, ...
        units: (N,) or (N, K) the units to explain; None for every unit.
        method: a registered method's name or an explaining function; a registered one runs
            with its conventional post-processing (`explain_defaults`).
        layers: the layers to stop at, from the top: one stage per name, each re-initialising
            every weighted layer from the top down to it. None: one stage per weighted layer
            (`cascading_layers`), the last with all of them re-initialised.
        seed: seed of the new weights.
        method_params: the method's own parameters (and `explain`'s `postprocessing`,
            `resizing`), on top of its conventional ones.
        batch_size, verbose: `explain`'s (`evaluate` passes its own).
        explain: the engine's `explain(method, model, x, y, batch_size=..., verbose=...,
            **params) -> (logits, maps)`, which `evaluate` passes.

    Returns:
        A DataFrame with one row per stage, sample and unit: `layer` (the lowest layer
        re-initialised at that stage), `depth` (how many layers are), `sample`, `unit`,
        `spearman`, `ssim`.
    """
    if explain is None:
        raise ExplainError(
            "model_randomization explains with the engine's explain: run it as "
            "explain_lib.evaluate('model_randomization', ...), or pass "
            "explain=explain_lib.explain."
        )
    function, params = _method_and_defaults(method)
    params.update(method_params or {})
    order = cascading_layers(model)
    stops = list(order) if layers is None else list(layers)
    unknown = [name for name in stops if name not in order]
    if unknown or not stops:
        raise ExplainError(
            f"layers must name layers of {model.name!r} that hold weights, from the top: "
            f"{', '.join(order)}; got {stops!r}."
        )
    if any(order.index(a) >= order.index(b) for a, b in zip(stops, stops[1:])):
        raise ExplainError(
            f"layers must go from the top down (the order of cascading_layers: "
            f"{', '.join(order)}); got {stops!r}."
        )

    def maps_of(explained_model):
        return explain(function, explained_model, inputs, units, batch_size=batch_size,
                       verbose=verbose, **params)

    _, trained = maps_of(model)
    explained_units = (np.arange(trained.shape[-1])[None].repeat(len(trained), 0)
                       if units is None else np.asarray(units).reshape(len(trained), -1))
    step = batch_size or 32
    spec = tf.TensorSpec((None, *trained.shape[1:]), tf.float32)
    similarity = tf.function(map_similarity, input_signature=[spec, spec])  # one trace
    frames = []
    for stop in stops:
        depth = order.index(stop) + 1
        copy = randomized_copy(model, order[:depth], seed)
        _, randomized = maps_of(copy)
        ranks, structures = [], []
        for start in range(0, len(trained), step):  # bounded memory: one batch at a time
            rank, structure = similarity(tf.constant(trained[start:start + step], tf.float32),
                                         tf.constant(randomized[start:start + step], tf.float32))
            ranks.append(rank.numpy())
            structures.append(structure.numpy())
        rank, structure = np.concatenate(ranks), np.concatenate(structures)
        samples, slots = np.meshgrid(np.arange(rank.shape[0]), np.arange(rank.shape[1]),
                                     indexing="ij")
        frames.append(pd.DataFrame({
            "layer": stop, "depth": depth, "sample": samples.ravel(),
            "unit": explained_units[samples.ravel(), slots.ravel()],
            "spearman": rank.ravel(), "ssim": structure.ravel(),
        }))
        del copy
    return pd.concat(frames, ignore_index=True)


__all__ = ["cascading_layers", "map_similarity", "model_randomization", "randomized_copy"]
