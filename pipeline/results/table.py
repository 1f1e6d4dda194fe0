"""The job's Parquet table: one row per explained unit, for SQL engines (DuckDB, BigQuery,
Spark) over columnar files.

Separation of concerns:

- `analysis_rows` (in the handler, once per batch) turns a batch's explanations into one
  compact `AnalysisRow` per record: its units, logits, probabilities, map statistics
  (`explain_lib.analysis.map_statistics`, vectorised over the batch's maps, before they are
  encoded), metric scores and copied input features, as small numpy arrays.
- `table_schema` is the table's pyarrow schema, fixed at launch from the metrics and the
  copied features' kinds: a column per metric, per statistic and per copied feature.
- `to_arrow` turns a batch of rows into one `pyarrow.Table`, column by column (no Python
  work per row); NaN becomes null, so that SQL's `AVG` skips a score that does not exist
  (a pointing game without ground truth, a map without positive mass).
- `WriteTable` batches the rows (Beam's `BatchElements`), converts them and writes them
  as PREFIX-SSSSS-of-NNNNN.parquet with the job's Parquet writer
  (`pipeline.io.writing.WriteParquet`), which deletes no file but the table's own earlier
  shards.

Usage:

    rows = result.analysis                                  # pipeline.Explain's third output
    rows | WriteTable("out/expl.table", metrics=["deletion"], features={"label": "int64"})

    duckdb.sql("SELECT unit, avg(deletion) FROM 'out/expl.table-*.parquet' GROUP BY unit")
"""

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

from explain_lib.analysis import map_statistics
from pipeline.io.writing import WriteParquet

TABLE_SUFFIX = ".parquet"
"""Suffix of the table's files: PREFIX-SSSSS-of-NNNNN.parquet."""

STATISTICS = ("peak_y", "peak_x", "centre_y", "centre_x", "top10_mass", "entropy")
"""The map statistics in the table (`explain_lib.analysis.map_statistics`): where the map
peaks and its centre of mass (fractions of its height and width), how much of its positive
mass the top 10% of pixels hold, and its normalised entropy."""

TABLE_COLUMNS = ("id", "unit", "rank", "logit", "probability") + STATISTICS
"""The table's own columns, before one per metric and one per copied feature."""

FEATURE_KINDS = ("int64", "float", "bytes")
"""Kinds of `tf.train.Feature` a copied feature may have (bytes are copied as UTF-8 text)."""

ROWS_PER_TABLE = 1024
"""Records gathered into one `pyarrow.Table` before writing (bounded memory)."""


class AnalysisRow(NamedTuple):
    """What the table and the metric aggregates need of one explained record: its `id`,
    `units` (K,) int64, `logits` and `probabilities` (K,) float32, `statistics` (S, K)
    float32 in `STATISTICS` order, `metrics` (M, K) float32 in the job's metric order, and
    `features`, the copied input features' values (None where the record has none)."""

    id: str
    units: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray
    statistics: np.ndarray
    metrics: np.ndarray
    features: Tuple[Any, ...] = ()


def analysis_rows(ids: Sequence[str], explanations: Sequence, metric_names: Sequence[str],
                  features: Sequence[Tuple[Any, ...]]) -> List[AnalysisRow]:
    """One `AnalysisRow` per explanation (`pipeline.worker.explaining.RecordMaps`, maps at their
    stored resolution, not yet encoded). Statistics are computed with one
    `map_statistics` call per group of maps of one shape (a batch is one group unless its
    records explain different numbers of units).

    Usage:

        rows = analysis_rows([r.id for r in records], explanations, ["deletion"],
                             [r.features for r in records])
    """
    rows: List[Optional[AnalysisRow]] = [None] * len(explanations)
    groups: Dict[tuple, List[int]] = {}
    for i, explanation in enumerate(explanations):
        groups.setdefault(np.shape(explanation.maps), []).append(i)
    for indices in groups.values():
        maps = np.stack([explanations[i].maps for i in indices])  # (B, H, W, K)
        statistics = map_statistics(maps)
        stacked = np.stack([statistics[name] for name in STATISTICS], axis=1)  # (B, S, K)
        for row, i in enumerate(indices):
            explanation = explanations[i]
            units = len(explanation.units)
            scores = np.asarray([explanation.metrics[name] for name in metric_names],
                                np.float32).reshape(len(metric_names), units)
            rows[i] = AnalysisRow(ids[i], explanation.units,
                                  np.asarray(explanation.logits, np.float32),
                                  np.asarray(explanation.probabilities, np.float32),
                                  stacked[row].astype(np.float32), scores, tuple(features[i]))
    return rows


def table_schema(metrics: Sequence[str] = (), features: Optional[Mapping[str, str]] = None,
                 strategies: bool = False):
    """The table's pyarrow schema: `TABLE_COLUMNS`, then a float column per metric, then
    with `strategies` an int32 `cluster` (the unit's SpRAy cluster), then a column per copied
    feature (`features`: name -> "int64", "float" or "bytes", read as
    int64, float32 or UTF-8 text). Floats are float32, as the records hold them."""
    kinds = {"int64": pa.int64(), "float": pa.float32(), "bytes": pa.string()}
    fields = [pa.field("id", pa.string(), nullable=False),
              pa.field("unit", pa.int64(), nullable=False),
              pa.field("rank", pa.int32(), nullable=False),
              pa.field("logit", pa.float32(), nullable=False),
              pa.field("probability", pa.float32())]
    fields += [pa.field(name, pa.float32()) for name in STATISTICS + tuple(metrics)]
    if strategies:
        fields.append(pa.field("cluster", pa.int32()))
    fields += [pa.field(name, kinds[kind]) for name, kind in (features or {}).items()]
    return pa.schema(fields)


def to_arrow(rows: Sequence[AnalysisRow], schema) -> pa.Table:
    """A batch of rows as one `pyarrow.Table` of `schema` (without its `cluster` column,
    which `with_clusters` adds), one row per explained unit (in record order, then rank
    order). NaN floats become nulls."""
    counts = np.array([len(row.units) for row in rows])
    starts = np.cumsum(counts) - counts  # each record's first row
    ranks = (np.arange(counts.sum()) - np.repeat(starts, counts)).astype(np.int32)

    def floats(values):
        values = np.asarray(values, np.float32)
        return pa.array(values, pa.float32(), mask=np.isnan(values))

    statistics = np.concatenate([row.statistics for row in rows], axis=1)  # (S, N·K)
    metrics = np.concatenate([row.metrics for row in rows], axis=1)  # (M, N·K)
    columns = [
        pa.array(np.repeat(np.array([row.id for row in rows], dtype=object), counts),
                 pa.string()),
        pa.array(np.concatenate([row.units for row in rows]).astype(np.int64), pa.int64()),
        pa.array(ranks, pa.int32()),
        pa.array(np.concatenate([row.logits for row in rows]), pa.float32()),
        floats(np.concatenate([row.probabilities for row in rows])),
        *(floats(values) for values in statistics),
        *(floats(values) for values in metrics),
    ]
    for index, field in enumerate(list(schema)[len(columns):]):
        values = np.repeat(np.array([row.features[index] for row in rows], dtype=object), counts)
        columns.append(pa.array(values.tolist(), field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def with_clusters(table: pa.Table, clusters: np.ndarray, schema) -> pa.Table:
    """`to_arrow`'s table of a schema without `cluster` -> the table of `schema` (which has
    it, `table_schema(strategies=True)`) with `clusters` (one per table row, int32; -1
    becomes null) as its `cluster` column."""
    clusters = np.asarray(clusters, np.int32)
    index = schema.get_field_index("cluster")
    return table.add_column(index, schema.field(index),
                            pa.array(clusters, pa.int32(), mask=clusters < 0))


class _ToArrow(beam.DoFn):
    """A batch of `AnalysisRow`s -> one `pyarrow.Table`."""

    def __init__(self, schema):
        self._schema = schema

    def process(self, rows):
        yield to_arrow(rows, self._schema)


class WriteTable(beam.PTransform):
    """Write `AnalysisRow`s as a Parquet table PREFIX-SSSSS-of-NNNNN.parquet (`num_shards`
    files, 0: as the runner decides), `ROWS_PER_TABLE` records per `pyarrow.Table`,
    snappy-compressed (which every SQL engine reads), with `pipeline.io.writing.WriteParquet`.
    With `strategies`, the table has a `cluster` column and what comes in are
    `pyarrow.Table`s of its schema already, with it (`pipeline.results.strategies.
    FitStrategies` makes them).

    Usage:

        rows | WriteTable("out/expl.table", metrics=["deletion"], features={"label": "int64"})
    """

    def __init__(self, prefix: str, metrics: Sequence[str] = (),
                 features: Optional[Mapping[str, str]] = None, num_shards: int = 0,
                 strategies: bool = False, label=None):
        super().__init__(label)
        self.prefix = prefix
        self.schema = table_schema(metrics, features, strategies)
        self.num_shards = num_shards
        self.strategies = strategies

    def expand(self, rows):
        write = WriteParquet(self.prefix, self.schema, TABLE_SUFFIX, self.num_shards)
        if self.strategies:
            return rows | "WriteParquet" >> write
        return (rows
                | "Batch" >> beam.BatchElements(min_batch_size=ROWS_PER_TABLE,
                                                max_batch_size=ROWS_PER_TABLE)
                | "ToArrow" >> beam.ParDo(_ToArrow(self.schema))
                | "WriteParquet" >> write)


__all__ = [
    "FEATURE_KINDS",
    "STATISTICS",
    "TABLE_COLUMNS",
    "TABLE_SUFFIX",
    "AnalysisRow",
    "WriteTable",
    "analysis_rows",
    "table_schema",
    "to_arrow",
    "with_clusters",
]
