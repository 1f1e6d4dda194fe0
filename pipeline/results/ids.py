"""Duplicate record ids: counted by the job and reported, never dropped.

Two input records with one id are both explained (nothing is lost), but their explanations
can no longer be told apart by id, nor joined back to their inputs. The job counts them with
Beam (each list of ids split by a stable hash of the id into `SHARDS` keys, a count per id
combined per key, so that the ids are spread over the workers; then one global combine that
keeps the counts and the few smallest duplicated ids as examples: memory per id, not per
record, and a handful of examples however many duplicates) and reports them as metrics,
which the launcher prints and the run manifest records:

- `duplicate_ids` (counter): ids carried by more than one record;
- `duplicate_id_records` (counter): records beyond the first of each such id;
- `duplicate_id_examples` (string set): up to `EXAMPLES` of those ids.

Usage, inside `pipeline.Explain`:

    ids | "CountDuplicateIds" >> CountDuplicateIds()   # lists of ids
"""

import collections
import heapq
import zlib
from typing import Dict, Iterable, List, NamedTuple, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.counters import METRICS_NAMESPACE

DUPLICATE_IDS_COUNTER = "duplicate_ids"
DUPLICATE_RECORDS_COUNTER = "duplicate_id_records"
DUPLICATE_EXAMPLES = "duplicate_id_examples"
EXAMPLES = 5
"""Duplicated ids kept as examples: the smallest, so that reruns report the same ones."""

SHARDS = 16
"""Keys the ids are counted under (a stable hash of the id picks one): each list of ids
becomes at most this many elements, and each key's counts can sit on its own worker."""


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


def _by_shard(ids: Iterable[str]) -> Iterable[Tuple[int, List[str]]]:
    """A list of ids -> (shard, its ids) pairs, the shard a stable hash of the id (the
    same on every worker, unlike Python's `hash`)."""
    shards: Dict[int, List[str]] = {}
    for record_id in ids:
        shards.setdefault(zlib.crc32(record_id.encode()) % SHARDS, []).append(record_id)
    return shards.items()


class _CountIdsFn(beam.CombineFn):
    """Lists of ids -> how many records hold each (a `Counter`)."""

    def create_accumulator(self) -> collections.Counter:
        return collections.Counter()

    def add_input(self, accumulator: collections.Counter, ids: List[str]):
        accumulator.update(ids)
        return accumulator

    def merge_accumulators(self, accumulators) -> collections.Counter:
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for accumulator in accumulators:
            merged.update(accumulator)
        return merged

    def extract_output(self, accumulator: collections.Counter) -> collections.Counter:
        return accumulator


def _duplicates(counts: collections.Counter) -> Duplicates:
    """One shard's counts -> its `Duplicates`."""
    duplicated = {record_id: n for record_id, n in counts.items() if n > 1}
    return Duplicates(len(duplicated), sum(duplicated.values()) - len(duplicated),
                      tuple(heapq.nsmallest(EXAMPLES, duplicated)))


class _DuplicatesFn(beam.CombineFn):
    """The shards' `Duplicates` -> one `Duplicates`."""

    def create_accumulator(self) -> Duplicates:
        return Duplicates()

    def add_input(self, accumulator: Duplicates, element: Duplicates) -> Duplicates:
        return self.merge_accumulators([accumulator, element])

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
    """Lists of record ids -> the duplicated ones, reported as metrics (see the module
    docstring); returns the one `Duplicates` (none when no id is duplicated)."""

    def expand(self, ids):
        return (
            ids
            | "Shard" >> beam.FlatMap(_by_shard)
            | "CountEach" >> beam.CombinePerKey(_CountIdsFn())
            | "Duplicated" >> beam.MapTuple(lambda shard, counts: _duplicates(counts))
            | "Keep" >> beam.Filter(lambda duplicates: duplicates.ids > 0)
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
