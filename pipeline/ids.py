"""Duplicate record ids: counted by the job and reported, never dropped.

Two input records with one id are both explained (nothing is lost), but their explanations
can no longer be told apart by id, nor joined back to their inputs. The job counts them with
Beam (`Count.PerElement` over the ids, then one global combine that keeps the counts and the
few smallest duplicated ids as examples: memory per id, not per record, and a handful of
examples however many duplicates) and reports them as metrics, which the launcher prints and
the run manifest records:

- `duplicate_ids` (counter): ids carried by more than one record;
- `duplicate_id_records` (counter): records beyond the first of each such id;
- `duplicate_id_examples` (string set): up to `EXAMPLES` of those ids.

Usage, inside `pipeline.Explain`:

    checked | "CountDuplicateIds" >> CountDuplicateIds()
"""

import heapq
from typing import NamedTuple, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.handler import METRICS_NAMESPACE

DUPLICATE_IDS_COUNTER = "duplicate_ids"
DUPLICATE_RECORDS_COUNTER = "duplicate_id_records"
DUPLICATE_EXAMPLES = "duplicate_id_examples"
EXAMPLES = 5
"""Duplicated ids kept as examples: the smallest, so that reruns report the same ones."""


class Duplicates(NamedTuple):
    """Ids held by more than one record, the records beyond the first of each, and a few
    of those ids."""

    ids: int = 0
    records: int = 0
    examples: Tuple[str, ...] = ()

    def describe(self) -> str:
        """'2 ids held by 3 more records (e.g. a, b); all explained'."""
        return (f"{self.ids} ids held by {self.records} more records "
                f"(e.g. {', '.join(self.examples)}); all explained")


class _DuplicatesFn(beam.CombineFn):
    """(id, records holding it) pairs of duplicated ids -> `Duplicates`."""

    def create_accumulator(self) -> Duplicates:
        return Duplicates()

    def add_input(self, accumulator: Duplicates, element) -> Duplicates:
        record_id, count = element
        return Duplicates(accumulator.ids + 1, accumulator.records + count - 1,
                          tuple(heapq.nsmallest(EXAMPLES, [*accumulator.examples, record_id])))

    def merge_accumulators(self, accumulators) -> Duplicates:
        accumulators = list(accumulators)
        examples = [e for accumulator in accumulators for e in accumulator.examples]
        return Duplicates(sum(a.ids for a in accumulators), sum(a.records for a in accumulators),
                          tuple(heapq.nsmallest(EXAMPLES, examples)))

    def extract_output(self, accumulator: Duplicates) -> Duplicates:
        return accumulator


class _ReportDuplicates(beam.DoFn):
    def process(self, duplicates: Duplicates):
        Metrics.counter(METRICS_NAMESPACE, DUPLICATE_IDS_COUNTER).inc(duplicates.ids)
        Metrics.counter(METRICS_NAMESPACE, DUPLICATE_RECORDS_COUNTER).inc(duplicates.records)
        examples = Metrics.string_set(METRICS_NAMESPACE, DUPLICATE_EXAMPLES)
        for example in duplicates.examples:
            examples.add(example)
        yield duplicates


class CountDuplicateIds(beam.PTransform):
    """Records with an `id` attribute (`CheckedRecord`s) -> their duplicated ids, reported as
    metrics (see the module docstring); returns the one `Duplicates` (none when no id is
    duplicated)."""

    def expand(self, records):
        return (
            records
            | "Ids" >> beam.Map(lambda record: record.id)
            | "CountEach" >> beam.combiners.Count.PerElement()
            | "Duplicated" >> beam.Filter(lambda id_count: id_count[1] > 1)
            | "Summarize" >> beam.CombineGlobally(_DuplicatesFn()).without_defaults()
            | "Report" >> beam.ParDo(_ReportDuplicates())
        )


__all__ = [
    "CountDuplicateIds",
    "DUPLICATE_EXAMPLES",
    "DUPLICATE_IDS_COUNTER",
    "DUPLICATE_RECORDS_COUNTER",
    "Duplicates",
    "EXAMPLES",
]
