"""The engine's one loop: `explain`, `explain_predicted` and `evaluate` run it as Keras'
`predict` and `evaluate` run theirs; only their steps differ.

Separation of concerns:
- `engine.data` (the data adapter) owns reading: arrays, tensors, `tf.data`, generators and
  `keras.utils.PyDataset` become an ordered stream of batch dicts and their number, read
  ahead in background workers.
- `Loop` carries the arguments of `model.predict`'s loop (`batch_size`, `verbose`, `steps`,
  `callbacks`, the reading arguments, `force`) as one value, from the public function to
  `run`.
- `run` owns the epoch: it adapts the data, drives the callbacks and the progress bar
  (`callback_list`), calls the caller's batch function once per batch (which returns the
  batch's outputs and the logs the callbacks get) and gathers the outputs into numpy arrays.
- `StepCache` (one instance, `STEPS`) owns the compiled steps: built once per model, loop
  and key, reused by every later call as `model.predict` reuses its function, forgotten by
  `force=True`. It is keyed weakly by model and lives here, outside the model: nothing is
  written onto the user's model. It also keeps, per model, the model a step runs on
  (`explained_model`: a softmax head's scores before it).
- `compile_distributed` and `run_on_replicas` own compiling: a per-replica step becomes one
  `tf.function` over a global batch (batch dimension None: every batch size reuses one
  trace), split across the replicas of the model's `tf.distribute` strategy and run with
  `strategy.run` (under XLA when the model asks for `jit_compile`), the replicas' outputs
  concatenated in input order.
- `batch_tensor` and `model_inputs` own the inputs' way to the model: a batch travels to the
  devices in its own dtype (uint8 pixels: a quarter of float32's bytes), and the step casts
  it to floatx and applies the caller's `preprocessing` (TF ops), so that the method or
  metric gets float inputs, as it always does, and no float copy of a batch is made on the
  host.
- `engine.explaining` and `engine.evaluating` own what differs: their arguments and
  checks, their per-replica step (a method's, a metric's) and what one batch runs.

Usage (what `evaluate` does, in short):

    def one_batch(batch):
        step = STEPS.get(model, "evaluate", key, build)          # compiled once
        (scores,) = step(*tensors_of(batch))
        return (scores.numpy(),), {"outputs": scores.numpy()}

    (scores,) = run(model, x, {"y": y, "maps": maps}, Loop(batch_size=32), one_batch,
                    purpose="evaluate")
"""

import collections
import collections.abc
import hashlib
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from explain_lib import inspection
from explain_lib.engine import data as data_adapter

MAX_STEPS_PER_MODEL = 32
"""Compiled steps kept per model and loop (the least recently used go first), so that calls
with ever new parameter values (a fresh baseline array each time, say) do not pile up
traces."""


@dataclass(frozen=True)
class Loop:
    """The arguments of `model.predict`'s loop that `explain`, `explain_predicted` and
    `evaluate` share (see `explain` for each), carried as one value."""

    batch_size: Optional[int] = None
    verbose: Union[str, int] = "auto"
    steps: Optional[int] = None
    callbacks: Optional[List[keras.callbacks.Callback]] = None
    max_queue_size: int = 10
    workers: int = 1
    use_multiprocessing: bool = False
    force: bool = False


BatchFunction = Callable[[data_adapter.Batch], Tuple[Tuple[np.ndarray, ...], Dict[str, Any]]]


def run(
    model: Optional[keras.Model],
    x,
    aligned: Optional[Dict[str, Any]],
    arguments: Loop,
    one_batch: BatchFunction,
    parse: Callable[[Any], data_adapter.Batch] = data_adapter.as_batch,
    purpose: str = "explain",
) -> Tuple[np.ndarray, ...]:
    """Run `one_batch` over the batches of `x` (and the arrays `aligned` with it; see
    `data.adapt`) with callbacks and a progress bar, and gather its outputs.

    `one_batch(batch)` returns `(outputs, logs)`: a tuple of numpy arrays with the batch's
    samples first, and the logs `on_predict_batch_end` gets. The result is one array per
    output, the batches' concatenated. With `arguments.force`, everything the engine built for
    `model` is built anew.

    Raises:
        ValueError: for data the adapter refuses, or a stream that yields no batch.
    """
    if arguments.force and model is not None:
        STEPS.forget(model)
    batches, num_batches = data_adapter.adapt(
        x, aligned, arguments.batch_size, arguments.steps, arguments.max_queue_size,
        arguments.workers, arguments.use_multiprocessing, parse, purpose,
    )
    callbacks = callback_list(arguments.callbacks, arguments.verbose, num_batches, model)
    parts: List[Tuple[np.ndarray, ...]] = []
    callbacks.on_predict_begin()
    for number, batch in enumerate(batches):
        callbacks.on_predict_batch_begin(number)
        outputs, logs = one_batch(batch)
        parts.append(outputs)
        callbacks.on_predict_batch_end(number, logs)
    if not parts:
        raise ValueError(
            f"x is empty: the input yielded no batch, so there is nothing to {purpose}.")
    callbacks.on_predict_end()
    return tuple(output[0] if len(output) == 1 else np.concatenate(output)
                 for output in zip(*parts))


def callback_list(callbacks, verbose: Union[str, int], num_batches: Optional[int],
                  model: Optional[keras.Model]):
    """The callbacks a loop calls, with a progress bar when `verbose` asks for one ("auto":
    when there is more than one batch), as `model.predict` builds them."""
    if verbose == "auto":
        verbose = 0 if num_batches == 1 else 1
    if not callbacks and verbose == 0:
        return _NO_CALLBACKS  # (Keras' CallbackList converts each batch's logs)
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks
    return keras.callbacks.CallbackList(
        callbacks, add_progbar=verbose != 0, verbose=verbose, epochs=1, steps=num_batches,
        model=model,
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


# --- the compiled steps --------------------------------------------------------------------------


class StepCache:
    """What the engine builds per model, kept outside the model: per model (weakly: an entry
    goes with its model) and per section ("explain", "evaluate", the explained models), the
    least recently used entry first.

    Usage:

        step = STEPS.get(model, "explain", key, lambda: build(...), keep=params)
        STEPS.forget(model)                    # force=True: everything is built anew
        STEPS.section("explain")[model]        # {key: (step, params)}, oldest first
    """

    def __init__(self):
        self._models: "weakref.WeakKeyDictionary[Any, Dict[str, collections.OrderedDict]]" = (
            weakref.WeakKeyDictionary())
        self._without_model: Dict[str, collections.OrderedDict] = {}
        # Reentrant: building a step asks for its model's explained model. Threads of one
        # worker explain batches at once.
        self.lock = threading.RLock()

    def get(self, model, section: str, key, build: Callable[[], Any], keep: Any = None,
            limit: Optional[int] = MAX_STEPS_PER_MODEL):
        """The entry of `model` (None: steps that need no model) in `section` under `key`,
        built by `build()` on first use (an error it raises stores nothing). `keep` is kept
        alive with it (parameters the key holds by identity); at most `limit` entries are
        kept per model and section."""
        with self.lock:
            sections = self._without_model if model is None else self._models.setdefault(
                model, {})
            entries = sections.setdefault(section, collections.OrderedDict())
            if key in entries:
                entries.move_to_end(key)
            else:
                entries[key] = (build(), keep)
                while limit is not None and len(entries) > limit:
                    entries.popitem(last=False)
            return entries[key][0]

    def forget(self, model) -> None:
        """Drop everything built for `model`, so that the next call builds it anew."""
        with self.lock:
            self._models.pop(model, None)

    def section(self, name: str) -> "collections.abc.Mapping":
        """A live read-only view of one section: model -> {key: (entry, kept)}."""
        return _Section(self, name)


class _Section(collections.abc.Mapping):
    def __init__(self, cache: StepCache, name: str):
        self._cache, self._name = cache, name

    def __getitem__(self, model) -> "collections.OrderedDict":
        return self._cache._models[model][self._name]

    def __iter__(self) -> Iterator:
        return iter([model for model, sections in list(self._cache._models.items())
                     if self._name in sections])

    def __len__(self) -> int:
        return len(list(iter(self)))


STEPS = StepCache()
"""The engine's one cache of what it builds per model."""


def freeze(value) -> Any:
    """A hashable stand-in for a parameter value, for a step's key: arrays and eager tensors
    by content (a new array of the same values reuses the step), other unhashable values by
    identity."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
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


def trace(step: Callable) -> Callable:
    """A compiled step (a `tf.function` with an input signature) traced without running it:
    its concrete function, whose calls skip `tf.function`'s matching of arguments to its
    traces (a few tenths of a millisecond a batch), and a value its method (or metric)
    refuses raises the method's own error now. Tracing prefixes the method's message with
    the frames it was raised in: the error raised here carries the message alone. A step
    that is no `tf.function` (a model that runs eagerly), or one traced already, is
    returned as it is."""
    if not hasattr(step, "get_concrete_function"):
        return step
    try:
        return step.get_concrete_function()
    except (ValueError, TypeError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = lines[-1] if lines else repr(error)
        prefix = f"{type(error).__name__}: "
        raise type(error)(message[len(prefix):] if message.startswith(prefix) else message
                          ) from error


def uses_xla(model: keras.Model) -> bool:
    """Whether the model asks for XLA (`compile(jit_compile=...)`, resolved like Keras)."""
    return bool(getattr(model, "jit_compile", False)) and not getattr(model, "run_eagerly", False)


def compile_distributed(model: keras.Model, replica_step: Callable,
                        signature: Sequence[tf.TensorSpec]) -> Callable:
    """`replica_step` (tensors sharing a batch axis -> a tuple of tensors with that batch
    axis) as one step over a global batch, run like Keras runs `predict_step`: the batch is
    split across the replicas of the model's strategy (`run_on_replicas`), under XLA when
    the model asks for it, compiled with `signature` (whose batch dimension is None, so that
    every batch size shares one trace, traced here: `trace`) unless the model runs eagerly.

    Usage (the steps `explain` and `evaluate` build):

        step = compile_distributed(model, replica_step, [tf.TensorSpec((None, 32, 32, 3))])
        outputs = step(images)
    """
    strategy = model.distribute_strategy
    if uses_xla(model):
        replica_step = tf.function(replica_step, jit_compile=True)

    def step(*tensors):
        return run_on_replicas(strategy, replica_step, tensors)

    if getattr(model, "run_eagerly", False):
        return step
    return trace(tf.function(step, input_signature=list(signature)))


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


# --- the model a step runs on, and its units ----------------------------------------------------


def explained_model(model: keras.Model, scores: str = "logits"
                    ) -> Tuple[keras.Model, Optional[str]]:
    """The model a method is given to explain `model` (and a metric scores), and how its
    scores become the model's probabilities (`inspection.probabilities_of`'s `activation`),
    built once per model and kept in `STEPS`, not on the model.

    With `scores="logits"` (the default), a model ending in a softmax or sigmoid
    (`inspection.find_head`) is explained on its scores before it (`inspection.
    scores_model`, the same layers and weights), as a linear head would be; with
    `scores="output"`, on its output as it is (its probabilities). A final softmax or
    sigmoid whose scores cannot be reached (`keras.ops.softmax` outside any layer) gets a
    warning, and its output is explained as it is; so is the first output of a model with
    several (an exposed one: `inspection.expose` takes the scores by default). A model
    without a graph (subclassed) is explained on its output.

    Usage:

        explained, activation = explained_model(model)   # (scores model, "softmax")
    """
    return STEPS.get(model, "explained", scores, lambda: _explained(model, scores), limit=None)


def _explained(model: keras.Model, scores: str) -> Tuple[keras.Model, Optional[str]]:
    if scores not in inspection.SCORES:
        raise ValueError(f"scores must be one of {', '.join(inspection.SCORES)}, not "
                         f"{scores!r}.")
    head = inspection.find_head(model)
    outputs = getattr(model, "outputs", None) or []
    if head.activation and len(outputs) > 1:
        warnings.warn(f"{model.name!r} ends in a {head.activation} but has {len(outputs)} "
                      "outputs: its first output is explained as it is (inspection.expose "
                      "exposes a model on its scores).", stacklevel=5)
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
            "scores='output' to explain its output as it is.", stacklevel=5)
        return model, "identity"
    return model, None


def units_of(model: keras.Model, inputs: tf.Tensor,
             preprocessing: Optional[Callable] = None) -> int:
    """How many output units the model's logits (its first output) have."""
    outputs = getattr(model, "outputs", None)
    if outputs and outputs[0].shape[-1] is not None:
        return int(outputs[0].shape[-1])
    outputs = keras.tree.flatten(model(model_inputs(inputs[:1], preprocessing),
                                       training=False))
    return int(outputs[0].shape[-1])


def unit_indices(y, batch: int, units: int) -> np.ndarray:
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


def batch_tensor(x) -> tf.Tensor:
    """A batch of inputs as a tensor, in its own dtype: uint8 pixels stay uint8 on their way
    to the devices (a quarter of float32's bytes); the step casts them (`model_inputs`)."""
    return x if tf.is_tensor(x) else tf.convert_to_tensor(x)


def model_inputs(inputs: tf.Tensor, preprocessing: Optional[Callable] = None) -> tf.Tensor:
    """What a step gives the model (and the method, the metric) for a batch of `inputs`, run
    inside the compiled step: inputs not in a float type cast to the one Keras computes in
    (uint8 images become floatx), then `preprocessing`, a function of that float batch made
    of TF ops (`lambda x: x / 255.0`, `keras.applications.resnet_v2.preprocess_input`).
    Maps and scores are those of its output: the model's input.

    Usage (the first line of `explaining.explain_step` and of the evaluate step):

        inputs = model_inputs(inputs, preprocessing)
    """
    if not inputs.dtype.is_floating:
        inputs = tf.cast(inputs, keras.config.floatx())
    if preprocessing is not None:
        inputs = preprocessing(inputs)
    return inputs
