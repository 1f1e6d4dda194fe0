"""The RunInference model handler: Beam's side of explaining.

`ExplainModelHandler` is a `ModelHandler` like Beam's own: `load_model` loads the model once
per worker process (through `Explainer.load`: any Beam filesystem, the worker's
`MirroredStrategy`, the precision, the exposed model the method needs), and `run_inference`
takes lists of serialized records (the job's elements: a list per Beam element, so that
Beam's own work is paid per list, not per record), parses and checks each record once
(`pipeline.worker.records.check_record`: stages "parse" and "validate", the images still
compressed), and takes the records that passed through the three batched steps of a worker
(`explain_checked`):

- decode: the batch's images in compiled calls of up to 32, in parallel outside the GIL
  (`records.decode_batch`), and the ground-truth masks the same way (`records.decode_masks`);
- explain: the batch through `explain_lib` (`Explainer.explain`): the maps, each unit's
  probability, and the metrics scoring the maps (`explain_lib.evaluate`, the whole batch
  at once);
- encode: the batch's explanations as schema-v2 records at once
  (`explain_lib.io.encode_explanations`: ranges and quantisation in one numpy pass, only each
  record's own bytes made per record), large maps in chunks on a pool of threads (PNG's zlib
  releases the GIL); with a table or metrics, also each record's
  `pipeline.results.table.AnalysisRow` (map statistics computed for the whole batch at once, before
  the maps are encoded); with `overview`, the batch's `pipeline.results.overview.Overview` (what
  the report shows: per-unit counts and map sums, score samples, the best and worst
  records with their images), made from the batch's arrays at once.

It never raises for one bad record: a record that cannot be decoded fails alone (stage
"decode"); when explaining a batch fails, each of its records is retried on its own, so
good records are kept and only the failing ones come back as failures (stage "explain"),
each attributed to its own record. A batch that runs out of accelerator memory is split in
halves instead, and the worker keeps the size that fits (`pipeline.worker.adaptive_batches`).

Batches are in flight at once on the one model RunInference shares: each call takes
`batches_in_flight` batches (default 2; RunInference gathers lists until they hold
`records_per_call` records). The calling thread parses and decodes them in turn, and hands
each decoded batch to a thread that explains and encodes it, so that one batch's parsing,
decoding and encoding (CPU) overlap another's explaining (the accelerator, or TensorFlow's
threads) within one bundle, whatever the runner; the bundles a runner runs at once on its
threads (Dataflow's harness threads, DirectRunner's multi_threading mode) add to that. The
model explains one batch at a time (`_explaining`), so its devices' memory holds one
batch's work, as `batch_size` says.

Usage:

    handler = ExplainModelHandler(ExplainerConfig("gs://bucket/model.keras", "gradcam"),
                                  RecordSpec((224, 224), 3, 1000), batch_size=32)
    results = lists | RunInference(handler)
    # one Results per list of records: per record bytes | StageError; with analysis=True,
    # Explained(bytes, AnalysisRow) | StageError; with overview=True, the last explained
    # record of each batch is an Explained whose `overview` is the batch's
"""

import collections
import concurrent.futures
import itertools
import logging
import os
import threading
import time
import weakref
from typing import (
    Any,
    Deque,
    Dict,
    Iterable,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from explain_lib import io as explain_io
from explain_lib import metrics as explain_metrics
from pipeline.counters import METRICS_NAMESPACE
from pipeline.io.dead_letters import StageError
from pipeline.results.overview import Overview, batch_overview, summed_size
from pipeline.results.table import AnalysisRow, analysis_rows
from pipeline.worker.adaptive_batches import explain_fitting, limit_for
from pipeline.worker.explainer import Explainer, ExplainerConfig, Explanation
from pipeline.worker.records import (
    CheckedRecord,
    RecordSpec,
    check_record,
    decode_batch,
    decode_masks,
)

PARALLEL_ENCODING_VALUES = 16384
"""Maps of at least this many values per record are encoded in chunks on the thread pool;
smaller ones (a CAM stored at its own 7x7 resolution) cost less to encode than to hand to a
thread."""

ENCODING_THREADS = os.cpu_count() or 2
"""Threads encoding large maps: one per core."""

BATCHES_IN_FLIGHT = 2
"""Default batches of `batch_size` records one `run_inference` call takes at once, on
threads sharing the model: while one batch is explained (on the accelerator, or TensorFlow's
threads), another is decoded and encoded."""

STEP_THREADS = 64
"""The most threads running batches in flight in a process (made as needed; every bundle
the runner runs at once brings its own batches)."""

_pools: Dict[str, concurrent.futures.ThreadPoolExecutor] = {}
_locks: "weakref.WeakKeyDictionary[Any, threading.Lock]" = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()  # guards both


def _explaining(model: Any) -> threading.Lock:
    """The lock a batch holds while `model` explains it: one batch at a time on the model's
    devices, whose memory then holds one batch's work (`--batch_size` stays the knob that
    sizes it), while the other batches in flight are decoded and encoded."""
    with _registry_lock:
        return _locks.setdefault(model, threading.Lock())


def _pool(name: str, threads: int) -> concurrent.futures.ThreadPoolExecutor:
    """The process's pool of `threads` threads called `name` (made on first use, not
    pickled): "encode_explanations" for large maps, "explain_batches" for batches in
    flight."""
    with _registry_lock:
        if name not in _pools:
            _pools[name] = concurrent.futures.ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix=name)
        return _pools[name]


class Explained(NamedTuple):
    """An explained record, when the handler also makes its analysis row or the batch's
    overview: the serialized schema-v2 record, its `pipeline.results.table.AnalysisRow` (None
    without analysis) and, on one record of each batch, the batch's
    `pipeline.results.overview.Overview` (None on the others)."""

    record: bytes
    row: Optional[AnalysisRow]
    overview: Optional[Overview] = None


class Results(NamedTuple):
    """What the handler made of one list of serialized records: per record, in order, the
    serialized schema-v2 record (an `Explained` with `analysis` or `overview`) or the
    `StageError` it failed with; and the ids of the records that passed the checks (for
    `pipeline.results.ids.CountDuplicateIds`)."""

    records: Sequence[bytes]
    outcomes: List[Union[bytes, Explained, StageError]]
    ids: List[str]


class ExplainModelHandler(ModelHandler[Sequence[bytes], Results, Explainer]):
    """Parses, checks, decodes, explains and encodes lists of serialized records (see the
    module docstring).

    Args:
        config: the model, method and metrics (`pipeline.worker.explainer.ExplainerConfig`).
        spec: how the records' images (and ground truth) are decoded (size, channels).
        map_encoding: how maps are stored (`explain_lib.io.ENCODINGS`).
        batch_size: records per explaining step, so the compiled step is traced once.
        batches_in_flight: batches of `batch_size` in flight at once (decoded and not yet
            encoded), on threads sharing the model, so that one's parsing, decoding and
            encoding overlap another's explaining (the model explains one at a time):
            RunInference hands the handler lists holding `records_per_call = batch_size *
            batches_in_flight` records (fewer only at the end of a bundle; a larger list
            runs `batches_in_flight` batches at a time). 1: one batch at a time.
        analysis: also make each explained record's `AnalysisRow` (for the table and the
            metric aggregates): results are then `Explained`.
        overview: also make each batch's `pipeline.results.overview.Overview` (for the report),
            carried by the batch's last explained record (an `Explained`).
        **kwargs: `ModelHandler` options, for instance `large_model=True` or
            `model_copies=1` (one model per machine, shared by its processes), `env_vars`.
    """

    def __init__(
        self,
        config: ExplainerConfig,
        spec: RecordSpec,
        map_encoding: str = explain_io.DEFAULT_ENCODING,
        *,
        batch_size: int = 32,
        batches_in_flight: int = BATCHES_IN_FLIGHT,
        analysis: bool = False,
        overview: bool = False,
        **kwargs,
    ):
        if batch_size < 1 or batches_in_flight < 1:
            raise ValueError(f"batch_size ({batch_size}) and batches_in_flight "
                             f"({batches_in_flight}) must be at least 1.")
        # RunInference's batches are counted in records, its elements being lists of them.
        kwargs.setdefault("min_batch_size", batch_size * batches_in_flight)
        kwargs.setdefault("max_batch_size", batch_size * batches_in_flight)
        kwargs.setdefault("element_size_fn", len)
        super().__init__(**kwargs)
        self._batch_size = batch_size
        self._batches_in_flight = batches_in_flight
        self._config = config
        self._spec = spec
        self._map_encoding = map_encoding
        self._analysis = analysis
        self._overview = overview
        self._directions = {name: explain_metrics.get(name).higher_is_better
                            for name in config.metrics}

    def load_model(self) -> Explainer:
        """Load the model under the worker's strategy and prepare the method."""
        return Explainer.load(self._config)

    @property
    def records_per_call(self) -> int:
        """Records one `run_inference` call takes (`batch_size * batches_in_flight`): the
        size of the lists of records `pipeline.io.reading.ReadTFRecords` hands the job."""
        return self._batch_size * self._batches_in_flight

    def run_inference(
        self,
        batch: Sequence[Sequence[bytes]],
        model: Explainer,
        inference_args: Optional[Dict[str, Any]] = None,
    ) -> List[Results]:
        """Lists of serialized records -> one `Results` per list: each record parsed and
        checked (stages "parse", "validate"), and the records that passed explained
        (`explain_checked`). Records are parsed as `explain_checked` takes them, so that
        a batch's parsing overlaps the explaining of the batch before it."""
        parsed: List[Union[CheckedRecord, StageError]] = []

        def checked() -> Iterator[CheckedRecord]:
            for serialized in (record for records in batch for record in records):
                try:
                    record = check_record(serialized, self._spec)
                except StageError as error:
                    parsed.append(error)
                    continue
                parsed.append(record)
                yield record

        explained = iter(self.explain_checked(checked(), model))
        outcomes = [next(explained).inference if isinstance(record, CheckedRecord) else record
                    for record in parsed]
        results, start = [], 0
        for records in batch:
            mine = parsed[start:start + len(records)]
            results.append(Results(records, outcomes[start:start + len(records)],
                                    [r.id for r in mine if isinstance(r, CheckedRecord)]))
            start += len(records)
        return results

    def explain_checked(self, records: Iterable[CheckedRecord], model: Explainer
                        ) -> List[PredictionResult]:
        """Decode, explain and encode checked records, `batch_size` at a time; each
        result's inference is the serialized schema-v2 record (with `analysis` or
        `overview`, an `Explained`) or the `StageError` the record failed with, in the
        records' order.

        The calling thread takes the records and decodes them a batch at a time
        (`_decode`); each decoded batch goes to a thread of the pool, which explains it (the
        model explains one batch at a time, `_explaining`) and encodes it (`_finish`).
        So the next batch is taken (parsed, from `run_inference`) and decoded while one is
        explained, and a batch is encoded while the next one is explained. At most
        `batches_in_flight` batches are in flight (decoded and not yet encoded): the calling
        thread waits for the oldest before it decodes another."""
        pool = _pool("explain_batches", STEP_THREADS)
        records = iter(records)
        in_flight: Deque[concurrent.futures.Future] = collections.deque()
        results: List[PredictionResult] = []
        while True:
            step = list(itertools.islice(records, self._batch_size))
            if not step:
                break
            if len(in_flight) == self._batches_in_flight:
                results += in_flight.popleft().result()
            in_flight.append(pool.submit(self._finish, step, *self._decode(step), model))
            time.sleep(0)  # yields the GIL, so the thread taking the batch starts at once
        for future in in_flight:
            results += future.result()
        return results

    def _decode(self, batch: Sequence[CheckedRecord]
                ) -> Tuple[np.ndarray, Optional[np.ndarray], List[Optional[StageError]]]:
        """Stage "decode" for one batch: its images, its masks (with `mask_key`) and each
        record's decoding error (None where it decoded)."""
        images, outcomes = decode_batch(batch, self._spec)
        masks = None
        if self._spec.mask_key:
            masks, failures = decode_masks(batch, self._spec)
            outcomes = [outcome or failure for outcome, failure in zip(outcomes, failures)]
        return images, masks, outcomes

    def _finish(self, batch: Sequence[CheckedRecord], images: np.ndarray,
                masks: Optional[np.ndarray], outcomes: List[Any], model: Explainer
                ) -> List[PredictionResult]:
        """Explain and encode one decoded batch (`_decode`'s images, masks and errors)."""
        decoded = [i for i, error in enumerate(outcomes) if error is None]
        if decoded:
            # The usual batch decodes whole, and is explained without a copy.
            rows = slice(None) if len(decoded) == len(batch) else decoded
            with _explaining(model):
                explained = self._explain([batch[i] for i in decoded], images[rows], model,
                                          None if masks is None else masks[rows])
            time.sleep(0)  # yields the GIL to the batch waiting to be explained
            for i, outcome in zip(decoded, explained):
                outcomes[i] = outcome
        encoded = self._encode(batch, outcomes)
        if self._analysis:
            encoded = self._with_rows(batch, outcomes, encoded)
        if self._overview:
            encoded = self._with_overview(batch, outcomes, encoded, images)
        return [PredictionResult(record, outcome) for record, outcome in zip(batch, encoded)]

    def _explain(self, records: Sequence[CheckedRecord], images: np.ndarray,
                 model: Explainer, masks: Optional[np.ndarray] = None
                 ) -> List[Union[Explanation, StageError]]:
        """Explain decoded images (and score their maps): out of memory, in smaller chunks
        that fit (`adaptive_batches`); failing otherwise, one record at a time."""

        def explain(chunk: slice) -> List[Union[Explanation, StageError]]:
            units = [r.units for r in records[chunk]]
            if self._spec.boxes_key:
                truth = {"ground_truth": {"boxes": [r.ground_truth for r in records[chunk]]}}
            elif masks is not None:
                truth = {"ground_truth": {"masks": masks[chunk]}}
            else:
                truth = {}  # (test doubles of the Explainer take images and units only)
            return _checked(records[chunk], model.explain(images[chunk], units, **truth))

        def one_by_one(chunk: slice, error: Exception) -> List[Union[Explanation, StageError]]:
            logging.warning("Explaining a batch of %d records failed (%s); retrying them one "
                            "by one.", chunk.stop - chunk.start, error)
            outcomes: List[Union[Explanation, StageError]] = []
            for i in range(chunk.start, chunk.stop):
                try:
                    outcomes += explain(slice(i, i + 1))
                except Exception as single:  # noqa: BLE001 - becomes this record's dead letter
                    outcomes.append(StageError("explain", f"{type(single).__name__}: {single}",
                                               records[i].id))
            return outcomes

        return explain_fitting(records, explain, limit_for(model), one_by_one)

    def _encode(self, records: Sequence[CheckedRecord],
                outcomes: Sequence[Any]) -> List[Union[bytes, StageError]]:
        """Each explained record as a serialized schema-v2 record, the batch encoded at once
        (`explain_io.encode_explanations`; large maps in chunks on the pool of threads). A
        chunk that fails is encoded again one record at a time, so that only the records
        that cannot be stored fail (stage "encode")."""
        encoded: List[Any] = list(outcomes)
        groups: Dict[Any, List[int]] = {}
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, Explanation):
                key = (outcome.maps.shape, outcome.probabilities is None,
                       tuple(outcome.metrics or ()))
                groups.setdefault(key, []).append(i)

        def encode(indices: Sequence[int]) -> List[Union[bytes, StageError]]:
            chosen = [outcomes[i] for i in indices]
            first = chosen[0]
            try:
                return explain_io.encode_explanations(
                    [records[i].id for i in indices], np.stack([o.units for o in chosen]),
                    np.stack([o.logits for o in chosen]), np.stack([o.maps for o in chosen]),
                    self._map_encoding, input_size=self._spec.image_size,
                    probabilities=(None if first.probabilities is None
                                   else np.stack([o.probabilities for o in chosen])),
                    metrics={name: np.stack([o.metrics[name] for o in chosen])
                             for name in first.metrics or ()})
            except Exception as error:  # noqa: BLE001 - retried one by one below
                if len(indices) == 1:
                    return [StageError("encode", str(error), records[indices[0]].id)]
                return [one for i in indices for one in encode([i])]

        for (shape, _, _), indices in groups.items():
            chunks = [indices]
            if int(np.prod(shape)) >= PARALLEL_ENCODING_VALUES and len(indices) > 1:
                chunks = [chunk.tolist() for chunk in np.array_split(
                    indices, min(len(indices), ENCODING_THREADS))]
                encoders = _pool("encode_explanations", ENCODING_THREADS)
                results = list(encoders.map(encode, chunks))
            else:
                results = [encode(indices)]
            for chunk, result in zip(chunks, results):
                for i, record in zip(chunk, result):
                    encoded[i] = record
        return encoded

    def _with_rows(self, records: Sequence[CheckedRecord], outcomes: Sequence[Any],
                   encoded: Sequence[Union[bytes, StageError]]) -> List[Any]:
        """Each encoded record with its `AnalysisRow` (`Explained`), the rows of the whole
        batch made at once (`pipeline.results.table.analysis_rows`)."""
        kept = [i for i, record in enumerate(encoded) if isinstance(record, bytes)]
        rows = analysis_rows([records[i].id for i in kept], [outcomes[i] for i in kept],
                             list(self._config.metrics), [records[i].features for i in kept])
        encoded = list(encoded)
        for i, row in zip(kept, rows):
            encoded[i] = Explained(encoded[i], row)
        return encoded

    def _with_overview(self, records: Sequence[CheckedRecord], outcomes: Sequence[Any],
                       encoded: Sequence[Any], images: np.ndarray) -> List[Any]:
        """The encoded records, the last explained one carrying the batch's `Overview` (one
        `batch_overview` per group of maps of one shape; maps stored larger than
        `pipeline.results.overview.MEAN_MAP_SIZE` scaled down for the sums in one resize call)."""
        kept = [i for i, record in enumerate(encoded)
                if isinstance(record, (bytes, Explained))]
        if not kept:
            return list(encoded)
        names, directions = list(self._directions), self._directions
        overview: Optional[Overview] = None
        groups: Dict[Any, List[int]] = {}
        for i in kept:
            groups.setdefault((outcomes[i].maps.shape, outcomes[i].probabilities is None),
                              []).append(i)
        for (shape, no_probabilities), indices in groups.items():
            chosen = [outcomes[i] for i in indices]
            maps = np.stack([o.maps for o in chosen])
            size = summed_size(shape[:2])
            small = maps
            if size != tuple(shape[:2]):
                import tensorflow as tf

                small = tf.image.resize(maps, size).numpy()
            part = batch_overview(
                [records[i].id for i in indices], np.stack([o.units for o in chosen]),
                np.stack([o.logits for o in chosen]),
                None if no_probabilities else np.stack([o.probabilities for o in chosen]),
                {name: np.stack([o.metrics[name] for o in chosen]) for name in names},
                maps, small, images, directions, image_rows=indices)
            overview = part if overview is None else overview.merge(part)
        encoded = list(encoded)
        last = encoded[kept[-1]]
        encoded[kept[-1]] = (last._replace(overview=overview) if isinstance(last, Explained)
                             else Explained(last, None, overview))
        return encoded

    def get_num_bytes(self, batch: Sequence[Sequence[bytes]]) -> int:
        """Bytes of the input records in the batch (what RunInference reports as its input
        size)."""
        return sum(len(record) for records in batch for record in records)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def __repr__(self) -> str:
        return f"ExplainModelHandler({self._config!r}, map_encoding={self._map_encoding!r})"


class _MemoryWarningFilter(logging.Filter):
    """Drops RunInference's "Resource module is not available" warning. Beam 2.77 imports
    `resource` together with its torch-based ModelManager, so without torch installed it
    believes every platform lacks `resource` and warns on every bundle; the only loss is
    RunInference's memory metric."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Resource module is not available" not in record.getMessage()


def _quiet_memory_warning() -> None:
    root = logging.getLogger()
    if not any(isinstance(f, _MemoryWarningFilter) for f in root.filters):
        root.addFilter(_MemoryWarningFilter())


# At import, which is when a worker unpickles the handler: RunInference measures memory
# (and warns) before it first calls load_model.
_quiet_memory_warning()


def _checked(records: Sequence[CheckedRecord], explanations: Sequence[Explanation]
             ) -> List[Union[Explanation, StageError]]:
    """Each explanation, or a StageError when the method produced non-finite values (a map
    with NaNs is a failed explanation, not a result)."""
    finite = {name: _finite_rows([getattr(e, name) for e in explanations])
              for name in ("logits", "maps")}
    outcomes: List[Union[Explanation, StageError]] = []
    for i, (record, explanation) in enumerate(zip(records, explanations)):
        bad = [name for name in ("logits", "maps") if not finite[name][i]]
        outcomes.append(explanation if not bad else StageError(
            "explain", f"the method returned non-finite {bad[0]} for units "
            f"{explanation.units.tolist()}", record.id))
    return outcomes


def _finite_rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Whether each array holds only finite values: one numpy pass over the batch when the
    arrays share a shape (as a batch's do), else one per array."""
    if len({array.shape for array in arrays}) == 1:
        return np.isfinite(np.stack(arrays)).reshape(len(arrays), -1).all(axis=1)
    return np.array([np.isfinite(array).all() for array in arrays], bool)
