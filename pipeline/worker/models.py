"""The model on a worker: read from any Beam filesystem, loaded once per process, under the
worker's distribution strategy, exposed once per layer.

- `load_keras_model` reads a `.keras` file from any Beam filesystem (local, `gs://`, ...),
  retrying transient storage errors and naming a missing or damaged file as such;
  `shared_model` keeps it loaded once per process, so that the launcher and in-process
  workers share one load (and its compiled steps).
- `make_strategy` picks the worker's `tf.distribute` strategy: a `MirroredStrategy` over its
  GPUs (or given devices), the default strategy on CPU-only workers.
- `exposed` is `inspection.expose` built once per model, layer and scores, kept here rather
  than on the user's model.

Usage:

    with make_strategy().scope():
        model = shared_model("gs://bucket/model.keras")
"""

import collections
import os
import shutil
import tempfile
import threading
import weakref
import zipfile
import zlib
from typing import (
    Any,
    Dict,
    Optional,
    Sequence,
)

import keras
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems

from explain_lib import inspection
from pipeline.io.retry import Retry


def load_keras_model(path: str, compile: bool = False, retry: Retry = Retry()) -> keras.Model:
    """Load a Keras model file from any filesystem Beam knows (local, `gs://`, ...).

    Keras reads local files only, so a remote file is first copied to a local temporary
    file (keeping its suffix, which tells Keras the format); looking for it and copying it
    are retried on transient errors (`pipeline.io.retry`). Raises FileNotFoundError for a
    missing file, and ValueError naming the file for one that is corrupt or truncated.
    """
    if os.path.exists(path):
        return _load_local(path, path, compile)
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
