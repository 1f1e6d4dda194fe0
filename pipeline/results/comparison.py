"""Two runs compared record by record: the agreement of their maps, the change of their
scores, as rows of a Parquet table and a bounded summary for the page.

Separation of concerns:

- *Agreement of two maps* (numpy, no Beam): `common_size` (the smaller of the two stored
  sizes, per axis), `area_resize` (a map brought down to it, each pixel the mean of the
  stored pixels it covers), `spearman` (rank correlation over the pixels, ties given
  their average rank, as `scipy.stats.spearmanr` does) and `top_iou` (intersection over
  union of the two maps' top `fraction` of pixels).
- `compare_records` turns one record of each run (`explain_lib.io.decode_explanation`'s
  dicts) into one `ComparedRecord`: a row per unit either run explained, with the
  agreement where both did, and the change (B - A) of logit, probability and every metric
  both runs scored.
- `comparison_schema` and `to_arrow`: the table's pyarrow schema and a batch of records as
  one `pyarrow.Table` (NaN as null), as `pipeline.results.table` does for the job's table.
- `ComparisonSummary`: what the page shows, mergeable and bounded by the units and
  `CHANGED`, never by the records: counts, per unit the exact histograms of Spearman and
  IoU (fixed bins) and sums for the means, and the `CHANGED` records whose maps agree
  least (a bounded top, with both maps scaled down). `to_json` / `from_json` store it as
  PREFIX.summary.json (checked against `SUMMARY_LAYOUT` on reading).

Usage:

    compared = compare_records(decode_explanation(a), decode_explanation(b), ["deletion"])
    compared.spearman, compared.iou                         # one per unit, NaN where not both
    table = to_arrow([compared], comparison_schema(["deletion"]))
"""

import functools
import json
import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from pipeline.io.files import check_layout, read_bytes

TOP_FRACTION = 0.1
"""Share of each map's pixels (its largest values) whose overlap `top_iou` measures."""

SPEARMAN_BINS = 20
"""Histogram bins of Spearman's rho over [-1, 1] (and of the IoU over [0, 1])."""

CHANGED = 12
"""Records whose maps agree least kept for the page, with both maps."""

CHANGED_MAP_SIZE = 64
"""The kept maps are scaled down (area averaging) to at most this many pixels on a side."""

ONE_SIDED_EXAMPLES = 10
"""Ids of records present in one run only kept in the summary (the smallest; the file of
one-sided ids lists every one)."""

SUMMARY_SUFFIX = ".summary.json"
TABLE_SUFFIX = ".parquet"
ONE_SIDED_SUFFIX = ".one_sided"
PAGE_SUFFIX = ".html"
JOIN_SUFFIX = ".join"
"""Appended to the comparison's prefix: the folder of its join's bucket files, removed when
the command ends."""

RUNS = ("a", "b")


# --- agreement of two maps ----------------------------------------------------------------


def common_size(a: Sequence[int], b: Sequence[int]) -> Tuple[int, int]:
    """The size two maps stored at `a` and `b` (H, W) are compared at: the smaller of each
    axis, so that the finer map is averaged down to the coarser one's cells (a 7x7 Grad-CAM
    map against a 224x224 gradient map: 7x7) and no pixel is made up by interpolation."""
    return min(int(a[0]), int(b[0])), min(int(a[1]), int(b[1]))


@functools.lru_cache(maxsize=256)
def _area_weights(source: int, target: int) -> np.ndarray:
    """(target, source) weights: row i averages the source pixels target pixel i covers,
    each by the length it covers."""
    weights = np.zeros((target, source), np.float64)
    edges = np.arange(target + 1) * (source / target)
    for i in range(target):
        low, high = edges[i], edges[i + 1]
        for j in range(int(math.floor(low)), min(source, int(math.ceil(high)))):
            weights[i, j] = min(high, j + 1) - max(low, j)
    return weights / weights.sum(axis=1, keepdims=True)


def area_resize(maps: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Maps (H, W, K) at `size` (h, w) with h <= H, w <= W by area averaging: each pixel the
    mean of the stored pixels it covers (weighted by how much of each it covers), as
    `tf.image.resize(..., method="area")` does. Unchanged at their own size."""
    maps = np.asarray(maps, np.float32)
    if tuple(maps.shape[:2]) == tuple(size):
        return maps
    rows = _area_weights(maps.shape[0], int(size[0]))
    columns = _area_weights(maps.shape[1], int(size[1]))
    return np.einsum("ih,hwk,jw->ijk", rows, maps, columns).astype(np.float32)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values` (1-D), tied values given the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps of one shape over their pixels (Pearson's
    correlation of their average ranks); NaN when either map is constant."""
    ranks_a = average_ranks(np.ravel(a)) - (np.size(a) + 1) / 2.0
    ranks_b = average_ranks(np.ravel(b)) - (np.size(b) + 1) / 2.0
    scale = math.sqrt(float(ranks_a @ ranks_a) * float(ranks_b @ ranks_b))
    return float(ranks_a @ ranks_b) / scale if scale > 0 else float("nan")


def top_pixels(values: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """The flat indices of the ceil(`fraction` * n) largest pixels of a map (at least one),
    ties going to the earlier pixel in row-major order."""
    flat = np.ravel(values)
    count = max(1, math.ceil(fraction * flat.size - 1e-9))
    return np.argsort(-flat, kind="stable")[:count]


def top_iou(a: np.ndarray, b: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Intersection over union of the top `fraction` of pixels of two maps of one shape
    (`top_pixels`): 1 when they pick the same pixels, 0 when none in common; NaN when either
    map is constant (it has no top pixels)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    top_a, top_b = top_pixels(a, fraction), top_pixels(b, fraction)
    shared = len(np.intersect1d(top_a, top_b, assume_unique=True))
    return shared / (len(top_a) + len(top_b) - shared)


# --- one record of each run ---------------------------------------------------------------


class ComparedRecord(NamedTuple):
    """One record of both runs compared: a row per unit either run explained (`units`, A's
    in their order, then B's others), `rank_a`/`rank_b` its position in each run's record
    (-1: not explained there), `spearman`/`iou` (NaN unless both explained it), `logits`
    and `probabilities` (2, U) for runs A and B (NaN where not explained), `metrics`
    (M, 2, U) likewise for the metrics both runs scored, and `size`, the common size."""

    id: str
    units: np.ndarray
    rank_a: np.ndarray
    rank_b: np.ndarray
    spearman: np.ndarray
    iou: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray
    metrics: np.ndarray
    size: Tuple[int, int]


class Changed(NamedTuple):
    """A record among those whose maps agree least: its least-agreeing unit, the unit's
    Spearman and IoU, logits and probabilities (A, B), and both maps at the common size
    (scaled down to at most `CHANGED_MAP_SIZE` on a side)."""

    spearman: float
    id: str
    unit: int
    iou: float
    logits: Tuple[float, float]
    probabilities: Tuple[float, float]
    map_a: np.ndarray
    map_b: np.ndarray


def _positions(units: np.ndarray) -> Dict[int, int]:
    return {int(unit): rank for rank, unit in enumerate(units)}


def compare_records(a: Dict[str, Any], b: Dict[str, Any], metrics: Sequence[str] = (),
                    fraction: float = TOP_FRACTION
                    ) -> Tuple[ComparedRecord, Optional[Changed]]:
    """One record of run A and of run B (`explain_lib.io.decode_explanation` dicts, maps as
    stored) compared, per unit either explained (see `ComparedRecord`), at `common_size`;
    with the record's least-agreeing shared unit as a `Changed` (None when no unit is
    shared or every shared unit's Spearman is NaN)."""
    ranks_a, ranks_b = _positions(a["units"]), _positions(b["units"])
    units = [int(u) for u in a["units"]] + [int(u) for u in b["units"] if int(u) not in ranks_a]
    size = common_size(a["maps"].shape[:2], b["maps"].shape[:2])
    maps_a, maps_b = area_resize(a["maps"], size), area_resize(b["maps"], size)
    count = len(units)
    rank_a = np.array([ranks_a.get(u, -1) for u in units], np.int32)
    rank_b = np.array([ranks_b.get(u, -1) for u in units], np.int32)
    rho = np.full(count, np.nan, np.float32)
    iou = np.full(count, np.nan, np.float32)
    for i in np.flatnonzero((rank_a >= 0) & (rank_b >= 0)):
        map_a, map_b = maps_a[..., rank_a[i]], maps_b[..., rank_b[i]]
        rho[i] = spearman(map_a, map_b)
        iou[i] = top_iou(map_a, map_b, fraction)

    def both(values_a, values_b):
        out = np.full((2, count), np.nan, np.float32)
        for side, (ranks, values) in enumerate(((rank_a, values_a), (rank_b, values_b))):
            present = ranks >= 0
            out[side, present] = np.asarray(values, np.float32)[ranks[present]]
        return out

    scores = np.stack([both(a["metrics"].get(name, np.full(len(a["units"]), np.nan)),
                            b["metrics"].get(name, np.full(len(b["units"]), np.nan)))
                       for name in metrics]) if metrics else np.zeros((0, 2, count), np.float32)
    compared = ComparedRecord(
        id=a["id"], units=np.array(units, np.int64), rank_a=rank_a, rank_b=rank_b,
        spearman=rho, iou=iou, logits=both(a["logits"], b["logits"]),
        probabilities=both(a["probabilities"], b["probabilities"]), metrics=scores, size=size)
    finite = np.flatnonzero(np.isfinite(rho))
    if not len(finite):
        return compared, None
    worst = int(finite[np.argmin(rho[finite])])
    shown = (min(size[0], CHANGED_MAP_SIZE), min(size[1], CHANGED_MAP_SIZE))
    changed = Changed(
        float(rho[worst]), compared.id, units[worst], float(iou[worst]),
        tuple(float(v) for v in compared.logits[:, worst]),
        tuple(float(v) for v in compared.probabilities[:, worst]),
        area_resize(maps_a[..., rank_a[worst]:rank_a[worst] + 1], shown)[..., 0],
        area_resize(maps_b[..., rank_b[worst]:rank_b[worst] + 1], shown)[..., 0])
    return compared, changed


# --- the table ------------------------------------------------------------------------------


def comparison_schema(metrics: Sequence[str] = ()) -> pa.Schema:
    """The comparison table's schema: `id`, `unit`, `rank_a`, `rank_b` (null: not explained
    in that run), `spearman`, `top_iou`, `logit_a`, `logit_b`, `logit_change`,
    `probability_a`, `probability_b`, `probability_change`, then per metric both runs
    scored `NAME_a`, `NAME_b`, `NAME_change`. Changes are B - A; floats are float32."""
    fields = [pa.field("id", pa.string(), nullable=False),
              pa.field("unit", pa.int64(), nullable=False),
              pa.field("rank_a", pa.int32()), pa.field("rank_b", pa.int32()),
              pa.field("spearman", pa.float32()), pa.field("top_iou", pa.float32())]
    for name in ("logit", "probability", *metrics):
        fields += [pa.field(f"{name}_{suffix}", pa.float32()) for suffix in (*RUNS, "change")]
    return pa.schema(fields)


def to_arrow(records: Sequence[ComparedRecord], schema: pa.Schema) -> pa.Table:
    """A batch of compared records as one `pyarrow.Table` of `schema`, a row per record and
    unit; NaN becomes null, so that SQL's AVG skips what was not compared."""
    counts = np.array([len(r.units) for r in records])

    def floats(values):
        values = np.asarray(values, np.float32)
        return pa.array(values, pa.float32(), mask=np.isnan(values))

    def ranks(values):
        values = np.asarray(values, np.int32)
        return pa.array(values, pa.int32(), mask=values < 0)

    columns = [
        pa.array(np.repeat(np.array([r.id for r in records], dtype=object), counts), pa.string()),
        pa.array(np.concatenate([r.units for r in records]), pa.int64()),
        ranks(np.concatenate([r.rank_a for r in records])),
        ranks(np.concatenate([r.rank_b for r in records])),
        floats(np.concatenate([r.spearman for r in records])),
        floats(np.concatenate([r.iou for r in records])),
    ]
    pairs = [np.concatenate([r.logits for r in records], axis=1),
             np.concatenate([r.probabilities for r in records], axis=1)]
    if len(schema) > len(columns) + 6:
        pairs += list(np.concatenate([r.metrics for r in records], axis=2))
    for pair in pairs:
        columns += [floats(pair[0]), floats(pair[1]), floats(pair[1] - pair[0])]
    return pa.Table.from_arrays(columns, schema=schema)


def one_sided_schema() -> pa.Schema:
    """The file of one-sided ids: each id held by one run only, the run (`a` or `b`) and
    how many records it holds there."""
    return pa.schema([pa.field("id", pa.string(), nullable=False),
                      pa.field("run", pa.string(), nullable=False),
                      pa.field("records", pa.int64(), nullable=False)])


def one_sided_arrow(entries: Sequence[Tuple[str, str, int]]) -> pa.Table:
    ids, runs, records = zip(*entries) if entries else ((), (), ())
    return pa.Table.from_arrays([pa.array(list(ids), pa.string()),
                                 pa.array(list(runs), pa.string()),
                                 pa.array(list(records), pa.int64())],
                                schema=one_sided_schema())


# --- the summary -----------------------------------------------------------------------------


class UnitAgreement:
    """One unit's numbers over the records both runs explained it in: `maps` compared, the
    exact histograms of Spearman (`SPEARMAN_BINS` bins over [-1, 1]; `undefined` counts the
    pairs where it and the IoU are NaN: a constant map) and of the IoU (bins over [0, 1]),
    and sums for the means of Spearman, IoU, the logit's and probability's change (and its
    absolute value) and each metric's change (`metric_counts`: how many were finite);
    `only_a`/`only_b`: records where one run only explained it."""

    FIELDS = ("maps", "undefined", "only_a", "only_b", "spearman_sum", "iou_sum",
              "logit_change_sum", "logit_change_abs_sum", "probability_change_sum",
              "probability_counted")

    def __init__(self, metrics: int = 0):
        self.maps = self.undefined = self.only_a = self.only_b = self.probability_counted = 0
        self.spearman_sum = self.iou_sum = self.logit_change_sum = 0.0
        self.logit_change_abs_sum = self.probability_change_sum = 0.0
        self.spearman_counts = np.zeros(SPEARMAN_BINS, np.int64)
        self.iou_counts = np.zeros(SPEARMAN_BINS, np.int64)
        self.metric_sums = np.zeros(metrics, np.float64)
        self.metric_counts = np.zeros(metrics, np.int64)

    def merge(self, other: "UnitAgreement") -> "UnitAgreement":
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("spearman_counts", "iou_counts", "metric_sums", "metric_counts"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def to_json(self) -> Dict[str, Any]:
        value = {name: getattr(self, name) for name in self.FIELDS}
        value.update({name: getattr(self, name).tolist() for name in
                      ("spearman_counts", "iou_counts", "metric_sums", "metric_counts")})
        return value

    @classmethod
    def from_json(cls, value: Dict[str, Any]) -> "UnitAgreement":
        unit = cls(len(value["metric_sums"]))
        for name in cls.FIELDS:
            setattr(unit, name, value[name])
        unit.spearman_counts = np.asarray(value["spearman_counts"], np.int64)
        unit.iou_counts = np.asarray(value["iou_counts"], np.int64)
        unit.metric_sums = np.asarray(value["metric_sums"], np.float64)
        unit.metric_counts = np.asarray(value["metric_counts"], np.int64)
        return unit

    def mean(self, name: str) -> Optional[float]:
        """The mean of `spearman`, `iou`, `logit_change`, `logit_change_abs` or
        `probability_change` (None without a value)."""
        counted = {"spearman": self.maps - self.undefined, "iou": self.maps - self.undefined,
                   "probability_change": self.probability_counted}.get(name, self.maps)
        return getattr(self, f"{name}_sum") / counted if counted else None


def _bin(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Counts of `values` in `SPEARMAN_BINS` equal bins over [low, high] (the top edge in
    the last bin; values outside by float error clipped in)."""
    index = np.floor((np.asarray(values, np.float64) - low) / (high - low) * SPEARMAN_BINS)
    return np.bincount(np.clip(index, 0, SPEARMAN_BINS - 1).astype(np.int64),
                       minlength=SPEARMAN_BINS)


def _changed_key(changed: Changed):
    return (changed.spearman, changed.id)


class ComparisonSummary:
    """The page's numbers of a comparison, or of part of it (see the module docstring):
    `records` compared, records only in A or B (`only`, with the smallest ids in
    `only_examples`), records beyond the first of an id held several times in a run
    (`duplicates`), `units` (unit -> `UnitAgreement`), `changed` (the `CHANGED` records
    whose maps agree least, least first, ties to the smaller id), `metrics` (the names
    both runs scored), `sizes` (how many records were compared at each common size) and,
    once `python -m pipeline.compare` has run it, `counters` (its Beam counters)."""

    def __init__(self, metrics: Sequence[str] = ()):
        self.metrics = list(metrics)
        self.records = 0
        self.only = {run: 0 for run in RUNS}
        self.only_examples: Dict[str, List[str]] = {run: [] for run in RUNS}
        self.duplicates = {run: 0 for run in RUNS}
        self.units: Dict[int, UnitAgreement] = {}
        self.changed: List[Changed] = []
        self.sizes: Dict[str, int] = {}
        self.counters: Optional[Dict[str, int]] = None  # the runner's, set by the command

    def unit(self, unit: int) -> UnitAgreement:
        if unit not in self.units:
            self.units[unit] = UnitAgreement(len(self.metrics))
        return self.units[unit]

    def add(self, compared: ComparedRecord, changed: Optional[Changed],
            duplicates: Tuple[int, int] = (0, 0)) -> "ComparisonSummary":
        """Count one compared record (with its `Changed`, if any, and how many records beyond
        the first its id held in A and in B)."""
        self.records += 1
        for run, extra in zip(RUNS, duplicates):
            self.duplicates[run] += extra
        size = "x".join(map(str, compared.size))
        self.sizes[size] = self.sizes.get(size, 0) + 1
        shared = (compared.rank_a >= 0) & (compared.rank_b >= 0)
        for i, unit in enumerate(compared.units.tolist()):
            stats = self.unit(unit)
            if not shared[i]:
                if compared.rank_a[i] >= 0:
                    stats.only_a += 1
                else:
                    stats.only_b += 1
                continue
            stats.maps += 1
            rho, iou = float(compared.spearman[i]), float(compared.iou[i])
            if math.isnan(rho) or math.isnan(iou):  # (a constant map: both undefined)
                stats.undefined += 1
            else:
                stats.spearman_sum += rho
                stats.spearman_counts += _bin([rho], -1.0, 1.0)
                stats.iou_sum += iou
                stats.iou_counts += _bin([iou], 0.0, 1.0)
            change = float(compared.logits[1, i] - compared.logits[0, i])
            stats.logit_change_sum += change
            stats.logit_change_abs_sum += abs(change)
            probability = float(compared.probabilities[1, i] - compared.probabilities[0, i])
            if not math.isnan(probability):
                stats.probability_change_sum += probability
                stats.probability_counted += 1
            if len(self.metrics):
                changes = compared.metrics[:, 1, i] - compared.metrics[:, 0, i]
                finite = np.isfinite(changes)
                stats.metric_sums[finite] += changes[finite]
                stats.metric_counts += finite
        if changed is not None:
            self._keep([changed])
        return self

    def add_one_sided(self, record_id: str, run: str) -> "ComparisonSummary":
        self.only[run] += 1
        self.only_examples[run] = sorted(self.only_examples[run] + [record_id])[
            :ONE_SIDED_EXAMPLES]
        return self

    def _keep(self, candidates: List[Changed]) -> None:
        merged = self.changed + candidates
        if len(merged) > CHANGED:
            merged.sort(key=_changed_key)
            merged = merged[:CHANGED]
        self.changed = merged

    def merge(self, other: "ComparisonSummary") -> "ComparisonSummary":
        self.records += other.records
        for run in RUNS:
            self.only[run] += other.only[run]
            self.duplicates[run] += other.duplicates[run]
            self.only_examples[run] = sorted(self.only_examples[run] + other.only_examples[run])[
                :ONE_SIDED_EXAMPLES]
        for size, count in other.sizes.items():
            self.sizes[size] = self.sizes.get(size, 0) + count
        for unit, stats in other.units.items():
            self.unit(unit).merge(stats)
        self._keep(other.changed)
        return self

    def changed_most(self) -> List[Changed]:
        return sorted(self.changed, key=_changed_key)[:CHANGED]

    def to_json(self) -> Dict[str, Any]:
        return {
            "format": 1, "metrics": self.metrics, "records": self.records, "only": self.only,
            "only_examples": self.only_examples, "duplicates": self.duplicates,
            "sizes": self.sizes, "top_fraction": TOP_FRACTION, "bins": SPEARMAN_BINS,
            "units": {str(unit): stats.to_json() for unit, stats in sorted(self.units.items())},
            "changed": [{"id": c.id, "unit": c.unit, "spearman": c.spearman, "iou": c.iou,
                         "logits": list(c.logits), "probabilities": list(c.probabilities),
                         "map_a": np.asarray(c.map_a).tolist(),
                         "map_b": np.asarray(c.map_b).tolist()}
                        for c in self.changed_most()],
        }

    @classmethod
    def from_json(cls, value: Dict[str, Any]) -> "ComparisonSummary":
        summary = cls(value["metrics"])
        summary.records = value["records"]
        summary.only, summary.only_examples = dict(value["only"]), dict(value["only_examples"])
        summary.duplicates, summary.sizes = dict(value["duplicates"]), dict(value["sizes"])
        summary.units = {int(unit): UnitAgreement.from_json(stats)
                         for unit, stats in value["units"].items()}
        summary.changed = [Changed(c["spearman"], c["id"], c["unit"], c["iou"],
                                   tuple(c["logits"]), tuple(c["probabilities"]),
                                   np.asarray(c["map_a"], np.float32),
                                   np.asarray(c["map_b"], np.float32))
                           for c in value["changed"]]
        return summary


_RUN_COUNTS = {"a": int, "b": int}
_UNIT = {**{name: float for name in UnitAgreement.FIELDS},
         **{name: [float] for name in ("spearman_counts", "iou_counts", "metric_sums",
                                       "metric_counts")}}

SUMMARY_LAYOUT = {
    "format": int, "metrics": [str], "records": int, "only": _RUN_COUNTS,
    "only_examples": {"a": [str], "b": [str]}, "duplicates": _RUN_COUNTS, "sizes": {str: int},
    "top_fraction": float, "bins": int, "units": {str: _UNIT},
    "changed": [{"id": str, "unit": int, "spearman": float, "iou": float, "logits": [float],
                 "probabilities": [object], "map_a": [[float]], "map_b": [[float]]}],
}
"""What `read_summary` requires of PREFIX.summary.json."""


def summary_path(prefix: str) -> str:
    return prefix + SUMMARY_SUFFIX


def summary_bytes(summary: ComparisonSummary) -> bytes:
    """The summary as JSON (NaN probabilities of v1 records as null)."""
    value = summary.to_json()
    for changed in value["changed"]:
        changed["probabilities"] = [None if math.isnan(p) else p
                                    for p in changed["probabilities"]]
    return (json.dumps(value) + "\n").encode("utf-8")


def read_summary(prefix: str) -> ComparisonSummary:
    """The summary a comparison wrote at PREFIX.summary.json; ValueError, one line naming the
    file, when it is not one."""
    path = summary_path(prefix)
    try:
        value = json.loads(read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a comparison's summary: {error}.") from None
    check_layout(value, SUMMARY_LAYOUT, path, "a comparison's summary",
                 "python -m pipeline.compare writes it: run it again")
    for changed in value["changed"]:
        changed["probabilities"] = [float("nan") if p is None else p
                                    for p in changed["probabilities"]]
    return ComparisonSummary.from_json(value)


__all__ = [
    "CHANGED",
    "ONE_SIDED_SUFFIX",
    "PAGE_SUFFIX",
    "SPEARMAN_BINS",
    "SUMMARY_SUFFIX",
    "TABLE_SUFFIX",
    "TOP_FRACTION",
    "Changed",
    "ComparedRecord",
    "ComparisonSummary",
    "UnitAgreement",
    "area_resize",
    "average_ranks",
    "common_size",
    "compare_records",
    "comparison_schema",
    "one_sided_arrow",
    "one_sided_schema",
    "read_summary",
    "spearman",
    "summary_bytes",
    "summary_path",
    "to_arrow",
    "top_iou",
    "top_pixels",
]
