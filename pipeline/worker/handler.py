"""The RunInference model handler: Beam's side of a worker.

`RecordsHandler` is a `ModelHandler` like Beam's own, doing what Beam's contract asks and
no more: `load_model` loads the model once per worker process (`Worker.load`: any Beam
filesystem, the worker's `MirroredStrategy`, the precision, the exposed model the method
needs), and `run_inference` takes lists of serialized records (the job's elements: a list
per Beam element, so that Beam's own work is paid per list, not per record) and runs each
record through the worker's stages, each in its own module:

- parse and validate (`pipeline.worker.parsing.check_record`), each record once, its image
  still compressed;
- decode (`pipeline.worker.decoding`): a batch's images in compiled calls, outside the GIL;
- explain (`pipeline.worker.explaining.explain_decoded`): the batch through `explain_lib`,
  with each unit's probability and the metrics' scores;
- encode (`pipeline.worker.encoding`): schema-v2 records, with the analysis rows and the
  batch's overview when the settings ask for them; a call's batches' overviews are merged
  into one (`with_one_overview`).

Batches are in flight at once on the one model RunInference shares
(`pipeline.worker.concurrency`): within a call, `batches_in_flight` batches at a time, one
batch's parsing, decoding and encoding overlapping another's explaining; the model explains
one batch at a time. A call takes whole batches of at least
`pipeline.io.reading.RECORDS_PER_LIST` records, so that the batches in flight drain (the
calling thread waiting for the last one) once per 16 batches of 32, not once per two.

It never raises for one bad record: a record that fails a stage comes back as the
`StageError` naming it, and the job makes it a dead letter.

Usage:

    handler = RecordsHandler(Settings(model="gs://bucket/model.keras"),
                             RecordSpec((224, 224), 3, 1000))
    results = lists | RunInference(handler)
    # one Results per list of records: per record bytes | StageError, or an Encoded
    # (bytes with the record's analysis row, or the call's overview)
"""

import logging
import time
from typing import (
    Any,
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

from explain_lib import metrics as explain_metrics
from pipeline.counters import METRICS_NAMESPACE
from pipeline.io import reading
from pipeline.io.dead_letters import StageError
from pipeline.settings import Settings
from pipeline.worker.concurrency import in_flight, model_lock
from pipeline.worker.decoding import Pixels, decode_batch, decode_masks
from pipeline.worker.encoding import (
    Encoded,
    encode_batch,
    with_one_overview,
    with_overview,
    with_rows,
    with_strategies,
)
from pipeline.worker.explaining import Worker, explain_decoded
from pipeline.worker.parsing import CheckedRecord, RecordSpec, check_record


class Results(NamedTuple):
    """What the handler made of one list of serialized records: per record, in order, the
    serialized schema-v2 record (an `Encoded` with its analysis row or the batch's
    overview) or the `StageError` it failed with; and the ids of the records that passed
    the checks (for `pipeline.results.ids.CountDuplicateIds`)."""

    records: Sequence[bytes]
    outcomes: List[Union[bytes, Encoded, StageError]]
    ids: List[str]


class RecordsHandler(ModelHandler[Sequence[bytes], Results, Worker]):
    """Parses, checks, decodes, explains and encodes lists of serialized records as
    `settings` say (see the module docstring), the records read with `spec`.

    RunInference hands it lists of `records_per_call` records (fewer only at the end of a
    bundle). `settings.handler_options` are
    `ModelHandler`'s own (`large_model=True`, `model_copies=1`: one model per machine,
    shared by its processes; `env_vars`).
    """

    def __init__(self, settings: Settings, spec: RecordSpec):
        options = dict(settings.handler_options)
        self._settings = settings
        # RunInference's batches are counted in records, its elements being lists of them.
        options.setdefault("min_batch_size", self.records_per_call)
        options.setdefault("max_batch_size", self.records_per_call)
        options.setdefault("element_size_fn", len)
        super().__init__(**options)
        self._spec = spec
        self._directions = {name: explain_metrics.get(name).higher_is_better
                            for name in settings.metrics}

    def load_model(self) -> Worker:
        """Load the model under the worker's strategy and prepare the method."""
        return Worker.load(self._settings)

    @property
    def records_per_call(self) -> int:
        """Records one `run_inference` call takes: whole batches, at least
        `batches_in_flight` of them and at least `pipeline.io.reading.RECORDS_PER_LIST`
        records (512: 16 batches of the default 32); the size of the lists of records
        `pipeline.io.reading.ReadTFRecords` hands the job."""
        batch_size = self._settings.batch_size
        batches = max(self._settings.batches_in_flight, -(-reading.RECORDS_PER_LIST // batch_size))
        return batch_size * batches

    def run_inference(
        self,
        batch: Sequence[Sequence[bytes]],
        model: Worker,
        inference_args: Optional[Dict[str, Any]] = None,
    ) -> List[Results]:
        """Lists of serialized records -> one `Results` per list: each record parsed and
        checked (stages "parse", "validate"), and the records that passed explained
        (`explain_checked`), the batches' overviews merged into one for the call
        (`with_one_overview`). Records are parsed as `explain_checked` takes them, so that
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
        outcomes = with_one_overview([next(explained).inference
                                      if isinstance(record, CheckedRecord) else record
                                      for record in parsed])
        results, start = [], 0
        for records in batch:
            mine = parsed[start:start + len(records)]
            results.append(Results(records, outcomes[start:start + len(records)],
                                    [r.id for r in mine if isinstance(r, CheckedRecord)]))
            start += len(records)
        return results

    def explain_checked(self, records: Iterable[CheckedRecord], model: Worker
                        ) -> List[PredictionResult]:
        """Decode, explain and encode checked records, `batch_size` at a time, at most
        `batches_in_flight` batches in flight (`concurrency.in_flight`: decoded on the
        calling thread, explained and encoded on the pool's); each result's inference is
        the serialized schema-v2 record (an `Encoded` with analysis or the overview) or
        the `StageError` the record failed with, in the records' order."""
        return in_flight(records, self._settings.batch_size, self._settings.batches_in_flight,
                         self._decode, lambda batch, *decoded: self._explain_and_encode(
                             batch, *decoded, model))

    def _decode(self, batch: Sequence[CheckedRecord]
                ) -> Tuple[Pixels, Optional[np.ndarray], List[Optional[StageError]]]:
        """Stage "decode" for one batch: its images, its masks (with `mask_key`) and each
        record's decoding error (None where it decoded)."""
        images, outcomes = decode_batch(batch, self._spec)
        masks = None
        if self._spec.mask_key:
            masks, failures = decode_masks(batch, self._spec)
            outcomes = [outcome or failure for outcome, failure in zip(outcomes, failures)]
        return images, masks, outcomes

    def _explain_and_encode(self, batch: Sequence[CheckedRecord], images: Pixels,
                            masks: Optional[np.ndarray], outcomes: List[Any], model: Worker
                            ) -> List[PredictionResult]:
        """Stages "explain" and "encode" for one decoded batch (`_decode`'s images, masks
        and errors), with the analysis rows and the overview the settings ask for."""
        decoded = [i for i, error in enumerate(outcomes) if error is None]
        pixels = np.asarray(images)  # a view of the decoding's tensor, if it made one
        if decoded:
            # The usual batch decodes whole, and is explained without a copy: the decoding's
            # tensor, which the engine takes as it is.
            whole = len(decoded) == len(batch)
            with model_lock(model):
                explained = explain_decoded([batch[i] for i in decoded],
                                            images if whole else pixels[decoded], model,
                                            masks if masks is None or whole else masks[decoded],
                                            boxes=bool(self._spec.boxes_key))
            time.sleep(0)  # yields the GIL to the batch waiting to be explained
            for i, outcome in zip(decoded, explained):
                outcomes[i] = outcome
        encoded = encode_batch(batch, outcomes, self._settings.map_encoding,
                               self._spec.image_size)
        if self._settings.makes_analysis:
            encoded = with_rows(batch, outcomes, encoded, self._settings.metrics)
        if self._settings.strategies:
            encoded = with_strategies(outcomes, encoded, pixels, self._settings.strategies_size)
        if self._settings.overview:
            encoded = with_overview(batch, outcomes, encoded, pixels, self._directions)
        return [PredictionResult(record, outcome) for record, outcome in zip(batch, encoded)]

    def get_num_bytes(self, batch: Sequence[Sequence[bytes]]) -> int:
        """Bytes of the input records in the batch (what RunInference reports as its input
        size)."""
        return sum(len(record) for records in batch for record in records)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def __repr__(self) -> str:
        return f"RecordsHandler({self._settings!r})"


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
