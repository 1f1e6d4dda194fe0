"""Explaining: `explain` is to an explaining method what `predict` is to `call`.

It runs the engine's one loop (`engine.loop`, which owns the data adapter, the cache of
compiled steps, their distribution across replicas and the callbacks); this module owns what
is particular to explaining:
- `explain_step` runs one method on one batch on one replica: it makes the model's inputs
  of the batch (`loop.model_inputs`: uint8 pixels cast to floatx, then the caller's
  `preprocessing`, inside the compiled step), calls the method on them, checks the shapes
  it returned, post-processes the maps and resizes them.
- `_make_step` builds, once per model, method, parameters, input signature and number of
  units (kept in `loop.STEPS`), the compiled step running `explain_step` on every replica.
- `_Explaining`, the state of one call, says what each batch runs: which units to explain
  (all of them when `y` is None, in chunks of `unit_chunk_size` so working memory stays
  bounded), or for `explain_predicted`, steps that choose each input's top-K units from the
  method's own forward pass (`inspection.TopUnits`) and return them with the maps. Either
  can return each explained unit's probability at the input, recorded from that same
  forward pass by the selector the method is given (`inspection.UnitSelector`): no forward
  pass of the engine's own.
- `split_params`, `check_method_params` and `check_explain` refuse, before any work, what
  would not reach the method or what it refuses.
"""

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from explain_lib import filters, inspection, utils
from explain_lib.engine import data as data_adapter
from explain_lib.engine import loop
from explain_lib.engine.loop import (
    MAX_STEPS_PER_MODEL,
    STEPS,
    compile_distributed,
    explained_model,
    run_on_replicas,  # noqa: F401 (part of this module's API)
)
from explain_lib.methods.common import METHOD_ARGUMENTS, check_parameter_kinds, parameters_of
from explain_lib.utils import SPATIAL_AXIS

STEP_PARAMS = ("spatial_axis", "preprocessing", "postprocessing", "resizing", "scores")
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

_compiled_steps = STEPS.section("explain")
"""The compiled explain steps of every model: model -> {key: (step, parameters)}."""

_uses_xla = loop.uses_xla  # (whether a model runs its steps under XLA)


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
            "(and explain itself spatial_axis, preprocessing, postprocessing, resizing, "
            "unit_chunk_size and the arguments of model.predict's loop)."
        )
    check_parameter_kinds(name, method, params)


def explain_step(
    model: keras.Model,
    method: Callable,
    data: Tuple[tf.Tensor, tf.Tensor],
    spatial_axis: Sequence[int] = SPATIAL_AXIS,
    postprocessing: Optional[Callable] = None,
    resizing: Union[bool, Sequence[int], None] = True,
    preprocessing: Optional[Callable] = None,
    **params,
) -> Tuple[tf.Tensor, tf.Tensor]:
    """Explain one batch: `preprocessing`, `method`, then `postprocessing`, then resizing.

    Args:
        model: the model given to the method.
        method: an explaining function `(model, inputs, indices, ...) -> (logits, maps)`.
        data: `(inputs, indices)`, inputs (B, ..., H, W, C) and indices (B, K), or an
            `inspection.UnitSelector` (`TopUnits`, `GivenUnits`), which holds the units
            chosen and their probabilities once this returns. Inputs not in a float type
            (uint8 pixels) are cast to floatx first (`loop.model_inputs`).
        spatial_axis: the spatial axes of `inputs` (and of the maps).
        postprocessing: a filter `f(maps, axis=spatial_axis)` applied to the raw maps, or
            its name in `explain_lib.filters` ("positive_normalize").
        resizing: True resizes the maps to the inputs' spatial size, a size resizes to that
            size, False or None keeps the method's resolution.
        preprocessing: a function of the float inputs made of TF ops (`lambda x: x / 255`,
            `keras.applications.resnet_v2.preprocess_input`), applied before the method:
            the method explains (and its maps are of) its output, the model's input.
        **params: passed on to `method`.

    Returns:
        `logits` (B, K), the explained units' scores, and `maps` (B, ..., H', W', K).
    """
    inputs, indices = data_adapter.unpack(data)
    inputs = loop.model_inputs(inputs, preprocessing)
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
    key = (method, loop.freeze(method_params), loop.freeze(step_params),
           tuple(input_spec.shape[1:]), input_spec.dtype, units, selecting, probabilities)
    # The params are kept with the step so that identity-keyed values stay alive.
    return STEPS.get(model, "explain", key, lambda: _make_step(
        model, method, method_params, step_params, input_spec, units, selecting,
        probabilities), keep=method_params, limit=MAX_STEPS_PER_MODEL)


def _make_step(model, method, method_params, step_params, input_spec, units,
               selecting, probabilities=False) -> Callable:
    step_params = dict(step_params)
    explained, activation = explained_model(model, step_params.pop("scores", "logits"))
    # The step refers to the models weakly, so that the cache entry does not keep them
    # alive (`loop.STEPS` keeps the explained one while the model lives).
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
            or `(x, y)`, a generator of such batches, or a `keras.utils.PyDataset`. Inputs
            travel to the devices in their own dtype: uint8 pixels are cast to floatx (and
            preprocessed) inside the compiled step, a quarter of float32's bytes on the way.
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
        force: rebuild everything the engine built for this model (its compiled steps,
            the model its scores are explained on). By default a step built for the
            same model, method, parameters, input signature and number of units is reused,
            as `model.predict` reuses its function: a second call traces nothing.
        return_probabilities: also return each explained unit's probability at the input
            (the softmax of the model's logits over its units; the sigmoid for one unit),
            taken from the method's own forward pass at the input: the method is given an
            `inspection.GivenUnits` selector, which records them when the method calls
            `inspection.select_units` (every method of `explain_lib.methods` does). No
            forward pass is added (but for meta methods, which make one at the input).
        **method_params: `spatial_axis`, `preprocessing`, `postprocessing` and `resizing`
            go to `explain_step` (`preprocessing`: a function of the float inputs, TF ops,
            run in the step before the method; the maps are of its output);
            `unit_chunk_size` (default 16) bounds how many units one step
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
    explaining = _Explaining.of(method, model, method_params, None, return_probabilities)
    return explaining.run(x, y, loop.Loop(batch_size, verbose, steps, callbacks,
                                          max_queue_size, workers, use_multiprocessing, force))


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
    explaining = _Explaining.of(method, model, method_params, int(top_k),
                                return_probabilities)
    return explaining.run(x, None, loop.Loop(batch_size, verbose, steps, callbacks,
                                             max_queue_size, workers, use_multiprocessing,
                                             force))


def split_params(method: Callable, params: Dict[str, Any]
                 ) -> Tuple[Dict[str, Any], Dict[str, Any], int]:
    """`explain`'s keyword arguments split into (the method's parameters, `explain_step`'s,
    the unit chunk size), the method's checked by `check_method_params`."""
    method_params = dict(params)
    step_params = {k: method_params.pop(k) for k in STEP_PARAMS if k in method_params}
    if step_params.get("postprocessing") is not None:  # a name: its filter, or the error now
        step_params["postprocessing"] = filters.get(step_params["postprocessing"])
    check_preprocessing(step_params.get("preprocessing"))
    unit_chunk_size = int(method_params.pop("unit_chunk_size", DEFAULT_UNIT_CHUNK_SIZE))
    if unit_chunk_size < 1:
        raise ValueError(f"unit_chunk_size must be at least 1, got {unit_chunk_size}.")
    check_method_params(method, method_params)
    return method_params, step_params, unit_chunk_size


def check_preprocessing(preprocessing) -> None:
    """Refuse a `preprocessing` that is neither None nor a function (of a batch of float
    inputs, made of TF ops)."""
    if preprocessing is not None and not callable(preprocessing):
        raise ValueError(
            f"preprocessing must be a function of a batch of float inputs made of TF ops "
            f"(lambda x: x / 255.0, keras.applications.resnet_v2.preprocess_input), not "
            f"{preprocessing!r}.")


def check_explain(method: Callable, model: keras.Model, input_shape: Sequence[Optional[int]],
                  units: int = 1, top_k: Optional[int] = None,
                  return_probabilities: bool = False, input_dtype=None, **params) -> None:
    """Check, before any work, that `explain` (or `explain_predicted`, with `top_k`) can run
    `method` with `params` on `model` for inputs of `input_shape` (without the batch axis)
    and `input_dtype` (floatx by default; "uint8" for the step that takes pixels):
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
    spec = tf.TensorSpec((None, *input_shape), input_dtype or keras.config.floatx())
    _check_inputs(spec, tuple(step_params.get("spatial_axis", SPATIAL_AXIS)))
    if getattr(model, "run_eagerly", False):
        return  # an eager step has no trace: it is checked by its first batch
    width = units if top_k is None else int(top_k)
    _compiled_step(model, method, method_params, step_params, spec, width,  # built traced
                   selecting=top_k is not None, probabilities=return_probabilities)


@dataclass
class _Explaining:
    """One call of `explain` or `explain_predicted`: what every batch of the loop needs (its
    step's model, method and parameters, which units), and what the first batch tells
    (the model's number of units)."""

    model: keras.Model
    method: Callable
    method_params: Dict[str, Any]
    step_params: Dict[str, Any]
    unit_chunk_size: int
    top_k: Optional[int] = None
    """`explain_predicted`'s units per input, chosen by the step; None: `y` says them."""
    probabilities: bool = False
    """Whether the steps also return the explained units' probabilities."""
    units: Optional[int] = None
    """The model's number of output units, read at the first batch."""

    @classmethod
    def of(cls, method: Callable, model: keras.Model, params: Dict[str, Any],
           top_k: Optional[int], probabilities: bool) -> "_Explaining":
        """The state of a call with `explain`'s keyword arguments `params` (checked by
        `split_params`)."""
        method_params, step_params, unit_chunk_size = split_params(method, params)
        return cls(model, method, method_params, step_params, unit_chunk_size, top_k,
                   probabilities)

    @property
    def spatial_axis(self) -> Tuple[int, ...]:
        return tuple(self.step_params.get("spatial_axis", SPATIAL_AXIS))

    def run(self, x, y, arguments: loop.Loop) -> Tuple[np.ndarray, ...]:
        """The loop over `x` (and `y`): (units, logits, maps) with `top_k`, else (logits,
        maps); the probabilities last when asked for."""
        if y is not None and data_adapter.is_stream(x):
            raise ValueError(f"y must be None when x is a {type(x).__name__}: make it yield "
                             "(x, y) batches instead.")
        return loop.run(self.model, x, {"y": y}, arguments, self.batch)

    def batch(self, batch: data_adapter.Batch
              ) -> Tuple[Tuple[np.ndarray, ...], Dict[str, Any]]:
        """One batch's outputs (see `run`) and the logs the callbacks get: `outputs`
        (logits, maps), and `units` and `probabilities` when returned."""
        inputs = loop.batch_tensor(batch["x"])
        _check_inputs(inputs, self.spatial_axis)
        if self.units is None:
            self.units = loop.units_of(self.model, inputs,
                                       self.step_params.get("preprocessing"))
        spec = tf.TensorSpec.from_tensor(inputs)
        if self.top_k is not None:
            outputs = self._selected(spec, inputs, batch["y"])
            logits, maps = outputs[1:3]
            logs = {"outputs": (logits, maps), "units": outputs[0]}
        else:
            indices = loop.unit_indices(batch["y"], int(inputs.shape[0]), self.units)
            outputs = self._given(spec, indices, inputs)
            logs = {"outputs": outputs[:2]}
        if self.probabilities:
            logs["probabilities"] = outputs[-1]
        return outputs, logs

    def _given(self, spec, indices, inputs) -> Tuple[np.ndarray, ...]:
        """Explain a batch's given units (B, K), `unit_chunk_size` units per step: (logits,
        maps), and their probabilities if asked for."""
        parts = []  # per chunk: logits, maps[, probabilities], each (B, ..., chunk)
        for chunk, real in _chunks(indices, self.unit_chunk_size):
            fn = _compiled_step(self.model, self.method, self.method_params, self.step_params,
                                spec, chunk.shape[1], probabilities=self.probabilities)
            parts.append([output.numpy()[..., :real]
                          for output in fn(inputs, tf.constant(chunk))])
        if len(parts) == 1:
            return tuple(parts[0])
        return tuple(np.concatenate(outputs, axis=-1) for outputs in zip(*parts))

    def _selected(self, spec, inputs, y) -> Tuple[np.ndarray, ...]:
        """Explain a batch's top `top_k` units, chosen by the step: (units, logits, maps),
        and their probabilities if asked for."""
        if y is not None:
            raise ValueError(
                "explain_predicted chooses the units itself, but the input carries labels (a "
                "dataset or generator of (x, y)): yield x alone, or give the units to explain."
            )
        if self.top_k > self.units:
            raise ValueError(
                f"top_k={self.top_k} exceeds the model's {self.units} output units: ask for at "
                f"most {self.units}."
            )
        fn = _compiled_step(self.model, self.method, self.method_params, self.step_params,
                            spec, self.top_k, selecting=True, probabilities=self.probabilities)
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
