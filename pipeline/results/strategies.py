"""The strategies of each unit across the run (SpRAy, `explain_lib.strategies`), kept by the
job with `--strategies`.

Separation of concerns:

- The handler reduces each explained map to `--strategies_size` squared pixels
  (`explain_lib.strategies.reduce_maps`, float16) and makes its batch's thumbnails, one
  `StrategiesBatch` per explained batch with its analysis rows
  (`pipeline.worker.encoding.with_strategies`): everything here goes a batch at a time,
  never a Beam element per record.
- `FitStrategies` keeps per unit a bounded uniform sample of the maps with their thumbnails
  (`SampleMaps`, `--strategies_sample` per unit: memory bounded by the units and the sample,
  never by the records), fits each unit's clusters on its sample once at the end
  (`fit_unit`), and assigns every record to the nearest cluster (nearest centroid in the
  reduced-map space, `explain_lib.strategies.Strategies.assign`). The rows wait for the fit
  spilled to files (`SPILL_SUFFIX`, one per 1,024 records: the units and reduced maps as
  arrays, the rows as the `pyarrow.Table` the table would make of them) rather than in a
  Beam buffer, so that DirectRunner too holds only their paths while the sample is fitted;
  the launcher removes the folder when the run ends. The assigned tables gain their
  `cluster` column and go to the table; the maps are counted per cluster, so that each
  cluster's size and share are of every record, not of the sample.
- `pipeline.results.clusters.UnitStrategies` is what the overview (the report) and the
  manifest keep of a unit: k, the eigenvalues, per cluster its records, its mean reduced
  map, its prototypes (ids, reduced maps, thumbnails) and the spectral coordinates of part
  of the sample with their clusters, which the report lays out in 2-D.

Usage:

    schema = table_schema(strategies=True)
    fitted, tables = strategies_batches | FitStrategies("out/expl", sample=500, schema=schema)
    tables | WriteTable("out/expl.table", strategies=True)
"""

import functools
import heapq
import itertools
import pickle
import re
import uuid
from typing import Dict, List, NamedTuple, Sequence, Tuple

import apache_beam as beam
import numpy as np

from explain_lib import strategies as spray
from pipeline.io.files import read_bytes, write_bytes
from pipeline.results.clusters import UnitStrategies
from pipeline.results.table import AnalysisRow, to_arrow, with_clusters

SPILL_SUFFIX = ".strategies-rows"
"""Appended to `--output`: the folder where the analysis rows wait for the clusters."""

SPILL_NAME = re.compile(r"[0-9a-f]{32}\.pkl")
"""The name of a spill file in the folder (`_Spill`): what the job removes there, nothing
else."""

ROWS_PER_SPILL = 1024
"""Rows (records) written to one spill file."""

COUNTS = "counts"
"""Tag of the assigning stage's {(unit, cluster): maps} per spill file."""


Entry = Tuple[str, np.ndarray, np.ndarray]
"""One sampled map: (id, reduced map (D,) float16, thumbnail (h, w, C))."""


class StrategiesBatch(NamedTuple):
    """What one explained batch gives the strategies (`pipeline.worker.encoding.
    with_strategies`): its analysis `rows`, their maps reduced, `reduced` (sum of K, D)
    float16 (each row's units in turn, the table's row order), and their images small,
    `thumbnails` (B, h, w, C), one per row."""

    rows: List[AnalysisRow]
    reduced: np.ndarray
    thumbnails: np.ndarray

    def units(self) -> np.ndarray:
        """(sum of K,) int64: the unit of each reduced map."""
        if not self.rows:
            return np.zeros(0, np.int64)
        return np.concatenate([np.asarray(row.units) for row in self.rows]).astype(np.int64)


def sample_chunks(batch: StrategiesBatch) -> List[Tuple[int, Tuple[List[str], np.ndarray,
                                                                     np.ndarray]]]:
    """(unit, (ids, reduced maps (m, D), thumbnails (m, h, w, C))) for each unit the batch
    explains: one element per unit present, not per record."""
    units = batch.units()
    records = np.repeat(np.arange(len(batch.rows)), [len(row.units) for row in batch.rows])
    chunks = []
    for unit in np.unique(units):
        chosen = np.flatnonzero(units == unit)
        chunks.append((int(unit), ([batch.rows[r].id for r in records[chosen]],
                                   batch.reduced[chosen], batch.thumbnails[records[chosen]])))
    return chunks


_TIES = itertools.count()
"""Breaks ties between equal random keys (never between arrays)."""


class SampleMaps(beam.CombineFn):
    """A uniform sample without replacement of at most `size` maps per key from chunks of
    (ids, reduced maps, thumbnails) (`sample_chunks`): each map drawn a uniform random key,
    the `size` largest keys kept, as Beam's `Sample.FixedSizePerKey` does per element; here
    the keys of a chunk are drawn at once, and only the maps that enter the sample are
    copied out of their chunk. The accumulator is a heap of at most `size` entries. Output:
    the sampled `Entry`s."""

    def __init__(self, size: int):
        self._size = size
        self._random = None

    def __getstate__(self):
        # Each copy draws its own keys: a generator pickled along would give every copy the
        # same sequence, and their samples the same positions.
        return {**self.__dict__, "_random": None}

    def create_accumulator(self):
        return []

    def add_input(self, heap, chunk):
        ids, reduced, thumbnails = chunk
        if self._random is None:
            self._random = np.random.default_rng()
        keys = self._random.random(len(ids))
        floor = heap[0][0] if len(heap) >= self._size else -1.0
        for i in np.flatnonzero(keys > floor):
            key = float(keys[i])
            if len(heap) >= self._size and key <= heap[0][0]:
                continue
            entry = (key, next(_TIES), (ids[i], reduced[i].copy(), thumbnails[i].copy()))
            if len(heap) < self._size:
                heapq.heappush(heap, entry)
            else:
                heapq.heapreplace(heap, entry)
        return heap

    def merge_accumulators(self, heaps):
        heaps = list(heaps)
        merged = heaps[0]
        for heap in heaps[1:]:
            for entry in heap:
                if len(merged) < self._size:
                    heapq.heappush(merged, entry)
                elif entry[0] > merged[0][0]:
                    heapq.heapreplace(merged, entry)
        return merged

    def extract_output(self, heap) -> List[Entry]:
        return [entry for _, _, entry in heap]


def fit_unit(unit: int, entries: Sequence[Entry], clusters: int = 0,
             neighbors: int = spray.NEIGHBORS) -> UnitStrategies:
    """`explain_lib.strategies.fit_strategies` on a unit's sampled entries, ordered by id
    first so that the fit does not depend on the order the sample came in."""
    entries = sorted(entries, key=lambda entry: entry[0])
    ids = [entry[0] for entry in entries]
    reduced = np.stack([entry[1] for entry in entries]).astype(np.float32)
    fitted = spray.fit_strategies(reduced, ids, clusters=clusters, neighbors=neighbors)
    size = fitted.size
    thumbnails = np.stack([entry[2] for entry in entries])
    slots = fitted.prototypes
    prototype_maps = np.where((slots >= 0)[..., None], reduced[np.maximum(slots, 0)], 0.0)
    prototype_images = np.where((slots >= 0)[..., None, None, None],
                                thumbnails[np.maximum(slots, 0)], 0).astype(np.uint8)
    m = len(fitted.features)
    return UnitStrategies(
        unit=unit, k=fitted.k, sample=len(entries), eigenvalues=fitted.eigenvalues,
        sample_sizes=fitted.sizes.tolist(), mean_maps=fitted.mean_maps(),
        prototypes=fitted.prototype_ids(),
        prototype_maps=prototype_maps.reshape(fitted.k, -1, size, size).astype(np.float32),
        prototype_images=prototype_images, features=fitted.features,
        feature_clusters=fitted.labels[:m].astype(np.int32), agreement=fitted.agreement)


def assign(units: np.ndarray, reduced: np.ndarray,
           centroids: Dict[int, np.ndarray]) -> np.ndarray:
    """(N,) units, (N, D) reduced maps -> (N,) int32: each map's nearest centroid among its
    unit's `centroids` (unit -> (k, D)); -1 for a unit without fitted clusters. One
    nearest-centroid call per unit present, on one BLAS thread (the products' numbers are
    the same on any number: no thread splits a dot product; on a busy machine, OpenBLAS's
    threads waiting for each other cost more than the product)."""
    clusters = np.full(len(units), -1, np.int32)
    reduced = _float32(reduced)
    with _blas().limit(limits=1, user_api="blas"):
        for unit in np.unique(units):
            fitted = centroids.get(int(unit))
            if fitted is not None:
                chosen = units == unit
                clusters[chosen] = spray.nearest_centroid(reduced[chosen], fitted)
    return clusters


_FLOAT16_VALUES = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(
    np.float16).astype(np.float32)
"""Every float16 bit pattern's float32 value, as numpy converts it."""


def _float32(values: np.ndarray) -> np.ndarray:
    """float16 -> float32 by looking each bit pattern up: numpy's own numbers (the table is
    its conversion), a third of its time."""
    if values.dtype != np.float16:
        return np.asarray(values, np.float32)
    return _FLOAT16_VALUES.take(values.view(np.uint16))


@functools.lru_cache(maxsize=1)
def _blas():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def cluster_counts(units: np.ndarray, clusters: np.ndarray) -> Dict[Tuple[int, int], int]:
    """{(unit, cluster): explained maps} over assigned maps."""
    if not len(units):
        return {}
    pairs, counts = np.unique(np.stack([np.asarray(units, np.int64),
                                        np.asarray(clusters, np.int64)], axis=1),
                              axis=0, return_counts=True)
    return {(int(u), int(c)): int(n) for (u, c), n in zip(pairs, counts)}


class _SumCounts(beam.CombineFn):
    """Dicts of counts -> their sum (a few numbers per unit's cluster)."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, counts):
        for key, count in counts.items():
            accumulator[key] = accumulator.get(key, 0) + count
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            self.add_input(merged, accumulator)
        return merged

    def extract_output(self, accumulator):
        return accumulator


def spill_path(output: str) -> str:
    """The folder where the run writing `output` spills its rows."""
    return output + SPILL_SUFFIX


class _Spill(beam.DoFn):
    """Lists of `StrategiesBatch`es -> the path of one spill file holding their units, their
    reduced maps (one array) and, with a table `schema`, their rows as one `pyarrow.Table`
    without its `cluster` column (what `pipeline.results.table.WriteTable` would make of
    them): columns and arrays, pickled at once, not a pickled object per row."""

    def __init__(self, folder: str, schema=None):
        self._folder = folder
        self._schema = schema

    def process(self, batches):
        rows = [row for batch in batches for row in batch.rows]
        units = np.concatenate([batch.units() for batch in batches])
        reduced = np.concatenate([batch.reduced for batch in batches])
        table = None
        if self._schema is not None:
            table = to_arrow(rows, self._schema.remove(self._schema.get_field_index(
                "cluster")))
        path = f"{self._folder}/{uuid.uuid4().hex}.pkl"
        write_bytes(path, pickle.dumps((units, reduced, table),
                                       protocol=pickle.HIGHEST_PROTOCOL))
        yield path


def _read_and_assign(path: str, fitted: Sequence[UnitStrategies], schema=None):
    # The job's own files, written above in this run: unpickling them trusts nothing foreign.
    units, reduced, table = pickle.loads(read_bytes(path))
    centroids = {f.unit: f.mean_maps.reshape(f.k, -1) for f in fitted}
    clusters = assign(units, reduced, centroids)
    yield beam.pvalue.TaggedOutput(COUNTS, cluster_counts(units, clusters))
    if table is not None:
        yield with_clusters(table, clusters, schema)


def _with_counts(fitted: Sequence[UnitStrategies], counted) -> Dict[int, UnitStrategies]:
    result = {}
    for unit in fitted:
        unit.records = [int(counted.get((unit.unit, c), 0)) for c in range(unit.k)]
        result[unit.unit] = unit
    return result


class FitStrategies(beam.PTransform):
    """`StrategiesBatch`es -> (a singleton PCollection of {unit: `UnitStrategies`} with each
    cluster's assigned records counted, the rows as `pyarrow.Table`s of the table's `schema`
    with their `cluster` column; none without a `schema`). See the module's docstring."""

    def __init__(self, output: str, sample: int = 500, clusters: int = 0,
                 neighbors: int = spray.NEIGHBORS, schema=None, label=None):
        super().__init__(label)
        self.folder = spill_path(output)
        self.sample, self.clusters, self.neighbors = sample, clusters, neighbors
        self.schema = schema

    def expand(self, batches):
        clusters, neighbors, schema = self.clusters, self.neighbors, self.schema
        fitted = (batches
                  | "Chunks" >> beam.FlatMap(sample_chunks)
                  | "Sample" >> beam.CombinePerKey(SampleMaps(self.sample))
                  | "Fit" >> beam.MapTuple(fit_unit, clusters=clusters, neighbors=neighbors)
                  | "AllUnits" >> beam.combiners.ToList())
        tables, counts = (
            batches
            | "Batch" >> beam.BatchElements(min_batch_size=ROWS_PER_SPILL,
                                            max_batch_size=ROWS_PER_SPILL,
                                            element_size_fn=lambda batch: len(batch.rows))
            | "Spill" >> beam.ParDo(_Spill(self.folder, schema))
            | "Assign" >> beam.FlatMap(_read_and_assign, beam.pvalue.AsSingleton(fitted),
                                       schema).with_outputs(COUNTS, main="tables"))
        total = counts | "Count" >> beam.CombineGlobally(_SumCounts())
        counted = fitted | "Counted" >> beam.Map(_with_counts, beam.pvalue.AsSingleton(total))
        return counted, tables


__all__ = ["COUNTS", "FitStrategies", "SPILL_NAME", "SPILL_SUFFIX", "SampleMaps", "StrategiesBatch",
           "assign", "cluster_counts", "fit_unit", "sample_chunks", "spill_path"]
