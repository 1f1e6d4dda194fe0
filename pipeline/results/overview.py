"""What the report shows, kept by the job as it runs: `OUTPUT.overview.npz`.

`python -m pipeline.report` draws a page about a run: its counts and dead letters, how many
explanations each unit has, the distribution of every metric, the mean map per unit, and the
best and worst records over their images. Reading every record again for that would make
the report as long as a pass over the outputs (and need TensorFlow to decode them); instead
the job keeps those numbers while it explains, in memory bounded by the units and the
examples, never by the records, and writes them once as one compressed numpy file next to
the outputs. The report then reads one small file and imports neither TensorFlow nor Beam
(for local paths).

Separation of concerns:

- `Overview` is the mergeable summary (numpy only): record and per-unit counts, a running
  float64 sum of the maps per unit (at most `MEAN_MAP_SIZE` on a side), per ranking key a
  sample of its scores for the histograms (`Sample`: every score up to `SAMPLE` of them,
  a uniform sample beyond) and the `EXAMPLES` best and worst records with their map and
  image (`Example`), and the dead letters' messages counted per stage (at most `MESSAGES`
  distinct ones per stage, the rest counted together), and with `--strategies` each unit's
  clusters (`pipeline.results.clusters.UnitStrategies`, set once the job has fitted them).
- `batch_overview` makes one from a batch the handler has just explained (a few numpy calls
  per batch, not per record; its examples are views of the batch's arrays); `Overview.merge`
  joins two (Beam's combiner, `pipeline.job.transforms.KeepOverview`, merges the batches' and
  the workers'), copying only the examples that stay among the best or the worst.
- `to_bytes` / `from_bytes` store it as one `.npz` (no pickle); `from_bytes` checks what it
  reads against `LAYOUT` and the arrays against it, so that a damaged or foreign file fails
  with one line; `read_overview` reads it through `pipeline.io.files` (no Beam import for a
  local path).

The ranking keys are the run's metrics (one score per explained map; a record is ranked by
its first unit's) and "probability" and "logit" (the first unit's). Ties between records of
equal score go to the smaller id, so that the kept examples do not depend on how the records
were split between workers.

Usage:

    overview = read_overview("out/expl")
    overview.records, overview.unit_counts.most_common(3), overview.mean_maps()[3].shape
    [example.id for example in overview.best("deletion", 6)]
"""

import collections
import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.io.files import RUN_AGAIN, check_layout, nullable, read_bytes
from pipeline.results.clusters import UnitStrategies

OVERVIEW_SUFFIX = ".overview.npz"
"""Appended to `--output`: out/expl -> out/expl.overview.npz."""

EXAMPLES = 12
"""Best and worst records kept per ranking key (the most `python -m pipeline.report
--examples` shows)."""

SAMPLE = 100_000
"""Scores kept per ranking key for the histograms: all of them up to this many, a uniform
sample of this many beyond."""

MEAN_MAP_SIZE = 64
"""Maps are summed at their stored size, or scaled down (bilinearly) to fit in this many
pixels on a side when stored larger (a gradient map at 224x224): a running sum per unit then
stays small even for a thousand units."""

MESSAGES = 1000
"""Distinct dead-letter messages counted per stage; the others are counted together."""

RANK_KEYS = ("probability", "logit")
"""Ranking keys besides the metrics: the first unit's probability or logit."""

_FORMAT = 1

_EXAMPLE = {"id": str, "unit": int, "score": float, "logit": float, "probability": float}

LAYOUT = {
    "format": int, "names": [str], "higher_is_better": {str: bool}, "records": int,
    "unit_counts": [[int]], "first_unit_counts": [[int]], "size": nullable([int]),
    "sum_units": [int], "samples": {str: [int]}, "examples": {str: [[_EXAMPLE]]},
    "dead_letters": {str: [list]}, "other_messages": {str: int},
    "strategies": nullable({str: dict}),
}
"""What `Overview.from_bytes` requires of the JSON entry of an overview file."""

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a .npz archive: a zip, with entries or empty


def overview_path(output: str) -> str:
    """The overview of the run writing `output` (its `--output` prefix)."""
    return output + OVERVIEW_SUFFIX


@dataclass
class Example:
    """One record among the best or the worst by a ranking key: its id, its first unit,
    that unit's score by the key, logit and probability, its map (h, w) as stored and its
    image (H, W, C) uint8 as the job decoded it (at the model's input size)."""

    id: str
    unit: int
    score: float
    logit: float
    probability: float
    map: np.ndarray = field(repr=False)
    image: np.ndarray = field(repr=False)


class Sample:
    """The finite scores of a key for its histogram: `values` holds all of them while there
    are at most `SAMPLE`, then a uniform sample of `SAMPLE` of the `scored` ones; `missing`
    counts the NaN scores (not scored: no ground truth)."""

    def __init__(self, values=None, scored: int = 0, missing: int = 0):
        self.values = np.zeros(0, np.float32) if values is None else values
        self.scored, self.missing = scored, missing

    @classmethod
    def of(cls, scores: np.ndarray) -> "Sample":
        scores = np.asarray(scores, np.float32)
        finite = scores[np.isfinite(scores)]
        return cls(finite, len(finite), len(scores) - len(finite))

    def merge(self, other: "Sample") -> "Sample":
        scored = self.scored + other.scored
        if scored <= SAMPLE:
            values = np.concatenate([self.values, other.values])
        else:  # a uniform sample of the union: each side by its share of the scores
            rng = np.random.default_rng(scored)
            mine = int(rng.hypergeometric(self.scored, other.scored, SAMPLE))
            values = np.concatenate([
                rng.choice(self.values, min(mine, len(self.values)), replace=False),
                rng.choice(other.values, min(SAMPLE - mine, len(other.values)), replace=False)])
        return Sample(values, scored, self.missing + other.missing)


class Overview:
    """The report's numbers of a run, or of part of it (see the module docstring).

    `names`: the run's metrics, `higher_is_better[name]` their directions; `records`:
    explained records; `unit_counts[u]`: maps explaining unit u; `first_unit_counts[u]`:
    records whose first unit is u; `size`: (h, w) of the summed maps; `sums[u]`, the sum of
    unit u's maps (h·w,) float64; `samples[key]`: a `Sample` per metric (every map's score)
    and per rank key (the first unit's); `examples[key]`: (highest, lowest) lists of
    `Example`s, at most `EXAMPLES` each, highest and lowest first; `dead_letters[stage]`: a
    Counter of messages, `other_messages[stage]` the dead letters whose message was not
    counted apart.
    """

    def __init__(self, names: Sequence[str] = (), higher_is_better: Optional[Dict] = None):
        self.names = list(names)
        self.higher_is_better = dict(higher_is_better or {})
        self.records = 0
        self.unit_counts: collections.Counter = collections.Counter()
        self.first_unit_counts: collections.Counter = collections.Counter()
        self.size: Optional[Tuple[int, int]] = None
        self.sums: Dict[int, np.ndarray] = {}
        self.samples = {key: Sample() for key in self.keys}
        self.examples: Dict[str, Tuple[List[Example], List[Example]]] = {
            key: ([], []) for key in self.keys}
        self.dead_letters: Dict[str, collections.Counter] = {}
        self.other_messages: collections.Counter = collections.Counter()
        self.strategies: Dict[int, UnitStrategies] = {}

    @property
    def keys(self) -> List[str]:
        """The ranking keys: the metrics, then `RANK_KEYS`."""
        return [*self.names, *RANK_KEYS]

    # --- building ------------------------------------------------------------------------

    def count_dead_letter(self, stage: str, message: str) -> "Overview":
        counter = self.dead_letters.setdefault(stage, collections.Counter())
        if message in counter or len(counter) < MESSAGES:
            counter[message] += 1
        else:
            self.other_messages[stage] += 1
        return self

    def merge(self, other: "Overview") -> "Overview":
        """This overview with `other`'s records and dead letters added (in place)."""
        if other.names != self.names:
            raise ValueError(f"overviews of different metrics ({self.names} and "
                             f"{other.names}) cannot be merged.")
        self.records += other.records
        self.unit_counts.update(other.unit_counts)
        self.first_unit_counts.update(other.first_unit_counts)
        if other.sums:
            if self.size is not None and self.size != other.size:
                raise ValueError(f"maps summed at {self.size} and at {other.size}: one run "
                                 "stores its maps at one size.")
            self.size = other.size
            for unit, total in other.sums.items():
                mine = self.sums.get(unit)
                self.sums[unit] = total.copy() if mine is None else mine + total
        for key in other.keys:
            self.samples[key] = self.samples[key].merge(other.samples[key])
            high, low = self.examples[key]
            other_high, other_low = other.examples[key]
            self.examples[key] = (_kept(high + other_high, True), _kept(low + other_low, False))
            for side in self.examples[key]:
                side[:] = [_owned(example) for example in side]
        for stage, counter in other.dead_letters.items():
            for message, count in counter.items():
                mine = self.dead_letters.setdefault(stage, collections.Counter())
                if message in mine or len(mine) < MESSAGES:
                    mine[message] += count
                else:
                    self.other_messages[stage] += count
        self.other_messages.update(other.other_messages)
        return self

    # --- reading -------------------------------------------------------------------------

    def mean_maps(self) -> Dict[int, np.ndarray]:
        """{unit: its mean map (h, w) float64}."""
        return {unit: (total / self.unit_counts[unit]).reshape(self.size)
                for unit, total in self.sums.items()}

    def best(self, key: str, count: int = EXAMPLES) -> List[Example]:
        """The `count` best records by `key`, best first (highest, or lowest where lower is
        better)."""
        high, low = self.examples[key]
        return (high if self.higher(key) else low)[:count]

    def worst(self, key: str, count: int = EXAMPLES) -> List[Example]:
        high, low = self.examples[key]
        return (low if self.higher(key) else high)[:count]

    def higher(self, key: str) -> bool:
        """Whether a higher score is better for `key` (the most confident first for the
        rank keys)."""
        return self.higher_is_better.get(key, True)

    # --- storing -------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The overview as one compressed `.npz` (its numbers in a JSON entry, its arrays
        beside it; loads without pickle)."""
        arrays: Dict[str, np.ndarray] = {}
        units = sorted(self.sums)
        if units:
            arrays["sums"] = np.stack([self.sums[u] for u in units])
        examples = {}
        for key in self.keys:
            examples[key] = []
            for side, chosen in zip(("high", "low"), self.examples[key]):
                described = []
                for i, example in enumerate(map(_owned, chosen)):
                    arrays[f"{key}/{side}/{i}/map"] = example.map
                    arrays[f"{key}/{side}/{i}/image"] = example.image
                    described.append({"id": example.id, "unit": example.unit,
                                      "score": example.score, "logit": example.logit,
                                      "probability": example.probability})
                examples[key].append(described)
            arrays[f"{key}/sample"] = self.samples[key].values
        meta = {
            "format": _FORMAT, "names": self.names, "higher_is_better": self.higher_is_better,
            "records": self.records,
            "unit_counts": sorted(self.unit_counts.items()),
            "first_unit_counts": sorted(self.first_unit_counts.items()),
            "size": list(self.size) if self.size else None, "sum_units": units,
            "samples": {key: [s.scored, s.missing] for key, s in self.samples.items()},
            "examples": examples,
            "dead_letters": {stage: sorted(c.items()) for stage, c in self.dead_letters.items()},
            "other_messages": dict(self.other_messages),
            "strategies": {str(unit): fitted.summary()
                           for unit, fitted in sorted(self.strategies.items())},
        }
        for unit, fitted in self.strategies.items():
            arrays.update(fitted.to_arrays(f"strategies/{unit}"))
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, path: str = "the overview") -> "Overview":
        """The overview `to_bytes` stored. Raises ValueError, one line naming `path`, for
        bytes that are not such an overview (damaged, cut short, of another format), and
        never loads pickled data."""
        if not data.startswith(_ZIP_MAGIC):
            raise ValueError(f"{path} is not an overview this pipeline can read: it is not a "
                             f".npz (zip) archive; {RUN_AGAIN}.")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, ValueError) as error:
            reason = ("it holds Python objects" if "pickle" in str(error) or "Object arrays"
                      in str(error) else f"{type(error).__name__}: {' '.join(str(error).split())}")
            raise ValueError(f"{path} is not an overview this pipeline can read, or it is "
                             f"damaged ({reason[:200]}); {RUN_AGAIN}.") from None
        if isinstance(meta, dict) and meta.get("format") != _FORMAT:
            raise ValueError(f"{path} has overview format {meta.get('format')}; this pipeline "
                             f"reads format {_FORMAT}: {RUN_AGAIN}.")
        check_layout(meta, LAYOUT, path, "an overview", RUN_AGAIN)
        try:
            return cls._from_arrays(meta, arrays)
        except (KeyError, ValueError, TypeError, IndexError) as error:
            raise ValueError(f"{path} is not an overview this pipeline can read: its arrays "
                             f"do not fit its entries ({type(error).__name__}: "
                             f"{' '.join(str(error).split())[:200]}); {RUN_AGAIN}.") from None

    @classmethod
    def _from_arrays(cls, meta: dict, arrays: Dict[str, np.ndarray]) -> "Overview":
        overview = cls(meta["names"], meta["higher_is_better"])
        overview.records = meta["records"]
        overview.unit_counts.update(dict(meta["unit_counts"]))
        overview.first_unit_counts.update(dict(meta["first_unit_counts"]))
        overview.size = tuple(meta["size"]) if meta["size"] else None
        units = meta["sum_units"]
        if units:
            sums = arrays["sums"].astype(np.float64, copy=False)
            if overview.size is None or sums.shape != (len(units), int(np.prod(overview.size))):
                raise ValueError(f"sums of shape {sums.shape} for {len(units)} units of "
                                 f"{overview.size}")
            overview.sums = {unit: sums[i] for i, unit in enumerate(units)}
        for key in overview.keys:
            scored, missing = meta["samples"][key]
            overview.samples[key] = Sample(arrays[f"{key}/sample"].astype(np.float32),
                                           scored, missing)
            overview.examples[key] = tuple(
                [Example(**described, map=_shaped(arrays[f"{key}/{side}/{i}/map"], 2),
                         image=_shaped(arrays[f"{key}/{side}/{i}/image"], 3, np.uint8))
                 for i, described in enumerate(chosen)]
                for side, chosen in zip(("high", "low"), meta["examples"][key]))
        overview.dead_letters = {stage: collections.Counter({str(m): int(n) for m, n in pairs})
                                 for stage, pairs in meta["dead_letters"].items()}
        overview.other_messages.update(meta["other_messages"])
        overview.strategies = {
            int(unit): UnitStrategies.from_parts(int(unit), fitted, arrays, f"strategies/{unit}")
            for unit, fitted in (meta.get("strategies") or {}).items()}
        return overview


def _shaped(array: np.ndarray, rank: int, dtype=None) -> np.ndarray:
    """`array` checked to have `rank` axes (and `dtype`)."""
    if array.ndim != rank or (dtype is not None and array.dtype != dtype):
        raise ValueError(f"an array of shape {array.shape} and type {array.dtype} where one "
                         f"of {rank} axes{' of ' + np.dtype(dtype).name if dtype else ''} "
                         "belongs")
    return array


def _owned(example: Example) -> Example:
    """`example` with its own copy of its map and its image as uint8 pixels: a batch's
    overview holds views of the batch's arrays (most of its examples never enter the run's
    lists), copied only when kept."""
    if example.image.dtype == np.uint8 and example.map.base is None:
        return example
    return Example(example.id, example.unit, example.score, example.logit, example.probability,
                   np.array(example.map), _picture(example.image))


def _kept(examples: List[Example], highest: bool) -> List[Example]:
    """The `EXAMPLES` highest (or lowest) by score, ties to the smaller id."""
    sign = -1.0 if highest else 1.0
    return sorted(examples, key=lambda e: (sign * e.score, e.id))[:EXAMPLES]


def summed_size(stored: Tuple[int, int]) -> Tuple[int, int]:
    """(h, w) maps stored at `stored` are summed at: within `MEAN_MAP_SIZE` on a side."""
    height, width = stored
    scale = min(1.0, MEAN_MAP_SIZE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def batch_overview(ids: Sequence[str], units: np.ndarray, logits: np.ndarray,
                   probabilities: Optional[np.ndarray], scores: Dict[str, np.ndarray],
                   maps: np.ndarray, small: np.ndarray, images: np.ndarray,
                   higher_is_better: Dict[str, bool],
                   image_rows: Optional[Sequence[int]] = None) -> Overview:
    """The overview of one batch of N explained records, each explaining K units: `units`,
    `logits`, `probabilities` (None: not kept) and each metric's `scores` (N, K); `maps`
    (N, h, w, K) as stored; `small` the same maps at `summed_size` (N, h', w', K); `images`
    (B, H, W, C) as decoded, record i's at row `image_rows[i]` (default i: the batch's
    images are not copied). Numpy calls per batch; Python per record only for the few
    records that can be among the best or the worst."""
    names = list(scores)
    overview = Overview(names, higher_is_better)
    count, k = units.shape
    overview.records = count
    if not count:
        return overview
    flat_units = units.reshape(-1)
    present, inverse = np.unique(flat_units, return_inverse=True)
    # (N, h', w', K) -> one row per map, in the order of `flat_units`.
    rows = np.moveaxis(small, -1, 1).reshape(count * k, -1).astype(np.float64)
    sums = np.zeros((len(present), rows.shape[1]), np.float64)
    np.add.at(sums, inverse, rows)
    overview.size = tuple(int(v) for v in small.shape[1:3])
    overview.sums = {int(unit): sums[i] for i, unit in enumerate(present)}
    overview.unit_counts.update(dict(zip(present.tolist(),
                                         np.bincount(inverse).tolist())))
    firsts, first_counts = np.unique(units[:, 0], return_counts=True)
    overview.first_unit_counts.update(dict(zip(firsts.tolist(), first_counts.tolist())))
    probability = (np.full(count, np.nan, np.float32) if probabilities is None
                   else probabilities[:, 0])
    first = {**{name: scores[name][:, 0] for name in names},
             "probability": probability, "logit": logits[:, 0]}
    for name in names:
        overview.samples[name] = Sample.of(scores[name].reshape(-1))
    for key in RANK_KEYS:
        overview.samples[key] = Sample.of(first[key])
    rows = np.arange(count) if image_rows is None else np.asarray(image_rows)
    order = np.argsort(np.asarray(ids, dtype=object).astype(str), kind="stable")
    # Views of the batch's arrays (see `_owned`), one per record whichever keys keep it, so
    # that a pickled overview (Beam sizes some of the elements it passes on by pickling
    # them) holds each record's image once.
    views: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
    for key in overview.keys:
        score = first[key].astype(np.float64)
        sides = []
        for sign in (-1.0, 1.0):  # highest first, then lowest first
            keyed = order[np.isfinite(score[order])]
            keyed = keyed[np.argsort(sign * score[keyed], kind="stable")][:EXAMPLES]
            sides.append([Example(str(ids[i]), int(units[i, 0]), float(score[i]),
                                  float(logits[i, 0]), float(probability[i]),
                                  *views.setdefault(i, (maps[i, ..., 0], images[rows[i]])))
                          for i in keyed.tolist()])
        overview.examples[key] = tuple(sides)
    return overview


def _picture(image: np.ndarray) -> np.ndarray:
    """A decoded image (H, W, C) float as uint8 pixels, for drawing."""
    if image.dtype == np.uint8:
        return np.array(image)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def read_overview(output: str) -> Overview:
    """The overview of the run writing `output` (its `--output` prefix). Raises
    FileNotFoundError when there is none, ValueError (one line naming the file) for a file
    that is not one (`Overview.from_bytes`)."""
    path = overview_path(output)
    try:
        data = read_bytes(path)
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(
            f"No overview at {path}: the job writes one next to its outputs (a run made "
            "before it did has none; run the job again).") from None
    return Overview.from_bytes(data, path)


__all__ = [
    "EXAMPLES",
    "MEAN_MAP_SIZE",
    "OVERVIEW_SUFFIX",
    "RANK_KEYS",
    "SAMPLE",
    "Example",
    "Overview",
    "Sample",
    "batch_overview",
    "LAYOUT",
    "overview_path",
    "read_overview",
    "summed_size",
]
