"""The metrics of a run summarised per unit: how many records were scored, the mean, and
quantiles, computed with Beam's combiners in bounded memory whatever the record count.

Separation of concerns:

- `metric_batches` turns a batch of `pipeline.results.table.AnalysisRow`s into one array of scores
  per (metric, unit) and per (metric, every unit): the combiners take whole arrays, not one
  score at a time.
- `MeanCombineFn` (count, scores missing, sum: a few numbers per key) and Beam's
  `ApproximateQuantilesCombineFn` (a bounded sketch per key, exact for small inputs, within
  `QUANTILE_EPSILON` in rank otherwise) combine them; `AggregateMetrics` joins both into one
  JSON document, written next to the outputs while the job runs, which the launcher moves into
  the run manifest
  (`pipeline.results.manifest`, `python -m pipeline.summary`).

Usage:

    rows | AggregateMetrics(["deletion", "pointing_game"], "out/expl.aggregates")
    summary = read_aggregates("out/expl.aggregates")
    summary["deletion"]["all"]["mean"], summary["deletion"]["per_unit"]["3"]["quantiles"]
"""

import json
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.transforms.stats import ApproximateQuantilesCombineFn

from pipeline.io.files import read_bytes

QUANTILES = 5
"""Quantiles kept per metric and unit: the minimum, the quartiles and the maximum."""

QUANTILE_LEVELS = tuple(i / (QUANTILES - 1) for i in range(QUANTILES))

QUANTILE_EPSILON = 0.01
"""Rank error of the quantiles: the one at level q of N scores lies between the scores of
ranks (q - 0.01)·N and (q + 0.01)·N (Beam's guarantee for up to 10⁹ scores per key). Beam's
default for 5 quantiles, 1/5, would allow 20%; this costs at most about 20,000 numbers per
key, and is exact below about a thousand scores per key."""

ALL_UNITS = "all"
"""The key of a metric's scores over every unit."""

ROWS_PER_BATCH = 1024

AGGREGATES_SUFFIX = ".json"


def metric_batches(rows: Sequence, metrics: Sequence[str]
                   ) -> Iterable[Tuple[Tuple[str, Any], np.ndarray]]:
    """((metric, unit), scores float32) for every metric and every unit in `rows` (a batch
    of `AnalysisRow`s), and ((metric, "all"), every score of the metric); NaN scores (not
    scored: no ground truth) are kept, for the count of missing ones."""
    units = np.concatenate([row.units for row in rows])
    scores = np.concatenate([row.metrics for row in rows], axis=1)  # (M, N·K)
    # One sort groups the scores by unit: O(N log N), not a pass per unit present (a
    # batch of ImageNet records may explain hundreds of units).
    order = np.argsort(units, kind="stable")
    present, starts = np.unique(units[order], return_index=True)
    for m, metric in enumerate(metrics):
        yield (metric, ALL_UNITS), scores[m]
        for unit, unit_scores in zip(present, np.split(scores[m][order], starts[1:])):
            yield (metric, int(unit)), unit_scores


class MeanCombineFn(beam.CombineFn):
    """Arrays of scores -> {"count", "missing", "mean"}: `count` finite scores, `missing`
    NaN ones (records that could not be scored), the mean of the finite ones (None when
    there is none). The accumulator is three numbers."""

    def create_accumulator(self):
        return 0, 0, 0.0

    def add_input(self, accumulator, scores):
        count, missing, total = accumulator
        scores = np.asarray(scores, np.float64)
        finite = np.isfinite(scores)
        return (count + int(finite.sum()), missing + int((~finite).sum()),
                total + float(scores[finite].sum()))

    def merge_accumulators(self, accumulators):
        counts, missing, totals = zip(*accumulators)
        return sum(counts), sum(missing), sum(totals)

    def extract_output(self, accumulator):
        count, missing, total = accumulator
        return {"count": count, "missing": missing, "mean": total / count if count else None}


def _finite(item):
    key, scores = item
    return key, [float(v) for v in np.asarray(scores)[np.isfinite(scores)]]


def _joined(item) -> Tuple[str, Any, Dict[str, Any]]:
    (metric, unit), parts = item
    summary = dict(parts["mean"][0]) if parts["mean"] else {"count": 0, "missing": 0,
                                                             "mean": None}
    summary["quantiles"] = list(parts["quantiles"][0]) if parts["quantiles"] else []
    return metric, unit, summary


def document(entries: Iterable[Tuple[str, Any, Dict[str, Any]]], metrics: Sequence[str]
             ) -> Dict[str, Any]:
    """The aggregates as one JSON document: {"quantile_levels": [...], metric: {"all":
    summary, "per_unit": {unit: summary}}}, units in increasing order."""
    result: Dict[str, Any] = {"quantile_levels": list(QUANTILE_LEVELS)}
    for metric in metrics:
        result[metric] = {ALL_UNITS: {"count": 0, "missing": 0, "mean": None, "quantiles": []},
                          "per_unit": {}}
    per_unit: Dict[str, List] = {metric: [] for metric in metrics}
    for metric, unit, summary in entries:
        if unit == ALL_UNITS:
            result[metric][ALL_UNITS] = summary
        else:
            per_unit[metric].append((unit, summary))
    for metric, units in per_unit.items():
        result[metric]["per_unit"] = {str(unit): summary for unit, summary in sorted(units)}
    return result


class AggregateMetrics(beam.PTransform):
    """`AnalysisRow`s -> the file PREFIX.json holding each metric's count, mean and
    quantiles, per unit and over all units (`document`).

    Bounded memory: rows are batched (`BatchElements`), each batch becomes one array per key
    (`metric_batches`), and the combiners keep a few numbers (`MeanCombineFn`) or a bounded
    sketch (`ApproximateQuantilesCombineFn`, `QUANTILE_EPSILON`) per key.
    """

    def __init__(self, metrics: Sequence[str], prefix: str, label=None):
        super().__init__(label)
        self.metrics = tuple(metrics)
        self.prefix = prefix

    def expand(self, rows):
        metrics = self.metrics
        scores = (rows
                  | "Batch" >> beam.BatchElements(min_batch_size=ROWS_PER_BATCH,
                                                  max_batch_size=ROWS_PER_BATCH)
                  | "PerKey" >> beam.FlatMap(lambda batch: metric_batches(batch, metrics)))
        means = scores | "Mean" >> beam.CombinePerKey(MeanCombineFn())
        quantiles = (scores
                     | "Finite" >> beam.Map(_finite)
                     | "Scored" >> beam.Filter(lambda item: len(item[1]) > 0)
                     | "Quantiles" >> beam.CombinePerKey(ApproximateQuantilesCombineFn.create(
                         QUANTILES, epsilon=QUANTILE_EPSILON, input_batched=True)))
        return ({"mean": means, "quantiles": quantiles}
                | "Join" >> beam.CoGroupByKey()
                | "Summaries" >> beam.Map(_joined)
                | "Gather" >> beam.combiners.ToList()
                | "Document" >> beam.Map(lambda entries: json.dumps(document(entries, metrics)))
                | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=AGGREGATES_SUFFIX,
                                                 shard_name_template="", num_shards=1))


def aggregates_path(prefix: str) -> str:
    """The file `AggregateMetrics(..., prefix)` writes."""
    return prefix + AGGREGATES_SUFFIX


def read_aggregates(prefix: str) -> Optional[Dict[str, Any]]:
    """The document `AggregateMetrics` wrote under `prefix` (any Beam filesystem); None when
    there is none."""
    try:
        return json.loads(read_bytes(aggregates_path(prefix)).decode("utf-8"))
    except FileNotFoundError:
        return None


__all__ = [
    "ALL_UNITS",
    "QUANTILES",
    "QUANTILE_EPSILON",
    "QUANTILE_LEVELS",
    "AggregateMetrics",
    "MeanCombineFn",
    "aggregates_path",
    "document",
    "metric_batches",
    "read_aggregates",
]
