"""The explaining side of the job, free of Beam: load a model the way a worker should, pick
the method by name, and explain a batch of images through `explain_lib.explain`.

Separation of concerns:

- `load_keras_model` reads a `.keras` file from any Beam filesystem (local, `gs://`, ...),
  retrying transient storage errors and naming a missing or damaged file as such;
  `shared_model` keeps it loaded once per process, so that the launcher and in-process
  workers share one load (and its compiled steps).
- `make_strategy` picks the worker's `tf.distribute` strategy: a `MirroredStrategy` over its
  GPUs (or given devices), the default strategy on CPU-only workers.
- `resolve_method`, `resolve_method_params` and `resolve_preprocess` turn the command
  line's names and JSON into functions.
- `inspect_model` is what the launcher learns before the job starts (input size, number of
  units), so that bad options fail at once rather than on every worker.
- `ExplainerConfig` is everything a worker needs, as one frozen value.
- `Explainer` holds one loaded model and method; `Explainer.explain` explains a batch:
  given units with `explain_lib.explain`, and the top-K predicted units where none were
  given with `explain_lib.explain_predicted`, which chooses them from the method's own
  forward pass (no separate prediction pass), which also gives each unit's probability;
  then it scores the batch's maps with the configured metrics (`explain_lib.evaluate`, one
  call per metric on the whole batch). `pipeline.worker.handler` wraps it for Beam's
  RunInference; the benchmark and tests can use it directly.

Usage:

    explainer = Explainer.load(ExplainerConfig("model.keras", "gradcam"))
    explanations = explainer.explain(images, [None] * len(images))   # top-1 units
    explanations[0].units, explanations[0].logits, explanations[0].maps.shape
"""

import collections
import json
import os
import shutil
import tempfile
import threading
import weakref
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

import keras
import numpy as np
import tensorflow as tf

import explain_lib
from explain_lib import filters, inspection, methods
from explain_lib import metrics as explain_metrics
from explain_lib.engine import evaluating, explaining
from explain_lib.utils import with_dtype_policy
from pipeline.io.retry import Retry

PREPROCESSING = ("none", "unit", "symmetric")
"""Built-in `--preprocess` names; any `keras.applications` module name also works."""


# --- model files and devices ----------------------------------------------------------------


def load_keras_model(path: str, compile: bool = False, retry: Retry = Retry()) -> keras.Model:
    """Load a Keras model file from any filesystem Beam knows (local, `gs://`, ...).

    Keras reads local files only, so a remote file is first copied to a local temporary
    file (keeping its suffix, which tells Keras the format); looking for it and copying it
    are retried on transient errors (`pipeline.io.retry`). Raises FileNotFoundError for a
    missing file, and ValueError naming the file for one that is corrupt or truncated.
    """
    if os.path.exists(path):
        return _load_local(path, path, compile)
    from apache_beam.io.filesystems import FileSystems

    if not retry.call(lambda: FileSystems.exists(path), f"Looking for model file {path}"):
        raise FileNotFoundError(f"Model file not found: {path}.")
    suffix = os.path.splitext(path)[1] or ".keras"
    directory = tempfile.mkdtemp(prefix="explain_model_")
    local = os.path.join(directory, "model" + suffix)

    def copy():
        with FileSystems.open(path, compression_type="uncompressed") as source, \
                open(local, "wb") as target:
            shutil.copyfileobj(source, target, length=16 << 20)

    try:
        retry.call(copy, f"Copying model file {path}")
        return _load_local(local, path, compile)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _load_local(local: str, path: str, compile: bool) -> keras.Model:
    """Keras' `load_model` of a local file, with the errors of a damaged file said as such
    (Keras says "File not found" for a .keras file that is not a zip archive)."""
    if local.endswith(".keras") and not zipfile.is_zipfile(local):
        raise ValueError(f"Model file {path} is corrupt or truncated: it is not a .keras "
                         "(zip) archive.")
    try:
        return keras.saving.load_model(local, compile=compile)
    except PermissionError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise ValueError(f"Model file {path} is corrupt or truncated "
                         f"({type(error).__name__}: {error}).") from None


def make_strategy(devices: Optional[Sequence[str]] = None) -> tf.distribute.Strategy:
    """The strategy a worker explains under: a `MirroredStrategy` over `devices` if given,
    else over the visible GPUs; the default strategy when there is no GPU."""
    _grow_gpu_memory()
    if devices:
        return tf.distribute.MirroredStrategy(devices=list(devices))
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy(devices=[gpu.name for gpu in gpus])
    return tf.distribute.get_strategy()


def _grow_gpu_memory() -> None:
    """Let TensorFlow take GPU memory as it needs it rather than all at once, so that
    several SDK processes on one GPU machine (Dataflow starts one per core unless told
    otherwise) can share a GPU. Possible only before TensorFlow initialises its GPUs."""
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: keep its setting
            pass


# --- names to functions -----------------------------------------------------------------------


def resolve_method(name: str) -> methods.Method:
    """The method registered in `explain_lib.methods` as `name` (its registry entry says
    whether it takes an exposed model, its conventional post-processing and parameters).

    Raises ValueError listing the known methods when there is no such method.
    """
    return methods.get(name)


def resolve_method_params(params: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Method parameters as JSON gives them, turned into what `explain` takes:
    `postprocessing` names a filter in `explain_lib.filters` (or is null), `resizing` is
    true, false or [H, W], `spatial_axis` a list of axes; the rest passes through (the
    methods take their own parameters by name: `"gradient_filter": "square"`).

    Usage:

        resolve_method_params({"postprocessing": "positive_normalize", "resizing": [7, 7]})
    """
    if isinstance(params, str):
        params = json.loads(params) if params.strip() else {}
    params = dict(params or {})
    if isinstance(params.get("postprocessing"), str):
        params["postprocessing"] = filters.get(params["postprocessing"])
    if isinstance(params.get("resizing"), list):
        params["resizing"] = tuple(int(v) for v in params["resizing"])
    if isinstance(params.get("spatial_axis"), list):
        params["spatial_axis"] = tuple(int(v) for v in params["spatial_axis"])
    return params


def explain_params(method: methods.Method, given: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """What the job passes to `explain` for `method`: its conventional post-processing and
    resizing (`Method.explain_defaults`), overridden by the `given` JSON parameters.

    Raises ValueError for a parameter the method does not take (the names are checked here,
    without a model; `inspect_model` traces the method to check the values).
    """
    params = {**method.explain_defaults, **resolve_method_params(given)}
    explaining.split_params(method.function, params)
    return params


def received_params(method: methods.Method, params: Mapping[str, Any]) -> Dict[str, Any]:
    """Every parameter `method` receives from `explain` with `params`: its defaults, with
    the given values in their place (what the manifest records)."""
    method_params, _, _ = explaining.split_params(method.function, dict(params))
    return {**method.parameters, **method_params}


def resolve_preprocess(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The input preprocessing called `name`, a function of a float32 batch in [0, 255]:
    "none" (keep [0, 255]: models carrying their own preprocessing layers), "unit" ([0, 1]),
    "symmetric" ([-1, 1]), or the name of a `keras.applications` module (for instance
    "resnet_v2", "efficientnet") whose `preprocess_input` is used."""
    if name in (None, "", "none"):
        return _identity
    if name == "unit":
        return _to_unit
    if name == "symmetric":
        return _to_symmetric
    module = getattr(keras.applications, name, None)
    function = getattr(module, "preprocess_input", None)
    if function is None:
        modules = [n for n in dir(keras.applications)
                   if hasattr(getattr(keras.applications, n), "preprocess_input")]
        raise ValueError(
            f"Unknown preprocessing {name!r}: use one of {', '.join(PREPROCESSING)} or a "
            f"keras.applications module: {', '.join(sorted(modules))}."
        )
    return lambda x: np.asarray(function(np.array(x, np.float32, copy=True)), np.float32)


def _identity(x):
    return x


def _to_unit(x):
    return x / np.float32(255.0)


def _to_symmetric(x):
    return x / np.float32(127.5) - np.float32(1.0)


# --- what the launcher checks -----------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What the launcher needs to know of the model: its input shape (H, W, C), entries
    None when the model takes any size, and its number of output units."""

    input_shape: Tuple[Optional[int], Optional[int], Optional[int]]
    num_units: int


def inspect_model(
    model_or_path,
    method: Optional[str] = None,
    activation_layer: Optional[str] = None,
    method_params: Optional[Mapping[str, Any]] = None,
    image_size: Optional[Sequence[int]] = None,
    top_k: int = 1,
    metrics: Optional[Mapping[str, Mapping[str, Any]]] = None,
    ground_truth: Optional[str] = None,
    named_units: bool = False,
) -> ModelInfo:
    """Load the model once (in the launcher) to read its input shape and number of units,
    and check everything the workers would otherwise find out on every record: that the
    model takes one (H, W, C) image input and its first output is (batch, units); that
    `top_k` does not exceed its units; given a `method`, that the method can expose
    `activation_layer` and runs with `method_params`, giving the units' probabilities
    (`explaining.check_explain` traces it on a symbolic batch of `image_size`, or the
    model's size, without computing anything); and that each of `metrics` (name ->
    parameters) runs with its parameters and the `ground_truth` ("boxes", "masks" or None;
    `evaluating.check_evaluate` traces it the same way). The step traced is the one the
    workers will run, and an in-process runner's worker reuses it: with `named_units` (the
    records name their units, `--units_key`), the step explaining one given unit per record
    (a label); else the step explaining each record's top `top_k` units.

    Raises:
        ValueError: one line saying what is wrong.
    """
    model = model_or_path
    if isinstance(model_or_path, str):
        model = shared_model(model_or_path)
    if not getattr(model, "inputs", None) or len(model.inputs) != 1:
        raise ValueError("The pipeline explains models with one image input (B, H, W, C).")
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3:
        raise ValueError(
            f"The model's input has shape {shape}; the pipeline needs (H, W, C) images."
        )
    logits = keras.tree.flatten(model.outputs)[0]
    if len(logits.shape) != 2 or logits.shape[-1] is None:
        raise ValueError(
            f"The model's first output has shape {tuple(logits.shape)}; the pipeline explains "
            "scores of shape (batch, units), one per class: a model whose first output is a "
            "map (segmentation) or has an unknown number of units needs a head that pools it "
            "to (batch, units) first."
        )
    num_units = int(logits.shape[-1])
    if not 1 <= top_k <= num_units:
        raise ValueError(
            f"--top_k {top_k} does not fit the model's {num_units} output units: ask for 1 to "
            f"{num_units}."
        )
    if method is not None:
        registered = resolve_method(method)
        params = explain_params(registered, method_params)
        explained = (exposed(model, activation_layer, params["scores"]) if registered.exposed
                     else model)
        size = shape[:2] if None not in shape[:2] or not image_size else tuple(image_size)
        if None not in size:
            explaining.check_explain(registered.function, explained, (*size, shape[2] or 3),
                                     top_k=None if named_units else top_k,
                                     return_probabilities=True, **params)
            for name, metric_params in (metrics or {}).items():
                evaluating.check_evaluate(name, model, (*size, shape[2] or 3), size,
                                          units=top_k, ground_truth=ground_truth,
                                          scores=params["scores"], **metric_params)
    return ModelInfo(shape, num_units)


# --- explaining ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainerConfig:
    """What a worker needs to explain, as one value: built and checked once in the launcher
    (`pipeline.Explain`), carried to every worker inside the handler.

    Attributes:
        model_path: a Keras `.keras` file on any Beam filesystem.
        method: a registered method name (`explain_lib.methods.REGISTRY`).
        method_params: its parameters and `explain`'s, as JSON values (see
            `resolve_method_params`; the map size's `resizing` included).
        activation_layer: the layer CAM methods weigh (default: the input of the last
            global pooling layer).
        preprocess: "none", "unit", "symmetric" or a `keras.applications` module name.
        top_k: units explained for records that name none.
        precision: a Keras dtype policy the model computes under
            (`explain_lib.utils.PRECISIONS`); maps and logits are float32 whatever it is.
        jit_compile: explain under XLA (the engine compiles its step with XLA for a model
            that asks for it, as Keras' `predict` does).
        devices: devices of the worker's `MirroredStrategy` (default: its GPUs).
        metrics: the metrics scoring each batch's maps, by name, with their parameters
            (JSON values): `{"deletion": {"n_steps": 20}, "pointing_game": {}}`.
    """

    model_path: str
    method: str = "gradcam"
    method_params: Mapping[str, Any] = field(default_factory=dict)
    activation_layer: Optional[str] = None
    preprocess: str = "none"
    top_k: int = 1
    precision: str = "float32"
    jit_compile: bool = False
    devices: Optional[Tuple[str, ...]] = None
    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class Explanation(NamedTuple):
    """One input explained: `units` (K,) int64, `logits` (K,) float32, `maps` (H, W, K)
    float32, `probabilities` (K,) float32 (the units' probabilities at the input) and
    `metrics`, each configured metric's (K,) float32 scores by name (NaN where a
    localisation metric had no ground truth)."""

    units: np.ndarray
    logits: np.ndarray
    maps: np.ndarray
    probabilities: Optional[np.ndarray] = None
    metrics: Optional[Mapping[str, np.ndarray]] = None


class Explainer:
    """A loaded model and method, explaining batches of images.

    Build it with `Explainer.load(config)` (which owns the strategy, the precision and the
    exposure), or from a model already built in the strategy scope you want.
    """

    def __init__(self, model: keras.Model, config: ExplainerConfig):
        self.config = config
        self.model = model
        self.method = resolve_method(config.method)
        self.params = explain_params(self.method, config.method_params)
        self.preprocess = resolve_preprocess(config.preprocess)
        self.num_units = int(keras.tree.flatten(model.outputs)[0].shape[-1])
        if not 1 <= config.top_k <= self.num_units:
            raise ValueError(f"top_k must lie in [1, {self.num_units}], got {config.top_k}.")
        self.scores = self.params["scores"]
        explained = (exposed(model, config.activation_layer, self.scores) if self.method.exposed
                     else model)
        scoring = model
        if config.jit_compile:
            # Models of their own sharing the layers, so that the flag stays off the shared
            # model (`shared_model`) that other runs in this process may explain.
            explained = keras.Model(explained.inputs, explained.outputs)
            explained.jit_compile = True
            scoring = keras.Model(model.inputs, model.outputs)
            scoring.jit_compile = True
        self.explained_model = explained
        # The metrics score the plain model (CAM methods explain an exposed one).
        self.scoring_model = scoring
        self.metrics = {name: (explain_metrics.get(name), dict(params))
                        for name, params in config.metrics.items()}

    @classmethod
    def load(cls, config: ExplainerConfig) -> "Explainer":
        """Load the model (`shared_model`: once per process) under the worker's strategy
        (`make_strategy`), at its precision, and prepare the method for it."""
        strategy = make_strategy(config.devices)
        with strategy.scope():
            model = shared_model(config.model_path)
            return cls(with_dtype_policy(model, config.precision), config)

    def explain(
        self, images: np.ndarray, units: Sequence[Optional[np.ndarray]],
        ground_truth: Optional[Mapping[str, Any]] = None,
    ) -> List[Explanation]:
        """Explain a batch: `images` (N, H, W, C) uint8 or float32 in [0, 255] (preprocessed
        as float32), `units[i]` the units to explain for image i, or None for its top-K
        predictions (on ties, the lower unit first); `ground_truth`, for the localisation
        metrics, `{"boxes": [(m_i, 4) float32 or None per image]}` or `{"masks": (N, H, W)
        of 0 and 1}`. Returns one `Explanation` per image, in order, with each unit's
        probability and each metric's scores."""
        x = self.preprocess(np.asarray(images, np.float32))
        # One call per group: the images without units, then those with K units for each K.
        groups: Dict[Optional[int], List[int]] = {}
        for i, u in enumerate(units):
            groups.setdefault(None if u is None else len(u), []).append(i)
        results: List[Optional[Explanation]] = [None] * len(x)
        common = dict(batch_size=len(x), verbose=0, return_probabilities=True, **self.params)
        for k, indices in groups.items():
            inputs = x if len(indices) == len(x) else x[indices]  # (the usual batch: no copy)
            if k is None:
                chosen, logits, maps, probabilities = explain_lib.explain_predicted(
                    self.method.function, self.explained_model, inputs,
                    top_k=self.config.top_k, **common,
                )
            else:
                chosen = np.stack([units[i] for i in indices]).astype(np.int32)
                logits, maps, probabilities = explain_lib.explain(
                    self.method.function, self.explained_model, inputs, chosen, **common
                )
            scores = self.score(inputs, chosen, maps, _rows_of(ground_truth, indices))
            chosen, logits = chosen.astype(np.int64), logits.astype(np.float32)
            probabilities = probabilities.astype(np.float32)
            for row, i in enumerate(indices):
                results[i] = Explanation(
                    chosen[row], logits[row], maps[row], probabilities[row],
                    {name: values[row] for name, values in scores.items()},
                )
        return results

    def score(self, x: np.ndarray, units: np.ndarray, maps: np.ndarray,
              ground_truth: Optional[Mapping[str, Any]] = None) -> Dict[str, np.ndarray]:
        """Each configured metric's scores (N, K) float32 for a batch's preprocessed images
        `x`, explained `units` (N, K) and `maps` (N, h, w, K), through `explain_lib.evaluate`
        (one compiled step per metric, the whole batch at once). Boxes are padded to a power
        of two per image, so that batches with different box counts share a few traces."""
        truth: Dict[str, Any] = {}
        if ground_truth and "boxes" in ground_truth:
            boxes = explain_metrics.pad_boxes([np.zeros((0, 4), np.float32) if b is None else b
                                               for b in ground_truth["boxes"]])
            width = 1 << (boxes.shape[1] - 1).bit_length()
            truth["boxes"] = np.pad(boxes, ((0, 0), (0, width - boxes.shape[1]), (0, 0)),
                                    constant_values=np.nan)
        elif ground_truth and "masks" in ground_truth:
            truth["masks"] = ground_truth["masks"]
        scores = {}
        for name, (metric, params) in self.metrics.items():
            scores[name] = explain_lib.evaluate(
                metric, self.scoring_model if metric.needs_model else None, x, units, maps,
                batch_size=len(x), verbose=0, scores=self.scores,
                **(truth if metric.ground_truth else {}), **params).astype(np.float32)
        return scores


def _rows_of(ground_truth: Optional[Mapping[str, Any]], indices: Sequence[int]):
    """The ground truth of the images at `indices`."""
    if not ground_truth:
        return None
    return {key: [values[i] for i in indices] if isinstance(values, list)
            else np.asarray(values)[indices] for key, values in ground_truth.items()}


# --- one model per process ----------------------------------------------------------------------

_SHARED_MODELS: "collections.OrderedDict[tuple, keras.Model]" = collections.OrderedDict()
_SHARED_MODELS_LOCK = threading.Lock()
SHARED_MODELS = 2
"""Models `shared_model` keeps loaded in a process (the most recently used)."""

_exposures: "weakref.WeakKeyDictionary[keras.Model, Dict[Any, keras.Model]]" = (
    weakref.WeakKeyDictionary())


def shared_model(path: str) -> keras.Model:
    """The model at `path`, loaded once per process and file version while it is among the
    `SHARED_MODELS` most recently used: the launcher's check and the workers of an
    in-process runner (DirectRunner) share one load and its compiled steps. A local file is
    known by its path, size and modification time; a remote one, or a load under a
    distribution strategy (a worker's `MirroredStrategy`, whose variables are its own), is
    loaded afresh."""
    if tf.distribute.has_strategy() or not os.path.exists(path):
        return load_keras_model(path)
    status = os.stat(path)
    key = (os.path.realpath(path), status.st_size, status.st_mtime_ns)
    with _SHARED_MODELS_LOCK:
        if key in _SHARED_MODELS:
            _SHARED_MODELS.move_to_end(key)
        else:
            _SHARED_MODELS[key] = load_keras_model(path)
            while len(_SHARED_MODELS) > SHARED_MODELS:
                _SHARED_MODELS.popitem(last=False)
        return _SHARED_MODELS[key]


def exposed(model: keras.Model, activation_layer: Optional[str] = None,
            scores: str = "logits") -> keras.Model:
    """`inspection.expose(model, activation_layer, scores=scores)`, built once per model,
    layer and scores and kept here (not on the model), built in the model's strategy scope
    so that it runs under it."""
    with _SHARED_MODELS_LOCK:
        per_model = _exposures.setdefault(model, {})
        if (activation_layer, scores) not in per_model:
            with model.distribute_strategy.scope():
                per_model[activation_layer, scores] = inspection.expose(
                    model, activation_layer, scores=scores)
        return per_model[activation_layer, scores]
