"""The explaining engine: `explain` is to an explaining method what `predict` is to `call`.

Separation of concerns:
- `engine.data` adapts what the user passes (arrays, tensors, `tf.data`, generators,
  `keras.utils.PyDataset`) into an ordered stream of `(x, y)` batches, reading generators
  and PyDatasets ahead in background workers.
- `explain_step` runs one method on one batch on one replica: it calls the method, checks
  the shapes it returned, post-processes the maps and resizes them.
- `_compiled_step` builds, once per model, method, parameters, input signature and number of
  units, the `tf.function` that splits a global batch across the replicas of the model's
  `tf.distribute` strategy, runs `explain_step` on each with `strategy.run` (under XLA when
  the model asks for `jit_compile`) and concatenates the replicas' results in input order.
  Its batch dimension is unknown, so every batch size, the last partial one included, reuses
  one trace. Compiled steps live in a cache this module owns, keyed weakly by model: nothing
  is written onto the user's model.
- `explain` drives the loop: which units to explain (all of them when `y` is None, in chunks
  of `unit_chunk_size` so working memory stays bounded), callbacks and the progress bar,
  and gathering the outputs into numpy arrays. `explain_predicted` runs the same loop with
  steps that choose each input's top-K units from the method's own forward pass
  (`inspection.TopUnits`) and return them with the maps. Either can return each explained
  unit's probability at the input, recorded from that same forward pass by the selector
  the method is given (`inspection.UnitSelector`): no forward pass of the engine's own.
"""

import collections
import hashlib
import threading
import warnings
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from explain_lib import filters, inspection, utils
from explain_lib.engine import data as data_adapter
from explain_lib.methods.common import METHOD_ARGUMENTS, check_parameter_kinds, parameters_of
from explain_lib.utils import SPATIAL_AXIS

STEP_PARAMS = ("spatial_axis", "postprocessing", "resizing", "scores")
"""Keyword arguments of `explain` for its steps: `scores` chooses the model the method is
given (`explained_model`), the others go to `explain_step`; every other one goes to the
method (`spatial_axis` to both)."""

LOOP_ARGUMENTS = frozenset({
    "method", "model", "x", "y", "batch_size", "verbose", "steps", "callbacks",
    "max_queue_size", "workers", "use_multiprocessing", "force", "top_k", "unit_chunk_size",
    "return_probabilities",
})
"""The names `explain` and `explain_predicted` keep for their own loop: a method parameter of
one of these names could never reach the method, so a method declaring one is refused."""

DEFAULT_UNIT_CHUNK_SIZE = 16

MAX_STEPS_PER_MODEL = 32
"""Compiled steps kept per model (the least recently used go first), so that calls with
ever new parameter values (a fresh baseline array each time, say) do not pile up traces."""

_compiled_steps: "weakref.WeakKeyDictionary[keras.Model, collections.OrderedDict]" = (
    weakref.WeakKeyDictionary()
)
_compiled_steps_lock = threading.RLock()


def check_method_params(method: Callable, params: Dict[str, Any]) -> None:
    """Refuse, before any work, parameters that would not reach `method`.

    `params` are what `explain` passes to the method (its own arguments and `explain_step`'s
    taken out). Raises a ValueError naming the method's parameters when one of `params` is
    not among them (unless the method takes `**kwargs`), or when one of the method's
    parameters has the name of an argument the loop keeps for itself (`steps`,
    `batch_size`, ...; see `LOOP_ARGUMENTS`), which would take it first; and a value of a
    kind the parameter does not take (`check_parameter_kinds`: `n_steps="many"`).
    """
    name = getattr(method, "__name__", repr(method))
    accepted, open_ended = parameters_of(method)
    shadowed = sorted(set(accepted) & (LOOP_ARGUMENTS | set(STEP_PARAMS) - {"spatial_axis"}))
    if shadowed:
        raise ValueError(
            f"{name} has parameter(s) {', '.join(shadowed)} named like explain's own "
            "arguments, which take them first: rename them (as Integrated Gradients counts "
            "its path in n_steps, not steps)."
        )
    engine_given = sorted(set(params) & set(METHOD_ARGUMENTS))
    if engine_given:
        raise ValueError(
            f"{', '.join(engine_given)} cannot be given as method parameters: explain passes "
            "the model, each batch of inputs and the units to the method itself."
        )
    unknown = sorted(set(params) - set(accepted))
    if unknown and not open_ended:
        known = ", ".join(accepted) or "none"
        raise ValueError(
            f"Unknown parameter(s) {', '.join(unknown)} for {name}: it takes {known} "
            "(and explain itself spatial_axis, postprocessing, resizing, unit_chunk_size and "
            "the arguments of model.predict's loop)."
        )
    check_parameter_kinds(name, method, params)


def explain_step(
    model: keras.Model,
    method: Callable,
    data: Tuple[tf.Tensor, tf.Tensor],
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    postprocessing: Optional[Callable] = None,
    resizing: Union[bool, Sequence[int], None] = True,
    **params,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Explain one batch: `method`, then `postprocessing`, then resizing.

    Args:
        model: the model given to the method.
        method: an explaining function `(model, inputs, indices, ...) -> (logits, maps)`.
        data: `(inputs, indices)`, inputs (B, ..., H, W, C) and indices (B, K), or an
            `inspection.UnitSelector` (`TopUnits`, `GivenUnits`), which holds the units
            chosen and their probabilities once this returns.
        spatial_axis: the spatial axes of `inputs` (and of the maps).
        postprocessing: a filter `f(maps, axis=spatial_axis)` applied to the raw maps, or
            its name in `explain_lib.filters` ("positive_normalize").
        resizing: True resizes the maps to the inputs' spatial size, a size resizes to that
            size, False or None keeps the method's resolution.
        **params: passed on to `method`.

    Returns:
        `logits` (B, K), the explained units' scores, and `maps` (B, ..., H', W', K).
    """
    inputs, indices = data_adapter.unpack(data)
    logits, maps = method(
        model=model, inputs=inputs, indices=indices, spatial_axis=spatial_axis, **params
    )
    _check_method_outputs(method, inputs, indices, logits, maps)
    # A model computing in half precision (a mixed dtype policy) still gives results in the
    # inputs' precision, and post-processes them in it.
    logits, maps = tf.cast(logits, inputs.dtype), tf.cast(maps, inputs.dtype)
    if postprocessing is not None:
        maps = filters.get(postprocessing)(maps, axis=spatial_axis)
    if resizing is not None and resizing is not False:
        if resizing is True:
            shape = tf.shape(inputs)
            resizing = tf.stack([shape[a] for a in spatial_axis])
        maps = utils.resize(maps, resizing, spatial_axis)
    return logits, maps


def _check_method_outputs(method, inputs, indices, logits, maps) -> None:
    name = getattr(method, "__name__", repr(method))
    if isinstance(indices, inspection.UnitSelector):
        if indices.units is None:
            raise ValueError(
                f"Method {name} did not choose the units to explain: a method given a "
                f"{type(indices).__name__} selector must call inspection.select_units on the "
                "logits of its forward pass at the input. "
                + ("Give the units explicitly instead (explain(..., y=units))."
                   if isinstance(indices, inspection.TopUnits)
                   else "Leave return_probabilities off for this method.")
            )
        units = indices.k
    else:
        units = None if indices is None else indices.shape[-1]
    if maps.shape.rank != inputs.shape.rank or (units is not None and maps.shape[-1] != units):
        raise ValueError(
            f"Method {name} returned maps of shape {tuple(maps.shape)} for inputs of shape "
            f"{tuple(inputs.shape)} and {units} unit(s) per sample; expected "
            f"(batch, *spatial, {units}): one map per explained unit, channels replaced by units."
        )
    if logits.shape.rank != 2 or (units is not None and logits.shape[-1] != units):
        raise ValueError(
            f"Method {name} returned logits of shape {tuple(logits.shape)}; expected "
            f"(batch, {units}): the scores of the explained units."
        )


def _freeze(value) -> Any:
    """A hashable stand-in for a parameter value: arrays and eager tensors by content (a
    new array of the same values reuses the step), other unhashable values by identity."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (np.ndarray, np.generic)) or tf.is_tensor(value) and hasattr(
        value, "numpy"
    ):
        array = np.ascontiguousarray(np.asarray(value))
        return ("array", array.shape, array.dtype.str, hashlib.sha1(array.tobytes()).hexdigest())
    try:
        hash(value)
        return value
    except TypeError:
        return ("id", id(value))


def _uses_xla(model: keras.Model) -> bool:
    """Whether the model asks for XLA (`compile(jit_compile=...)`, resolved like Keras)."""
    return bool(getattr(model, "jit_compile", False)) and not getattr(model, "run_eagerly", False)


def _compiled_step(
    model: keras.Model,
    method: Callable,
    method_params: Dict[str, Any],
    step_params: Dict[str, Any],
    input_spec: tf.TensorSpec,
    units: int,
    selecting: bool = False,
    probabilities: bool = False,
) -> Callable:
    """The step for this model, method, parameters, input signature and unit count: built
    and traced on first use, then reused (see the module docstring). A selecting step takes
    only the inputs, explains each one's top `units` units and returns (units, logits,
    maps); with `probabilities`, a step also returns the explained units' probabilities
    last, recorded by the selector the method is given (`inspection.UnitSelector`)."""
    key = (method, _freeze(method_params), _freeze(step_params),
           tuple(input_spec.shape[1:]), input_spec.dtype, units, selecting, probabilities)
    with _compiled_steps_lock:  # threads of one worker explain batches at once
        steps = _compiled_steps.setdefault(model, collections.OrderedDict())
        if key in steps:
            steps.move_to_end(key)
        else:
            # The params are kept with the step so that identity-keyed values stay alive.
            steps[key] = (_make_step(model, method, method_params, step_params, input_spec,
                                     units, selecting, probabilities), method_params)
            while len(steps) > MAX_STEPS_PER_MODEL:
                steps.popitem(last=False)
        return steps[key][0]


_explained_models: "weakref.WeakKeyDictionary[keras.Model, Dict[str, Tuple]]" = (
    weakref.WeakKeyDictionary()
)


def explained_model(model: keras.Model, scores: str = "logits"
                    ) -> Tuple[keras.Model, Optional[str]]:
    """The model a method is given to explain `model`, and how its scores become the
    model's probabilities (`inspection.probabilities_of`'s `activation`), built once per
    model and kept here, not on the model.

    With `scores="logits"` (the default), a model ending in a softmax or sigmoid
    (`inspection.find_head`) is explained on its scores before it (`inspection.
    scores_model`, the same layers and weights), as a linear head would be; with
    `scores="output"`, on its output as it is (its probabilities). A final softmax or
    sigmoid whose scores cannot be reached (`keras.ops.softmax` outside any layer) gets a
    warning, and its output is explained as it is; so is the first output of a model with
    several (an exposed one: `inspection.expose` takes the scores by default). A model
    without a graph (subclassed) is explained on its output.
    """
    with _compiled_steps_lock:
        per_model = _explained_models.setdefault(model, {})
        if scores not in per_model:
            per_model[scores] = _explained(model, scores)
        return per_model[scores]


def _explained(model: keras.Model, scores: str) -> Tuple[keras.Model, Optional[str]]:
    if scores not in inspection.SCORES:
        raise ValueError(f"scores must be one of {', '.join(inspection.SCORES)}, not "
                         f"{scores!r}.")
    head = inspection.find_head(model)
    outputs = getattr(model, "outputs", None) or []
    if head.activation and len(outputs) > 1:
        warnings.warn(f"{model.name!r} ends in a {head.activation} but has {len(outputs)} "
                      "outputs: its first output is explained as it is (inspection.expose "
                      "exposes a model on its scores).", stacklevel=3)
        return model, "identity"
    if head.activation:
        if scores == "output":
            return model, "identity"
        with model.distribute_strategy.scope():
            return inspection.scores_model(model), head.activation
    if head.unreachable and scores == "logits":
        warnings.warn(
            f"{head.unreachable}: its maps explain the probabilities, not the scores before "
            "them. End the model in an Activation or Softmax layer, or in a Dense or "
            "convolution with the activation fused, to explain its scores; pass "
            "scores='output' to explain its output as it is.", stacklevel=3)
        return model, "identity"
    return model, None


def _make_step(model, method, method_params, step_params, input_spec, units,
               selecting, probabilities=False) -> Callable:
    step_params = dict(step_params)
    explained, activation = explained_model(model, step_params.pop("scores", "logits"))
    # The step refers to the models weakly, so that the cache entry does not keep them
    # alive (`_explained_models` keeps the explained one while the model lives).
    explained_ref = weakref.ref(explained)

    def replica_step(inputs, *indices):
        if not selecting and not probabilities:
            return explain_step(explained_ref(), method, (inputs, *indices), **step_params,
                                **method_params)
        # One selector per replica: each chooses (or scores) the units of its own shard, in
        # the method's own forward pass at the input.
        selector = (inspection.TopUnits(units, activation) if selecting
                    else inspection.GivenUnits(indices[0], activation))
        logits, maps = explain_step(explained_ref(), method, (inputs, selector), **step_params,
                                    **method_params)
        outputs = (selector.units, logits, maps) if selecting else (logits, maps)
        return (*outputs, selector.probabilities) if probabilities else outputs

    signature = [tf.TensorSpec((None, *input_spec.shape[1:]), input_spec.dtype)]
    if not selecting:
        signature.append(tf.TensorSpec((None, units), tf.int32))
    return compile_distributed(model, replica_step, signature)


def compile_distributed(model: keras.Model, replica_step: Callable,
                        signature: Sequence[tf.TensorSpec]) -> Callable:
    """`replica_step` (tensors sharing a batch axis -> a tuple of tensors with that batch
    axis) as one step over a global batch, run like Keras runs `predict_step`: the batch is
    split across the replicas of the model's strategy (`run_on_replicas`), under XLA when
    the model asks for it, compiled with `signature` (whose batch dimension is None, so that
    every batch size shares one trace) unless the model runs eagerly.

    Usage (the step `explain` builds; `evaluate` builds its own the same way):

        step = compile_distributed(model, replica_step, [tf.TensorSpec((None, 32, 32, 3))])
        outputs = step(images)
    """
    strategy = model.distribute_strategy
    if _uses_xla(model):
        replica_step = tf.function(replica_step, jit_compile=True)

    def step(*tensors):
        return run_on_replicas(strategy, replica_step, tensors)

    if getattr(model, "run_eagerly", False):
        return step
    return tf.function(step, input_signature=list(signature))


def run_on_replicas(strategy: tf.distribute.Strategy, replica_step: Callable,
                    tensors: Sequence[tf.Tensor]) -> Tuple[tf.Tensor, ...]:
    """Run `replica_step` on contiguous shards of `tensors` (split along their batch axis),
    one per replica of `strategy`, and concatenate the replicas' outputs in input order.

    A batch that does not divide by the replica count is padded with copies of its last
    sample (an empty shard is not a valid input for every kernel), and the copies' outputs
    are dropped, so the results are those of one device.
    """
    replicas = strategy.num_replicas_in_sync
    batch = tf.shape(tensors[0])[0]
    per_replica = (batch + replicas - 1) // replicas

    def shard(tensor):
        padding = tf.repeat(tensor[-1:], per_replica * replicas - batch, axis=0)
        tensor = tf.concat([tensor, padding], axis=0)
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tensor[ctx.replica_id_in_sync_group * per_replica:
                               (ctx.replica_id_in_sync_group + 1) * per_replica]
        )

    outputs = strategy.run(replica_step, args=tuple(map(shard, tensors)))
    return tuple(
        tf.concat(strategy.experimental_local_results(output), axis=0)[:batch]
        for output in outputs
    )


def _check_inputs(inputs: tf.Tensor, spatial_axis: Sequence[int]) -> None:
    rank = inputs.shape.rank
    if rank is None or rank < len(spatial_axis) + 2 or any(
        not -rank <= a < rank for a in spatial_axis
    ):
        raise ValueError(
            f"Inputs of shape {tuple(inputs.shape)} do not fit spatial_axis={tuple(spatial_axis)}:"
            f" they need a batch axis, the {len(spatial_axis)} spatial axes and a channel axis "
            f"(at least rank {len(spatial_axis) + 2}). Add a batch axis (x[None]) for a single "
            "image, batch a tf.data.Dataset (dataset.batch(n)), or set spatial_axis."
        )
    axes = utils.positive_axes(spatial_axis, rank)
    if len(set(axes)) != len(axes) or 0 in axes or rank - 1 in axes:
        raise ValueError(
            f"spatial_axis={tuple(spatial_axis)} must name distinct axes of inputs of shape "
            f"{tuple(inputs.shape)}, neither the batch axis (0) nor the channel axis (-1)."
        )


def _units_of(model: keras.Model, inputs: tf.Tensor) -> int:
    """How many output units the model's logits (its first output) have."""
    outputs = getattr(model, "outputs", None)
    if outputs and outputs[0].shape[-1] is not None:
        return int(outputs[0].shape[-1])
    outputs = keras.tree.flatten(model(inputs[:1], training=False))
    return int(outputs[0].shape[-1])


def _indices(y, batch: int, units: int) -> np.ndarray:
    """The (batch, K) int32 unit indices of a batch: `y` checked, or every unit."""
    if y is None:
        return np.broadcast_to(np.arange(units, dtype=np.int32), (batch, units))
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != batch:
        raise ValueError(
            f"y of shape {y.shape} does not fit a batch of {batch} inputs: give unit indices "
            f"of shape ({batch},) or ({batch}, K)."
        )
    if not (np.issubdtype(y.dtype, np.integer) or np.all(np.mod(y, 1) == 0)):
        raise ValueError(f"y must hold integer unit indices, got dtype {y.dtype}.")
    bad = y[(y < 0) | (y >= units)]
    if bad.size:
        raise ValueError(
            f"Unit indices {sorted(set(bad.astype(int).tolist()))[:10]} are out of range: the "
            f"model has {units} output units, so indices must lie in [0, {units - 1}]."
        )
    return y.astype(np.int32)


def _chunks(indices: np.ndarray, size: int) -> List[Tuple[np.ndarray, int]]:
    """Split the units into chunks of `size`, padding the last one to the same width (so
    every chunk reuses one trace); yields (chunk, number of real columns)."""
    if indices.shape[1] <= size:
        return [(indices, indices.shape[1])]
    chunks = []
    for start in range(0, indices.shape[1], size):
        chunk = indices[:, start:start + size]
        real = chunk.shape[1]
        if real < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[:, -1:], size - real, axis=1)], 1)
        chunks.append((chunk, real))
    return chunks


def explain(
    method: Callable,
    model: keras.Model,
    x,
    y=None,
    batch_size: Optional[int] = None,
    verbose: Union[str, int] = "auto",
    steps: Optional[int] = None,
    callbacks: Optional[List[keras.callbacks.Callback]] = None,
    max_queue_size: int = 10,
    workers: int = 1,
    use_multiprocessing: bool = False,
    force: bool = False,
    return_probabilities: bool = False,
    **method_params,
) -> Tuple[np.ndarray, ...]:
    """Explain `model`'s outputs for `x` with an explaining `method`.

    Usage:

        x = np.random.uniform(0, 255, (8, 224, 224, 3)).astype("float32")
        model = keras.applications.ResNet50V2(weights=None, classifier_activation=None)
        logits, maps = explain(methods.gradient.gradients, model, x, y=[16] * 8,
                               postprocessing=filters.absolute_normalize)
        maps.shape  # (8, 224, 224, 1)

    Args:
        method: an explaining function `(model, inputs, indices, ...) -> (logits, maps)`,
            such as those in `explain_lib.methods`.
        model: the Keras model to explain (the exposed model, for methods that need one).
            `explain` runs under its `tf.distribute` strategy: a model built in a
            `MirroredStrategy` scope is explained on all its replicas.
        x: inputs: a numpy array or tensor (N, H, W, C), a batched `tf.data.Dataset` of `x`
            or `(x, y)`, a generator of such batches, or a `keras.utils.PyDataset`.
        y: unit indices to explain, (N,) or (N, K); None explains every output unit.
        batch_size: samples per step for arrays and tensors (default 32).
        verbose: "auto" (a progress bar when there is more than one batch), 0 or 1.
        steps: the number of batches to read (required for infinite datasets).
        callbacks: Keras callbacks; they receive `on_predict_begin`, `on_predict_batch_begin`,
            `on_predict_batch_end` (with `logs={"outputs": (logits, maps)}`, and `"units"`
            from `explain_predicted`) and
            `on_predict_end`.
        max_queue_size: batches read ahead from a generator or PyDataset.
        workers: threads (or processes) reading a PyDataset.
        use_multiprocessing: read a PyDataset with processes instead of threads.
        force: rebuild the compiled steps of this model. By default a step built for the
            same model, method, parameters, input signature and number of units is reused,
            as `model.predict` reuses its function: a second call traces nothing.
        return_probabilities: also return each explained unit's probability at the input
            (the softmax of the model's logits over its units; the sigmoid for one unit),
            taken from the method's own forward pass at the input: the method is given an
            `inspection.GivenUnits` selector, which records them when the method calls
            `inspection.select_units` (every method of `explain_lib.methods` does). No
            forward pass is added (but for meta methods, which make one at the input).
        **method_params: `spatial_axis`, `postprocessing` and `resizing` go to
            `explain_step`; `unit_chunk_size` (default 16) bounds how many units one step
            explains; everything else goes to `method`, which must take it (checked before
            any work: see `check_method_params`).

    Returns:
        `logits` (N, K), the explained units' scores, and `maps` (N, H, W, K); with
        `return_probabilities`, also `probabilities` (N, K) float32, last.

    Raises:
        ValueError: with what is wrong and how to fix it, for a parameter the method does
            not take, empty inputs, mismatched `x`/`y`, unit indices out of range, inputs
            that do not fit `spatial_axis`, or a method returning maps of an unexpected shape.
    """
    _, logits, maps, probabilities = _explain_batches(
        method, model, x, y, None, batch_size, verbose, steps, callbacks, max_queue_size,
        workers, use_multiprocessing, force, method_params, return_probabilities,
    )
    return (logits, maps, probabilities) if return_probabilities else (logits, maps)


def explain_predicted(
    method: Callable,
    model: keras.Model,
    x,
    top_k: int = 1,
    batch_size: Optional[int] = None,
    verbose: Union[str, int] = "auto",
    steps: Optional[int] = None,
    callbacks: Optional[List[keras.callbacks.Callback]] = None,
    max_queue_size: int = 10,
    workers: int = 1,
    use_multiprocessing: bool = False,
    force: bool = False,
    return_probabilities: bool = False,
    **method_params,
) -> Tuple[np.ndarray, ...]:
    """Explain each input's `top_k` highest-scoring units, as the model predicts them.

    The units are chosen from the method's own forward pass at the input (see
    `inspection.TopUnits`), so this costs what `explain` costs with known units: predicting
    first and then explaining would add a forward pass of every batch (for Grad-CAM, more
    than doubling the time). Meta methods choose with one forward pass at the input.

    Usage:

        exposed = inspection.expose(model)
        units, logits, maps = explain_predicted(methods.cams.gradcam, exposed, images,
                                                top_k=2, postprocessing=filters.positive_normalize)
        units[:, 0]  # each image's predicted class; maps[..., 0] explains it

    Args:
        method: an explaining function that chooses its units with
            `inspection.select_units` (every method of `explain_lib.methods` does).
        top_k: units per input, best first (on ties, the lower unit first).
        x: inputs, as for `explain`, without labels (a dataset of `(x, y)` is refused).
        return_probabilities: also return the chosen units' probabilities, from the same
            forward pass that chose them.
        Every other argument: as for `explain` (`unit_chunk_size` does not apply: the
        `top_k` units are explained in one step).

    Returns:
        `units` (N, top_k) int32, `logits` (N, top_k), their scores, and `maps`
        (N, H, W, top_k); with `return_probabilities`, also `probabilities` (N, top_k),
        last.

    Raises:
        ValueError: as `explain`; also for `top_k` < 1 or above the model's number of
            units, inputs that carry labels, or a method that does not choose units.
    """
    if int(top_k) < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}.")
    units, logits, maps, probabilities = _explain_batches(
        method, model, x, None, int(top_k), batch_size, verbose, steps, callbacks,
        max_queue_size, workers, use_multiprocessing, force, method_params, return_probabilities,
    )
    return (units, logits, maps, probabilities) if return_probabilities else (units, logits, maps)


def split_params(method: Callable, params: Dict[str, Any]
                 ) -> Tuple[Dict[str, Any], Dict[str, Any], int]:
    """`explain`'s keyword arguments split into (the method's parameters, `explain_step`'s,
    the unit chunk size), the method's checked by `check_method_params`."""
    method_params = dict(params)
    step_params = {k: method_params.pop(k) for k in STEP_PARAMS if k in method_params}
    if step_params.get("postprocessing") is not None:  # a name: its filter, or the error now
        step_params["postprocessing"] = filters.get(step_params["postprocessing"])
    unit_chunk_size = int(method_params.pop("unit_chunk_size", DEFAULT_UNIT_CHUNK_SIZE))
    if unit_chunk_size < 1:
        raise ValueError(f"unit_chunk_size must be at least 1, got {unit_chunk_size}.")
    check_method_params(method, method_params)
    return method_params, step_params, unit_chunk_size


def check_explain(method: Callable, model: keras.Model, input_shape: Sequence[Optional[int]],
                  units: int = 1, top_k: Optional[int] = None,
                  return_probabilities: bool = False, **params) -> None:
    """Check, before any work, that `explain` (or `explain_predicted`, with `top_k`) can run
    `method` with `params` on `model` for inputs of `input_shape` (without the batch axis):
    the parameters reach the method (`check_method_params`), and the compiled step traces on
    a symbolic batch, which runs the method's own checks of its parameter values and of the
    model. Nothing is computed; the traced step is cached for the calls that follow.

    Usage:

        check_explain(methods.integrated_gradients, model, (224, 224, 3), n_steps=0)
        # ValueError: integrated_gradients needs n_steps >= 1 ...

    Raises:
        ValueError: (or the TypeError of a malformed value) with what is wrong.
    """
    method_params, step_params, _ = split_params(method, params)
    spec = tf.TensorSpec((None, *input_shape), keras.config.floatx())
    _check_inputs(spec, tuple(step_params.get("spatial_axis", SPATIAL_AXIS)))
    if getattr(model, "run_eagerly", False):
        return  # an eager step has no trace: it is checked by its first batch
    width = units if top_k is None else int(top_k)
    trace(_compiled_step(model, method, method_params, step_params, spec, width,
                         selecting=top_k is not None, probabilities=return_probabilities))


def trace(step: Callable) -> None:
    """Trace a compiled step without running it, so that a value its method (or metric)
    refuses raises the method's own error now. Tracing prefixes the method's message with
    the frames it was raised in: the error raised here carries the message alone."""
    try:
        step.get_concrete_function()
    except (ValueError, TypeError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = lines[-1] if lines else repr(error)
        prefix = f"{type(error).__name__}: "
        raise type(error)(message[len(prefix):] if message.startswith(prefix) else message
                          ) from error


def _explain_batches(
    method, model, x, y, top_k, batch_size, verbose, steps, callbacks, max_queue_size,
    workers, use_multiprocessing, force, method_params, probabilities=False,
) -> Tuple[Optional[np.ndarray], np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """`explain`'s loop: (units, logits, maps, probabilities). With `top_k`, each batch's
    units are chosen by its step and returned first, else they come from `y` (None: every
    unit, in chunks) and come back None; probabilities are None unless asked for."""
    method_params, step_params, unit_chunk_size = split_params(method, method_params)
    spatial_axis = tuple(step_params.get("spatial_axis", SPATIAL_AXIS))
    if force:
        with _compiled_steps_lock:
            _compiled_steps.pop(model, None)
            _explained_models.pop(model, None)

    batches, num_batches = data_adapter.adapt(
        x, y, batch_size, steps, max_queue_size, workers, use_multiprocessing
    )
    if verbose == "auto":
        verbose = 0 if num_batches == 1 else 1
    if not callbacks and verbose == 0:
        callbacks = _NO_CALLBACKS  # (Keras' CallbackList converts each batch's logs)
    elif not isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = keras.callbacks.CallbackList(
            callbacks, add_progbar=verbose != 0, verbose=verbose, epochs=1,
            steps=num_batches, model=model,
        )

    all_units, all_logits, all_maps, all_probabilities = [], [], [], []
    units = None
    callbacks.on_predict_begin()
    for step, (x_batch, y_batch) in enumerate(batches):
        callbacks.on_predict_batch_begin(step)
        inputs = tf.convert_to_tensor(x_batch)
        if not inputs.dtype.is_floating:
            inputs = tf.cast(inputs, keras.config.floatx())
        _check_inputs(inputs, spatial_axis)
        if units is None:
            units = _units_of(model, inputs)
        spec = tf.TensorSpec.from_tensor(inputs)
        if top_k is not None:
            chosen, logits, maps, *scored = _selected(
                model, method, method_params, step_params, spec, units, top_k, inputs, y_batch,
                probabilities)
            all_units.append(chosen)
        else:
            logits, maps, *scored = _given(model, method, method_params, step_params, spec,
                                           _indices(y_batch, int(inputs.shape[0]), units),
                                           unit_chunk_size, inputs, probabilities)
        all_logits.append(logits)
        all_maps.append(maps)
        all_probabilities += scored
        logs = {"outputs": (logits, maps)}
        if top_k is not None:
            logs["units"] = all_units[-1]
        if probabilities:
            logs["probabilities"] = scored[0]
        callbacks.on_predict_batch_end(step, logs)

    if not all_logits:
        raise ValueError("x is empty: the input yielded no batch, so there is nothing to explain.")
    callbacks.on_predict_end()
    return tuple(
        None if not parts else parts[0] if len(parts) == 1 else np.concatenate(parts)
        for parts in (all_units, all_logits, all_maps, all_probabilities)
    )


class _NoCallbacks:
    """The callbacks of a silent call that was given none: nothing to do per batch."""

    def on_predict_begin(self):
        pass

    def on_predict_batch_begin(self, step):
        pass

    def on_predict_batch_end(self, step, logs):
        pass

    def on_predict_end(self):
        pass


_NO_CALLBACKS = _NoCallbacks()


def _given(model, method, method_params, step_params, spec, indices, unit_chunk_size, inputs,
           probabilities=False):
    """Explain a batch's given units (B, K), `unit_chunk_size` units per step: (logits,
    maps), and their probabilities if asked for."""
    parts = []  # per chunk: logits, maps[, probabilities], each (B, ..., chunk)
    for chunk, real in _chunks(indices, unit_chunk_size):
        fn = _compiled_step(model, method, method_params, step_params, spec, chunk.shape[1],
                            probabilities=probabilities)
        parts.append([output.numpy()[..., :real] for output in fn(inputs, tf.constant(chunk))])
    if len(parts) == 1:
        return tuple(parts[0])
    return tuple(np.concatenate(outputs, axis=-1) for outputs in zip(*parts))


def _selected(model, method, method_params, step_params, spec, units, top_k, inputs, y,
              probabilities=False):
    """Explain a batch's top `top_k` units, chosen by the step: (units, logits, maps), and
    their probabilities if asked for."""
    if y is not None:
        raise ValueError(
            "explain_predicted chooses the units itself, but the input carries labels (a "
            "dataset or generator of (x, y)): yield x alone, or give the units to explain."
        )
    if top_k > units:
        raise ValueError(
            f"top_k={top_k} exceeds the model's {units} output units: ask for at most {units}."
        )
    fn = _compiled_step(model, method, method_params, step_params, spec, top_k, selecting=True,
                        probabilities=probabilities)
    return tuple(output.numpy() for output in fn(inputs))


def partial_explain(method: Callable, **default_params) -> Callable:
    """`explain` with `method` and default parameters fixed: the shortcuts' factory.

    Usage:

        gradcam = partial_explain(methods.cams.gradcam,
                                  postprocessing=filters.positive_normalize)
        logits, maps = gradcam(model, x, y)
        units, logits, maps = gradcam.predicted(model, x, top_k=1)   # explain_predicted
    """

    def explain_with_method(model, x, y=None, **params):
        return explain(method, model, x, y, **{**default_params, **params})

    def predicted(model, x, top_k=1, **params):
        return explain_predicted(method, model, x, top_k, **{**default_params, **params})

    explain_with_method.__name__ = f"{method.__name__}_explain"
    explain_with_method.__doc__ = (
        f"`explain` with `{method.__name__}` and defaults {default_params}; "
        "`.predicted(model, x, top_k=1, ...)` is `explain_predicted` with the same.\n\n"
        f"{method.__doc__ or ''}"
    )
    predicted.__name__ = f"{method.__name__}_explain_predicted"
    explain_with_method.predicted = predicted
    return explain_with_method
