"""The strategies of each unit across the run (SpRAy, `explain_lib.strategies`), kept by the
job with `--strategies`.

Separation of concerns:

- The handler reduces each explained map to `--strategies_size` squared pixels
  (`explain_lib.strategies.reduce_maps`, float16) and a thumbnail of its image, on the
  record's `pipeline.results.table.AnalysisRow` (`pipeline.worker.encoding.with_strategies`).
- `FitStrategies` keeps per unit a bounded uniform sample of them (Beam's
  `Sample.FixedSizePerKey`, `--strategies_sample` per unit: memory bounded by the units and
  the sample, never by the records), fits each unit's clusters on its sample once at the end
  (`fit_unit`), and assigns every record to the nearest cluster (nearest centroid in the
  reduced-map space, `explain_lib.strategies.Strategies.assign`). The rows wait for the fit
  spilled to files (`SPILL_SUFFIX`, a few per 1,024 rows) rather than in a Beam buffer, so
  that DirectRunner too holds only their paths while the sample is fitted; the launcher
  removes the folder when the run ends. The assigned rows go to the table (its `cluster`
  column) and are counted per cluster, so that each cluster's size and share are of every
  record, not of the sample.
- `pipeline.results.clusters.UnitStrategies` is what the overview (the report) and the
  manifest keep of a unit: k, the eigenvalues, per cluster its records, its mean reduced
  map, its prototypes (ids, reduced maps, thumbnails) and the sample's 2-D embedding with
  its clusters.

Usage:

    fitted, rows = analysis_rows | FitStrategies("out/expl", sample=500)
    rows | WriteTable("out/expl.table", strategies=True)
"""

import pickle
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np

from explain_lib import strategies as spray
from pipeline.io.files import read_bytes, write_bytes
from pipeline.results.clusters import UnitStrategies

SPILL_SUFFIX = ".strategies-rows"
"""Appended to `--output`: the folder where the analysis rows wait for the clusters."""

ROWS_PER_SPILL = 1024
"""Rows written to one spill file."""

COUNTS = "counts"
"""Tag of the assigning stage's {(unit, cluster): maps} per spill file."""


Entry = Tuple[str, np.ndarray, np.ndarray]
"""One sampled map: (id, reduced map (D,) float16, thumbnail (h, w, C) uint8)."""


def sample_entries(row) -> List[Tuple[int, Entry]]:
    """(unit, (id, reduced map, thumbnail)) for each unit a row explains."""
    return [(int(unit), (row.id, row.reduced[k].copy(), row.thumbnail))
            for k, unit in enumerate(row.units)]


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
    m = len(fitted.embedding)
    return UnitStrategies(
        unit=unit, k=fitted.k, sample=len(entries), eigenvalues=fitted.eigenvalues,
        sample_sizes=fitted.sizes.tolist(), mean_maps=fitted.mean_maps(),
        prototypes=fitted.prototype_ids(),
        prototype_maps=prototype_maps.reshape(fitted.k, -1, size, size).astype(np.float32),
        prototype_images=prototype_images, embedding=fitted.embedding,
        embedding_clusters=fitted.labels[:m].astype(np.int32), agreement=fitted.agreement)


def assign_rows(rows: Sequence, centroids: Dict[int, np.ndarray],
                reduced: Optional[np.ndarray] = None) -> List:
    """Each row with `clusters` (K,) int32: each unit's map's nearest centroid among
    `centroids` (unit -> (k, D)); -1 for a unit without fitted clusters. The reduced maps
    are the rows' own, or `reduced` (sum of K, D), theirs stacked in order; they and the
    thumbnails are dropped (the table does not hold them). One nearest-centroid call per
    unit present, not per row."""
    units = np.concatenate([np.asarray(row.units) for row in rows]) if rows else np.zeros(0)
    clusters = np.full(len(units), -1, np.int32)
    if len(units):
        if reduced is None:
            reduced = np.concatenate([row.reduced for row in rows])  # (sum K, D)
        for unit in np.unique(units):
            fitted = centroids.get(int(unit))
            if fitted is not None:
                chosen = units == unit
                clusters[chosen] = spray.nearest_centroid(reduced[chosen], fitted)
    assigned, start = [], 0
    for row in rows:
        count = len(row.units)
        assigned.append(row._replace(clusters=clusters[start:start + count].copy(),
                                     reduced=None, thumbnail=None))
        start += count
    return assigned


def cluster_counts(rows: Sequence) -> Dict[Tuple[int, int], int]:
    """{(unit, cluster): explained maps} over assigned rows."""
    if not rows:
        return {}
    units = np.concatenate([np.asarray(row.units) for row in rows]).astype(np.int64)
    clusters = np.concatenate([row.clusters for row in rows]).astype(np.int64)
    pairs, counts = np.unique(np.stack([units, clusters], axis=1), axis=0, return_counts=True)
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
    def __init__(self, folder: str):
        self._folder = folder

    def process(self, rows):
        path = f"{self._folder}/{uuid.uuid4().hex}.pkl"
        # The reduced maps as one array, the rows without them nor their thumbnails (the
        # sample has those): pickling a small array per row cost more than the rest.
        reduced = np.concatenate([row.reduced for row in rows])
        kept = [row._replace(reduced=None, thumbnail=None) for row in rows]
        write_bytes(path, pickle.dumps((kept, reduced), protocol=pickle.HIGHEST_PROTOCOL))
        yield path


def _read_and_assign(path: str, fitted: Sequence[UnitStrategies]):
    # The job's own files, written above in this run: unpickling them trusts nothing foreign.
    rows, reduced = pickle.loads(read_bytes(path))
    centroids = {f.unit: f.mean_maps.reshape(f.k, -1) for f in fitted}
    rows = assign_rows(rows, centroids, reduced)
    yield beam.pvalue.TaggedOutput(COUNTS, cluster_counts(rows))
    yield from rows


def _with_counts(fitted: Sequence[UnitStrategies], counted) -> Dict[int, UnitStrategies]:
    result = {}
    for unit in fitted:
        unit.records = [int(counted.get((unit.unit, c), 0)) for c in range(unit.k)]
        result[unit.unit] = unit
    return result


class FitStrategies(beam.PTransform):
    """Analysis rows carrying reduced maps -> (a singleton PCollection of {unit:
    `UnitStrategies`} with each cluster's assigned records counted, the rows with their
    `clusters`). See the module's docstring."""

    def __init__(self, output: str, sample: int = 500, clusters: int = 0,
                 neighbors: int = spray.NEIGHBORS, label=None):
        super().__init__(label)
        self.folder = spill_path(output)
        self.sample, self.clusters, self.neighbors = sample, clusters, neighbors

    def expand(self, rows):
        clusters, neighbors = self.clusters, self.neighbors
        fitted = (rows
                  | "Entries" >> beam.FlatMap(sample_entries)
                  | "Sample" >> beam.combiners.Sample.FixedSizePerKey(self.sample)
                  | "Fit" >> beam.MapTuple(fit_unit, clusters=clusters, neighbors=neighbors)
                  | "AllUnits" >> beam.combiners.ToList())
        assigned, counts = (
            rows
            | "Batch" >> beam.BatchElements(min_batch_size=ROWS_PER_SPILL,
                                            max_batch_size=ROWS_PER_SPILL)
            | "Spill" >> beam.ParDo(_Spill(self.folder))
            | "Assign" >> beam.FlatMap(_read_and_assign, beam.pvalue.AsSingleton(fitted)
                                       ).with_outputs(COUNTS, main="rows"))
        total = counts | "Count" >> beam.CombineGlobally(_SumCounts())
        counted = fitted | "Counted" >> beam.Map(_with_counts, beam.pvalue.AsSingleton(total))
        return counted, assigned


__all__ = ["COUNTS", "FitStrategies", "SPILL_SUFFIX", "assign_rows", "cluster_counts",
           "fit_unit",
           "sample_entries", "spill_path"]
