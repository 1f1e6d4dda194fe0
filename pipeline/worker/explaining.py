"""Stage "explain": a decoded batch through `explain_lib`, on a worker.

`Worker` holds one loaded model and method (`Worker.load(settings)`: the model file, the
worker's strategy, the precision, the exposed model the method needs) and explains a batch:
given units with `explain_lib.explain`, and the top-K predicted units where none were given
with `explain_lib.explain_predicted`, which chooses them from the method's own forward pass
(no separate prediction pass) and also gives each unit's probability; then it scores the
batch's maps with the configured metrics (`explain_lib.evaluate`, one call per metric on the
whole batch). The pixels go to the engine as decoded (uint8, or float32 where they were
resized) and travel to the devices so: the engine casts them and applies `--preprocess`
(TF ops, `explain_arguments`) inside its compiled step, and no float copy of a batch is
made on the host. Nothing here knows Beam: `pipeline.worker.handler` wraps it for RunInference,
and the benchmarks and tests use it directly.

Usage:

    worker = Worker.load(Settings(model="model.keras", method="gradcam"))
    results = worker.explain(images, [None] * len(images))   # top-1 units
    results[0].units, results[0].logits, results[0].maps.shape
"""

import logging
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Union,
)

import keras
import numpy as np
import tensorflow as tf

import explain_lib
from explain_lib import methods
from explain_lib import metrics as explain_metrics
from explain_lib.utils import with_dtype_policy
from pipeline.io.dead_letters import StageError
from pipeline.settings import Settings, explain_params
from pipeline.worker.adaptive_batches import explain_fitting, limit_for
from pipeline.worker.decoding import Pixels
from pipeline.worker.models import exposed, make_strategy, shared_model
from pipeline.worker.parsing import CheckedRecord

PREPROCESSING = ("none", "unit", "symmetric")
"""Built-in `--preprocess` names; any `keras.applications` module name also works."""


def resolve_preprocess(name: str) -> Optional[Callable]:
    """The input preprocessing called `name`, a function of a float32 batch in [0, 255] made
    of TF ops (the engine runs it inside its compiled step: `explain`'s `preprocessing`):
    None for "none" (keep [0, 255]: models carrying their own preprocessing layers), "unit"
    ([0, 1]), "symmetric" ([-1, 1]), or the name of a `keras.applications` module (for
    instance "resnet_v2", "efficientnet") whose `preprocess_input` is used (Keras' tensor
    path: the same arithmetic as its numpy one). The function is the same object on every
    call, so that the launcher's check and the workers share one compiled step."""
    if name in (None, "", "none"):
        return None
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
    return function


def _to_unit(x):
    return x / np.float32(255.0)


def _to_symmetric(x):
    return x / np.float32(127.5) - np.float32(1.0)


def explain_arguments(settings: Settings) -> Dict[str, Any]:
    """The keyword arguments the worker gives `explain_lib.explain` (and, but for the
    method's own, `evaluate`) for `settings`: the method's parameters with its conventional
    post-processing and resizing (`pipeline.settings.explain_params`) and the preprocessing
    (`resolve_preprocess`), which the engine runs in its compiled step."""
    params = explain_params(methods.get(settings.method), settings.explain_params())
    return {**params, "preprocessing": resolve_preprocess(settings.preprocess)}


class RecordMaps(NamedTuple):
    """One input explained: `units` (K,) int64, `logits` (K,) float32, `maps` (H, W, K)
    float32, `probabilities` (K,) float32 (the units' probabilities at the input) and
    `metrics`, each configured metric's (K,) float32 scores by name (NaN where a
    localisation metric had no ground truth)."""

    units: np.ndarray
    logits: np.ndarray
    maps: np.ndarray
    probabilities: Optional[np.ndarray] = None
    metrics: Optional[Mapping[str, np.ndarray]] = None


class Worker:
    """A loaded model and method, explaining batches of images as `settings` say.

    Build it with `Worker.load(settings)` (which owns the strategy, the precision and the
    exposure), or from a model already built in the strategy scope you want.
    """

    def __init__(self, model: keras.Model, settings: Settings):
        self.settings = settings
        self.model = model
        self.method = methods.get(settings.method)
        self.params = explain_arguments(settings)
        self.num_units = int(keras.tree.flatten(model.outputs)[0].shape[-1])
        if not 1 <= settings.top_k <= self.num_units:
            raise ValueError(f"top_k must lie in [1, {self.num_units}], got {settings.top_k}.")
        self.scores = self.params["scores"]
        explained = (exposed(model, settings.activation_layer, self.scores)
                     if self.method.exposed else model)
        scoring = model
        if settings.jit_compile:
            # Models of their own sharing the layers, so that the flag stays off the shared
            # model (`shared_model`) that other runs in this process may explain.
            explained = keras.Model(explained.inputs, explained.outputs)
            explained.jit_compile = True
            scoring = keras.Model(model.inputs, model.outputs)
            scoring.jit_compile = True
        self.explained_model = explained
        # The metrics score the plain model (CAM methods explain an exposed one).
        self.scoring_model = scoring
        self.metrics = {name: (explain_metrics.get(name), params)
                        for name, params in settings.metrics_with_params().items()}

    @classmethod
    def load(cls, settings: Settings) -> "Worker":
        """Load the model (`shared_model`: once per process) under the worker's strategy
        (`make_strategy`), at its precision, and prepare the method for it."""
        strategy = make_strategy(settings.devices)
        with strategy.scope():
            model = shared_model(settings.model)
            return cls(with_dtype_policy(model, settings.precision), settings)

    def explain(
        self, images: Pixels, units: Sequence[Optional[np.ndarray]],
        ground_truth: Optional[Mapping[str, Any]] = None,
    ) -> List[RecordMaps]:
        """Explain a batch: `images` (N, H, W, C) uint8 or float32 in [0, 255] (cast and
        preprocessed by the engine, in its compiled step; a tensor is taken as it is, an
        array is copied into one), `units[i]` the units to explain for image i, or None
        for its top-K predictions (on ties, the lower unit first);
        `ground_truth`, for the localisation metrics, `{"boxes": [(m_i, 4) float32 or None
        per image]}` or `{"masks": (N, H, W) of 0 and 1}`. Returns one `RecordMaps` per
        image, in order, with each unit's probability and each metric's scores."""
        # One tensor of the pixels as decoded (the engine casts and preprocesses them in its
        # step), shared by the explaining and the metrics: the decoding's own tensor in the
        # job, so that the batch is not copied on the host.
        x = tf.convert_to_tensor(images)
        # One call per group: the images without units, then those with K units for each K.
        groups: Dict[Optional[int], List[int]] = {}
        for i, u in enumerate(units):
            groups.setdefault(None if u is None else len(u), []).append(i)
        results: List[Optional[RecordMaps]] = [None] * len(x)
        common = dict(batch_size=len(x), verbose=0, return_probabilities=True, **self.params)
        for k, indices in groups.items():
            inputs = x if len(indices) == len(x) else tf.gather(x, indices)
            if k is None:
                chosen, logits, maps, probabilities = explain_lib.explain_predicted(
                    self.method.function, self.explained_model, inputs,
                    top_k=self.settings.top_k, **common,
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
                results[i] = RecordMaps(
                    chosen[row], logits[row], maps[row], probabilities[row],
                    {name: values[row] for name, values in scores.items()},
                )
        return results

    def score(self, x: np.ndarray, units: np.ndarray, maps: np.ndarray,
              ground_truth: Optional[Mapping[str, Any]] = None) -> Dict[str, np.ndarray]:
        """Each configured metric's scores (N, K) float32 for a batch's images `x` (as
        `explain` takes them: the engine preprocesses them), explained `units` (N, K) and
        `maps` (N, h, w, K), through `explain_lib.evaluate` (one compiled step per metric,
        the whole batch at once). Boxes are padded to a power of two per image, so that
        batches with different box counts share a few traces."""
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
                preprocessing=self.params["preprocessing"],
                **(truth if metric.ground_truth else {}), **params).astype(np.float32)
        return scores


def _rows_of(ground_truth: Optional[Mapping[str, Any]], indices: Sequence[int]):
    """The ground truth of the images at `indices`."""
    if not ground_truth:
        return None
    return {key: [values[i] for i in indices] if isinstance(values, list)
            else np.asarray(values)[indices] for key, values in ground_truth.items()}


def explain_decoded(records: Sequence[CheckedRecord], images: Pixels, worker: Worker,
                    masks: Optional[np.ndarray] = None, boxes: bool = False
                    ) -> List[Union[RecordMaps, StageError]]:
    """Stage "explain" for a decoded batch: each record's `RecordMaps` (with its metrics'
    scores, given the records' boxes with `boxes`, or `masks`), or the `StageError` it failed
    with. Out of memory, the batch is explained in smaller chunks that fit
    (`pipeline.worker.adaptive_batches`); failing otherwise, one record at a time, so that
    good records are kept and each failure is its own record's. Maps or logits that are not
    finite fail their record: a map with NaNs is a failed explanation, not a result."""

    def explain(chunk: slice) -> List[Union[RecordMaps, StageError]]:
        units = [r.units for r in records[chunk]]
        if boxes:
            truth = {"ground_truth": {"boxes": [r.ground_truth for r in records[chunk]]}}
        elif masks is not None:
            truth = {"ground_truth": {"masks": masks[chunk]}}
        else:
            truth = {}  # (test doubles of the Worker take images and units only)
        return _finite(records[chunk], worker.explain(images[chunk], units, **truth))

    def one_by_one(chunk: slice, error: Exception) -> List[Union[RecordMaps, StageError]]:
        logging.warning("Explaining a batch of %d records failed (%s); retrying them one "
                        "by one.", chunk.stop - chunk.start, error)
        outcomes: List[Union[RecordMaps, StageError]] = []
        for i in range(chunk.start, chunk.stop):
            try:
                outcomes += explain(slice(i, i + 1))
            except Exception as single:  # noqa: BLE001 - becomes this record's dead letter
                outcomes.append(StageError("explain", f"{type(single).__name__}: {single}",
                                           records[i].id))
        return outcomes

    return explain_fitting(records, explain, limit_for(worker), one_by_one)


def _finite(records: Sequence[CheckedRecord], results: Sequence[RecordMaps]
            ) -> List[Union[RecordMaps, StageError]]:
    """Each result, or a StageError when the method produced non-finite values."""
    finite = {name: _finite_rows([getattr(r, name) for r in results])
              for name in ("logits", "maps")}
    outcomes: List[Union[RecordMaps, StageError]] = []
    for i, (record, result) in enumerate(zip(records, results)):
        bad = [name for name in ("logits", "maps") if not finite[name][i]]
        outcomes.append(result if not bad else StageError(
            "explain", f"the method returned non-finite {bad[0]} for units "
            f"{result.units.tolist()}", record.id))
    return outcomes


def _finite_rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Whether each array holds only finite values: one numpy pass over the batch when the
    arrays share a shape (as a batch's do), else one per array."""
    if len({array.shape for array in arrays}) == 1:
        return np.isfinite(np.stack(arrays)).reshape(len(arrays), -1).all(axis=1)
    return np.array([np.isfinite(array).all() for array in arrays], bool)
