"""`python -m pipeline.report OUTPUT`: one self-contained HTML page about a run.

    python -m pipeline.report out/expl --images 'data/*.tfrecord' --out report.html \\
        [--metric deletion] [--examples 6] [--units 12] [--top 50] [--labels a,b,...]

The page shows the run's counts and its dead letters per stage and message, how many
explanations each unit has, the distribution of every metric the job computed (histograms),
the mean map of each of the most explained units, the best and the worst records by one
metric as overlays on their images with their ids, and the manifest. Its pictures are
embedded as `data:` URIs (PNG, JPEG), so the one file can be mailed or opened anywhere.

Separation of concerns:

- *Readers* are the existing ones: the manifest, the counts and the dead-letter breakdown
  come from `pipeline.summary.summarize_output`; the maps, the metrics and the per-unit counts
  (handed to the summary, which checks them as it checks its own) from
  `explain_lib.io.read_explanations` (metric names from the manifest, else
  `explain_lib.analysis.metric_names`); the source images from
  `pipeline.render.load_images_by_id`, which reads the job's inputs with the job's own record
  options (taken from the manifest) and keeps only the few records asked for. All of them go
  through `tf.io.gfile` or Beam's filesystems, so `gs://` paths work as they do for the job.
- `compute_report` reads the files once, in batches of up to `BATCH` records (decoded and
  scaled to the mean maps' size in tf.data's parallel map, one Python step per batch, the
  batch's numbers handled by numpy), and keeps what the page needs in memory bounded by the
  units and the examples, not the records: the per-unit counts, a running sum per unit for
  the mean maps (at most `MEAN_MAP_SIZE` on a side), two bounded heaps for the best and the
  worst records (only the rows of a batch that can still enter one are looked at), and one
  float per explained map and metric for the histograms. It returns a `ReportData`, the
  numbers the page shows (tests compare them with the records).
- `render_html` draws the pictures (matplotlib figures with the Agg backend, colours from
  matplotlib's colormaps through `pipeline.render`) and writes the page; `build` joins both
  and writes the file through Beam's filesystems.

The ranking (`--metric`): each record is scored by its first explained unit (the top
prediction when the job explained the top-K); records whose score is NaN (not scored, e.g.
no ground truth) are left out. By default the ranking metric is the first metric the run
computed (`--metrics`), best and worst as the metrics registry says (`higher_is_better`:
deletion is better low); in a run without metrics it is the first unit's probability (or,
for schema-v1 records without probabilities, its logit), "best" meaning most confident.
`--metric probability` and `--metric logit` choose those explicitly.

Usage, from Python (e.g. a benchmark):

    path = build("out/expl", images="data/*.tfrecord", out="report.html", metric="deletion")
    data = compute_report("out/expl", metric="deletion")
    [example.id for example in data.best], data.mean_maps[3].shape
"""

import argparse
import base64
import heapq
import html
import io
import json
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

MEAN_MAP_SIZE = 64
"""Mean maps are summed at the stored size of the maps, or scaled down to fit in this many
pixels on a side when stored larger (a gradient map at 224x224): a running sum per unit then
stays small even for a thousand units."""

BATCH = 512
"""Explanation records decoded per step of the report's reader (fewer when the stored maps
are large: about `BATCH_VALUES` map values per step)."""

BATCH_VALUES = 1 << 22
"""Stored map values per batch at most (a 224x224 map: 83 records), so that a batch of
large maps stays a few tens of MB."""

EXAMPLES = 6
"""Best and worst records shown by default (each)."""

UNITS_SHOWN = 12
"""Mean maps shown by default: the most explained units'."""

TOP_UNITS = 50
"""Rows of the per-unit table by default."""

MESSAGES = 10
"""Error messages listed per dead-letter stage."""

PICTURE_SIZE = 128
"""Pictures in the page are about this many pixels on their longer side: small images are
upscaled by a whole factor (nearest neighbour, so pixels stay visible), large ones shrunk."""

OVERLAY_COLORMAP = "jet"
MEAN_COLORMAP = "inferno"

RANK_KEYS = ("probability", "logit")
"""Ranking keys besides the metrics: the first unit's probability or logit."""


@dataclass
class Example:
    """One record among the best or the worst: its id, its first unit, that unit's score by
    the ranking metric, logit and probability, and its map (H, W) as stored."""

    id: str
    unit: int
    score: float
    logit: float
    probability: float
    map: np.ndarray = field(repr=False)


@dataclass
class ReportData:
    """What the page shows, as numbers.

    `summary`: the `pipeline.summary.OutputReport` (manifest, counts, dead letters, per-unit
    counts); `metric`: the ranking key (a metric name, "probability" or "logit", None when no
    record has a finite score), `higher_is_better` its direction; `values[name]`: every
    finite score of each metric (one per explained map), and of the ranking key when it is
    not a metric (one per record); `missing[name]`: how many were NaN; `mean_maps[unit]`: the
    mean (h, w) float64 of the maps explaining the unit, `map_counts[unit]` how many there
    were; `best` and `worst`: `Example`s, best first and worst first; `records`: explanation
    records read.
    """

    summary: object
    metric: Optional[str]
    higher_is_better: bool
    values: Dict[str, np.ndarray]
    missing: Dict[str, int]
    mean_maps: Dict[int, np.ndarray]
    map_counts: Dict[int, int]
    best: List[Example]
    worst: List[Example]
    records: int


# --- the numbers -----------------------------------------------------------------------------


def _metric_names(manifest: dict, pattern: str) -> List[str]:
    from explain_lib import analysis

    described = manifest.get("metrics") or {}
    if described.get("names"):
        return list(described["names"])
    try:
        return analysis.metric_names(pattern)
    except FileNotFoundError:
        return []


def _direction(metric: str) -> bool:
    """Whether a higher score is better for the ranking key `metric`."""
    if metric in RANK_KEYS:
        return True  # the most confident first
    from explain_lib import metrics as explain_metrics

    return explain_metrics.get(metric).higher_is_better


def _batch_size(stored: tuple) -> int:
    """Records per batch for maps stored at `stored` (h, w)."""
    return max(1, min(BATCH, BATCH_VALUES // max(1, stored[0] * stored[1])))


def _mean_map_size(pattern: str) -> Optional[tuple]:
    """((h, w) the mean maps are summed at, (h, w) of the first record's stored maps): the
    former is the latter scaled down to fit in MEAN_MAP_SIZE; None when there is no record."""
    from explain_lib import io as explain_io

    try:
        first = next(iter(explain_io.iterate_records(pattern)), None)
    except FileNotFoundError:
        return None
    if first is None:
        return None
    height, width = (int(v) for v in explain_io.decode_explanation(first)["stored_shape"][:2])
    scale = min(1.0, MEAN_MAP_SIZE / max(height, width))
    return (max(1, round(height * scale)), max(1, round(width * scale))), (height, width)


def _batches(pattern: str, names: Sequence[str], size: tuple, batch_size: int):
    """The explanation records as numpy batches of flat values: per record `id`, `k` (its
    number of units), `first_shape` (its stored map's (H, W)) and `first_size`; per unit
    `units`, `logits`, `probabilities`, `metrics[name]` and `small` (its map at `size`,
    flattened); `first` the stored maps of every record's first unit, flattened one after the
    other. Decoding and resizing run in tf.data's parallel map, one Python step per batch."""
    import tensorflow as tf

    from explain_lib import io as explain_io

    pixels = size[0] * size[1]

    @tf.autograph.experimental.do_not_convert  # plain ops: no AutoGraph conversion
    def one(row):
        maps = row["maps"]
        shape = tf.shape(maps)
        small = tf.cond(tf.reduce_all(tf.equal(shape[:2], size)), lambda: maps,
                        lambda: tf.image.resize(maps, size))
        first = tf.reshape(maps[..., :1], [-1])
        return {"id": row["id"], "units": row["units"], "logits": row["logits"],
                "probabilities": row["probabilities"], "metrics": row.get("metrics", {}),
                "small": tf.reshape(tf.transpose(small, [2, 0, 1]), [-1, pixels]),
                "first": first, "first_shape": shape[:2], "first_size": tf.size(first)}

    @tf.autograph.experimental.do_not_convert
    def flat(batch):
        def values(ragged):
            return ragged.flat_values

        return {"id": batch["id"], "k": tf.cast(batch["units"].row_lengths(), tf.int64),
                "first_shape": batch["first_shape"], "first_size": batch["first_size"],
                "units": values(batch["units"]), "logits": values(batch["logits"]),
                "probabilities": values(batch["probabilities"]),
                "metrics": {name: values(batch["metrics"][name]) for name in names},
                "small": values(batch["small"]), "first": values(batch["first"])}

    dataset = explain_io.read_explanations(pattern, metrics=names)
    dataset = dataset.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.ragged_batch(batch_size).map(flat).prefetch(1)
    return dataset.as_numpy_iterator()


def compute_report(output: str, metric: Optional[str] = None,
                   examples: int = EXAMPLES) -> ReportData:
    """The numbers of the report on the run writing `output` (its `--output` prefix or its
    manifest), the explanations read once (see the module docstring); `metric` ranks the
    records (default: the first metric computed, else "probability", else "logit").

    Raises FileNotFoundError without a manifest, ValueError for a `metric` the records do not
    hold.
    """
    from pipeline.manifest import read_manifest
    from pipeline.summary import summarize_output

    manifest = read_manifest(output)
    pattern = manifest["output"]["explanations"]
    names = _metric_names(manifest, pattern)
    if metric is not None and metric not in names and metric not in RANK_KEYS:
        raise ValueError(f"--metric {metric}: the run's records hold "
                         f"{', '.join(names) or 'no metric'}; or rank by "
                         f"{' or '.join(RANK_KEYS)}.")
    sizes = _mean_map_size(pattern)
    size = sizes[0] if sizes else None
    # Without a metric asked for, the first one with a finite score ranks; the probability
    # when the records have one, else the logit. Decided on the records themselves, as they
    # are read: a run's metric may be NaN everywhere (no ground truth in any record).
    candidates = [metric] if metric else [*names, *RANK_KEYS]
    tally = _Tally(names, candidates, examples)
    if sizes is not None:
        for batch in _batches(pattern, names, size, _batch_size(sizes[1])):
            tally.add(batch)
    summary = summarize_output(output, units=(tally.records, tally.unit_counts,
                                              tally.first_unit_counts))
    chosen = next((name for name in candidates if tally.finite[name]), None)
    higher = _direction(chosen) if chosen else True
    best_examples, worst_examples = _ranked(tally.heaps, chosen, higher)
    values, missing = {}, {}
    for name in [*names, *([chosen] if chosen in RANK_KEYS else [])]:
        parts = tally.scores[name] if name in names else tally.keys[name]
        every = np.concatenate([np.zeros(0, np.float32), *parts]).astype(np.float32)
        values[name], missing[name] = every[np.isfinite(every)], int((~np.isfinite(every)).sum())
    return ReportData(
        summary=summary, metric=chosen, higher_is_better=higher, values=values,
        missing=missing, mean_maps=tally.mean_maps(size),
        map_counts=tally.map_counts(), best=best_examples, worst=worst_examples,
        records=tally.records,
    )


class _Tally:
    """What `compute_report` keeps of the batches it reads, in memory bounded by the units
    and the examples (plus one float per map and metric for the histograms): the records and
    the per-unit counts (in the order units are first met, as `count_units` counts them),
    a running float64 sum of the maps per unit, every metric score, every record's first
    unit's probability and logit, per candidate ranking key whether some first-unit score
    is finite, and its bounded heaps of the best and the worst records."""

    def __init__(self, names: Sequence[str], candidates: Sequence[str], examples: int):
        import collections

        self.names, self.examples = list(names), examples
        self.records = 0
        self.unit_counts, self.first_unit_counts = collections.Counter(), collections.Counter()
        self.rows: Dict[int, int] = {}  # unit -> its row in `sums` and `counts`
        self.sums = np.zeros((0, 0), np.float64)
        self.counts = np.zeros(0, np.int64)
        self.scores = {name: [] for name in names}
        self.keys = {name: [] for name in RANK_KEYS}
        self.finite = {name: False for name in candidates}
        self.heaps = {name: ([], []) for name in candidates}

    def add(self, batch: dict):
        units, k = batch["units"], batch["k"]
        starts = np.concatenate([[0], np.cumsum(k)[:-1]]).astype(np.int64)
        seqs = self.records + np.arange(len(k))
        self.records += len(k)
        self._sum(units, batch["small"])
        for name in self.names:
            self.scores[name].append(batch["metrics"][name])
        explained = k > 0
        if not explained.any():
            return
        at = starts[explained]  # each explained record's first unit among the batch's units
        self.first_unit_counts.update(_in_order(units[at]))
        first = {"probability": batch["probabilities"][at], "logit": batch["logits"][at],
                 **{name: batch["metrics"][name][at] for name in self.names}}
        for name in RANK_KEYS:
            self.keys[name].append(first[name])
        for name in self.finite:
            self.finite[name] = self.finite[name] or bool(np.isfinite(first[name]).any())
        self._offer(batch, np.flatnonzero(explained), seqs[explained], at, first)

    def _sum(self, units: np.ndarray, small: np.ndarray):
        if not len(units):
            return
        unique, first, inverse, counts = np.unique(units, return_index=True,
                                                   return_inverse=True, return_counts=True)
        order = np.argsort(first, kind="stable")  # the order the units first occur
        self.unit_counts.update(dict(zip(unique[order].tolist(), counts[order].tolist())))
        new = [unit for unit in unique[order].tolist() if unit not in self.rows]
        if new:
            for unit in new:
                self.rows[unit] = len(self.rows)
            grown = np.zeros((len(self.rows), small.shape[1]), np.float64)
            if len(self.sums):
                grown[:len(self.sums)] = self.sums
            self.sums = grown
            self.counts = np.concatenate([self.counts, np.zeros(len(new), np.int64)])
        rows = np.array([self.rows[unit] for unit in unique.tolist()], np.int64)[inverse]
        # Per unit, the maps in the records' order added one after the other to the running
        # sum (`np.add.accumulate`, not a pairwise sum): the same float64 sums as before.
        order = np.argsort(rows, kind="stable")
        for group in np.split(order, np.flatnonzero(np.diff(rows[order])) + 1):
            row = rows[group[0]]
            self.sums[row] = np.add.accumulate(
                np.concatenate([self.sums[row][None], small[group]]), axis=0)[-1]
        self.counts += np.bincount(rows, minlength=len(self.counts))

    def _offer(self, batch: dict, records: np.ndarray, seqs: np.ndarray, at: np.ndarray,
               first: Dict[str, np.ndarray]):
        """Keep the batch's records in the bounded heaps of every candidate ranking key: per
        key, the `examples` records with the highest (first heap) and the lowest (second)
        finite first-unit score, ties going to the earlier record. A heap holds (key, -seq,
        Example), so Examples are never compared; only the batch's records that can still
        enter a heap (above its lowest key, and among the batch's `examples` best) are looked
        at, and an Example (with a copy of its map) is only made for one that enters."""
        if self.examples <= 0:
            return
        ends = np.cumsum(batch["first_size"])
        for name, (high, low) in self.heaps.items():
            score = first[name].astype(np.float64)
            finite = np.flatnonzero(np.isfinite(score))
            for heap, keys in ((high, score), (low, -score)):
                chosen = finite
                if len(heap) >= self.examples:  # later records lose ties: strictly above
                    chosen = chosen[keys[chosen] > heap[0][0]]
                if len(chosen) > self.examples:
                    chosen = chosen[np.lexsort((seqs[chosen], -keys[chosen]))[:self.examples]]
                for i in sorted(chosen.tolist()):
                    key, seq = float(keys[i]), int(seqs[i])
                    if len(heap) < self.examples or (key, -seq) > heap[0][:2]:
                        record = int(records[i])
                        shape = tuple(int(v) for v in batch["first_shape"][record])
                        start = ends[record] - batch["first_size"][record]
                        example = Example(
                            id=batch["id"][record].decode("utf-8", errors="replace"),
                            unit=int(batch["units"][at[i]]), score=float(score[i]),
                            logit=float(first["logit"][i]),
                            probability=float(first["probability"][i]),
                            map=np.array(batch["first"][start:start + shape[0] * shape[1]]
                                         .reshape(shape)))
                        (heapq.heappush if len(heap) < self.examples else heapq.heapreplace)(
                            heap, (key, -seq, example))

    def mean_maps(self, size: Optional[tuple]) -> Dict[int, np.ndarray]:
        return {unit: (self.sums[row] / self.counts[row]).reshape(size)
                for unit, row in self.rows.items()}

    def map_counts(self) -> Dict[int, int]:
        return {unit: int(self.counts[row]) for unit, row in self.rows.items()}


def _in_order(units: np.ndarray) -> Dict[int, int]:
    """{unit: how many times} in the order the units first occur (a Counter updated with it
    lists its units as one updated with the units one by one does)."""
    unique, first, counts = np.unique(units, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    return dict(zip(unique[order].tolist(), counts[order].tolist()))


def _ranked(heaps: Dict[str, tuple], chosen: Optional[str], higher: bool):
    """(best, worst) Examples of the ranking key `chosen`, best first and worst first."""
    if chosen is None:
        return [], []
    high, low = (
        [item[2] for item in sorted(heap, key=lambda item: item[:2], reverse=True)]
        for heap in heaps[chosen])
    return (high, low) if higher else (low, high)


# --- the pictures ----------------------------------------------------------------------------


def _data_uri(picture: np.ndarray, kind: str = "png") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(np.asarray(picture, np.uint8))
    if kind == "jpeg":
        image.save(buffer, format="JPEG", quality=85)
    else:
        image.save(buffer, format="PNG", optimize=True)
    mime = "image/jpeg" if kind == "jpeg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def picture_scale(shape) -> int:
    """The whole factor small pictures are upscaled by (nearest neighbour): about
    PICTURE_SIZE pixels on the longer side, 1 for pictures that large already."""
    return max(1, PICTURE_SIZE // max(int(shape[0]), int(shape[1])))


def _fitted(picture: np.ndarray, shape) -> np.ndarray:
    """`picture` (one or more images of `shape` side by side) with each image at about
    PICTURE_SIZE: upscaled by `picture_scale`, or shrunk (bilinearly) when larger than twice
    that."""
    from PIL import Image

    from pipeline.render import upscale

    longest = max(int(shape[0]), int(shape[1]))
    if longest > 2 * PICTURE_SIZE:
        scale = 2 * PICTURE_SIZE / longest
        height, width = picture.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return np.asarray(Image.fromarray(picture).resize(size, Image.BILINEAR))
    return upscale(picture, picture_scale(shape))


def histogram_figure(values: Dict[str, np.ndarray], directions: Dict[str, bool]) -> str:
    """One PNG (as a data URI) of a histogram per entry of `values`, drawn by matplotlib
    (Agg, no display), each with its mean marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(values)
    figure = Figure(figsize=(3.6 * len(names), 2.6), dpi=80, layout="constrained")
    FigureCanvasAgg(figure)
    for index, name in enumerate(names):
        axes = figure.add_subplot(1, len(names), index + 1)
        scores = values[name]
        if len(scores):
            axes.hist(scores, bins=min(30, max(5, len(scores) // 4)), color="#4c72b0")
            axes.axvline(float(np.mean(scores)), color="#c44e52", linestyle="--",
                         label=f"mean {np.mean(scores):.3g}")
            axes.legend(fontsize=8, frameon=False)
        better = "higher" if directions.get(name, True) else "lower"
        axes.set_title(f"{name} ({better} is better)", fontsize=10)
        axes.set_ylabel("maps" if index == 0 else "")
        axes.tick_params(labelsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- the page --------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
td.text, th.text { text-align: left; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; text-align: center; font-size: 12px; }
figure img { display: block; image-rendering: pixelated; }
.warning { color: #a40000; }
pre { background: #f6f6f6; padding: 8px; overflow: auto; font-size: 12px; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _unit_name(unit: int, labels: Optional[Sequence[str]]) -> str:
    return f"{unit} {labels[unit]}" if labels and 0 <= unit < len(labels) else str(unit)


def _table(header: Sequence[str], rows: Sequence[Sequence], text_columns=(0,)) -> str:
    def cell(tag, index, value):
        css = ' class="text"' if index in text_columns else ""
        return f"<{tag}{css}>{_e(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _counts_section(data: ReportData) -> str:
    summary = data.summary
    counts = summary.manifest["counts"]
    rows = []
    if counts.get("counted"):
        rows += [("records read", counts["read"]), ("records explained", counts["explained"]),
                 ("records dead-lettered", counts["dead_lettered"])]
    else:
        rows.append(("job counters", "none reported: the run's counts are unknown"))
    rows.append(("explanations in the files", summary.records))
    notes = "".join(f'<p class="warning">warning: {_e(note)}</p>' for note in summary.notes)
    parts = [_table(("", "count"), rows), notes, "<h3>Dead letters</h3>"]
    letters = summary.dead_letters or {}
    counted = counts.get("dead_letters") or {}
    stages = [s for s in counted if counted.get(s)] + [s for s in letters if s not in counted]
    if not stages:
        parts.append("<p>None.</p>")
    for stage in stages:
        found = letters.get(stage) or {}
        number = counted.get(stage, sum(found.values()))
        parts.append(f'<p><b>{_e(stage)}</b>: <span data-stage="{_e(stage)}">{number}</span></p>')
        if found:
            rows = [(message[:300], count) for message, count in found.most_common(MESSAGES)]
            if len(found) > MESSAGES:
                rows.append((f"... {len(found) - MESSAGES} other messages", ""))
            parts.append(_table(("message", "records"), rows))
    return "".join(parts)


def _units_section(data: ReportData, labels, top: int) -> str:
    summary = data.summary
    units = summary.unit_counts or {}
    described = summary.manifest.get("metrics") or {}
    aggregates = described.get("aggregates") or {}
    metrics = [name for name in described.get("names") or [] if name in aggregates]
    header = ["unit", "records", "as first unit", *[f"mean {m}" for m in metrics]]
    rows = []
    for unit, count in units.most_common(top):
        means = [(aggregates[m].get("per_unit") or {}).get(str(unit), {}).get("mean")
                 for m in metrics]
        rows.append((_unit_name(unit, labels), count, summary.first_unit_counts.get(unit, 0),
                     *map(_number, means)))
    more = f"<p>... {len(units) - top} more units</p>" if len(units) > top else ""
    return _table(header, rows) + more if rows else "<p>No explanation.</p>"


def _metrics_section(data: ReportData) -> str:
    if not data.values:
        return "<p>No metric in this run (run the job with --metrics).</p>"
    directions = {name: _direction(name) for name in data.values}
    parts = [f'<img alt="histograms" src="{histogram_figure(data.values, directions)}">']
    rows = []
    for name, scores in data.values.items():
        quantiles = np.quantile(scores, [0, 0.25, 0.5, 0.75, 1]) if len(scores) else [None] * 5
        rows.append((name, len(scores), data.missing[name],
                     _number(float(np.mean(scores)) if len(scores) else None),
                     *(_number(None if q is None else float(q)) for q in quantiles)))
    parts.append(_table(("", "scored", "not scored (NaN)", "mean", "min", "25%", "median",
                         "75%", "max"), rows))
    return "".join(parts)


def _mean_maps_section(data: ReportData, labels, units: int) -> str:
    from pipeline.render import colorize, upscale

    shown = sorted(data.map_counts, key=lambda u: (-data.map_counts[u], u))[:units]
    figures = []
    for unit in shown:
        mean = data.mean_maps[unit]
        scale = picture_scale(mean.shape)
        picture = colorize(mean, MEAN_COLORMAP)
        figures.append(
            f'<figure><img class="mean-map" data-unit="{unit}" data-scale="{scale}" '
            f'alt="mean map of unit {unit}" src="{_data_uri(upscale(picture, scale))}">'
            f"<figcaption>{_e(_unit_name(unit, labels))}: {data.map_counts[unit]} maps<br>"
            f"{mean.min():.3g} .. {mean.max():.3g}</figcaption></figure>")
    more = (f"<p>{len(data.map_counts) - len(shown)} more units not shown.</p>"
            if len(data.map_counts) > len(shown) else "")
    note = (f"<p>Each unit's maps averaged at {'x'.join(map(str, mean.shape))} "
            f"(the stored size, at most {MEAN_MAP_SIZE} on a side), coloured with "
            f"matplotlib's {MEAN_COLORMAP} over the mean's own range.</p>") if shown else ""
    return note + f'<div class="figures">{"".join(figures)}</div>' + more


def _examples_section(data: ReportData, images: Dict[str, np.ndarray], labels,
                      alpha: float) -> str:
    from pipeline.render import colorize, overlay

    if data.metric is None:
        return "<p>No record has a finite score to rank by.</p>"
    better = "higher" if data.higher_is_better else "lower"
    parts = [f"<p>Records ranked by their first unit's <b>{_e(data.metric)}</b> ({better} is "
             f"better); left the image, right the map over it (matplotlib's "
             f"{OVERLAY_COLORMAP}, alpha {alpha}).</p>"]
    for title, chosen in (("Best", data.best), ("Worst", data.worst)):
        figures = []
        for example in chosen:
            image = images.get(example.id)
            if image is None:  # no input to draw on: the map alone
                picture = _fitted(colorize(example.map, OVERLAY_COLORMAP), example.map.shape)
            else:
                pair = np.concatenate([overlay(image, np.zeros(image.shape[:2]), alpha=0.0),
                                       overlay(image, example.map, alpha, OVERLAY_COLORMAP)],
                                      axis=1)
                picture = _fitted(pair, image.shape)
            figures.append(
                f'<figure class="example" data-kind="{title.lower()}" data-id="{_e(example.id)}"'
                f' data-score="{example.score!r}"><img alt="{_e(example.id)}" '
                f'src="{_data_uri(picture, "jpeg")}"><figcaption><b>{_e(example.id)}</b><br>'
                f"{_e(data.metric)} {example.score:.4g}<br>unit "
                f"{_e(_unit_name(example.unit, labels))}, p {example.probability:.3g}"
                "</figcaption></figure>")
        parts.append(f"<h3>{title}</h3><div class=\"figures\">{''.join(figures)}</div>")
    return "".join(parts)


def _page_data(data: ReportData) -> dict:
    """The numbers behind the page, embedded as JSON (`<script id="report-data">`)."""
    summary = data.summary
    return {
        "output": summary.manifest["output"]["explanations"],
        "counts": summary.manifest["counts"],
        "records": summary.records,
        "unit_counts": {str(u): c for u, c in sorted((summary.unit_counts or {}).items())},
        "dead_letters": {stage: sum(found.values())
                         for stage, found in (summary.dead_letters or {}).items()},
        "metric": data.metric,
        "higher_is_better": data.higher_is_better,
        "best": [{"id": e.id, "unit": e.unit, "score": e.score} for e in data.best],
        "worst": [{"id": e.id, "unit": e.unit, "score": e.score} for e in data.worst],
        "metrics": {name: {"scored": len(v), "missing": data.missing[name],
                           "mean": float(np.mean(v)) if len(v) else None}
                    for name, v in data.values.items()},
    }


def render_html(data: ReportData, images: Dict[str, np.ndarray],
                labels: Optional[Sequence[str]] = None, units: int = UNITS_SHOWN,
                top: int = TOP_UNITS, alpha: float = 0.5) -> str:
    """The page of `data` as one HTML string; `images` maps the best and worst records' ids
    to their source images (H, W, C) (records without one are drawn as their map alone)."""
    manifest = data.summary.manifest
    method, model = manifest["method"], manifest["model"]
    embedded = json.dumps(_page_data(data), sort_keys=True).replace("</", "<\\/")
    manifest_text = json.dumps(manifest, indent=2)
    sections = [
        ("Counts", _counts_section(data)),
        ("Per unit", _units_section(data, labels, top)),
        ("Metric distributions", _metrics_section(data)),
        ("Mean map per unit", _mean_maps_section(data, labels, units)),
        ("Best and worst records", _examples_section(data, images, labels, alpha)),
        ("Manifest", f"<details><summary>{_e(manifest_path_of(manifest))}</summary>"
                     f"<pre>{_e(manifest_text)}</pre></details>"),
    ]
    body = "".join(f"<h2>{_e(title)}</h2>{content}" for title, content in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Explanations: {_e(manifest['output']['explanations'])}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>Explanations: {_e(manifest['output']['explanations'])}</h1>"
        f"<p>{_e(method['name'])} on {_e(model['path'])} (sha256 {_e(model['sha256'][:16])}...), "
        f"{_e(manifest['started'])} to {_e(manifest['finished'])} "
        f"({manifest['seconds']:.1f} s) on {_e(manifest['runner'])}.</p>"
        f"{body}"
        f'<script type="application/json" id="report-data">{embedded}</script>'
        "</body></html>\n"
    )


def manifest_path_of(manifest: dict) -> str:
    from pipeline.manifest import MANIFEST_SUFFIX

    pattern = manifest["output"]["explanations"]
    return pattern.split("-*")[0] + MANIFEST_SUFFIX


def source_images(manifest: dict, images: Optional[str], ids: Sequence[str]
                  ) -> Dict[str, np.ndarray]:
    """The source images of `ids` from `images` (default: the run's input pattern), read with
    the run's own record options (its manifest's `input`); {} when there is no pattern."""
    from pipeline.render import load_images_by_id

    source = manifest["input"]
    pattern = images or source.get("pattern")
    if not pattern or not ids:
        return {}
    shape = source.get("image_shape")
    return load_images_by_id(pattern, ids, image_key=source.get("image_key") or "image",
                             image_format=source.get("image_format") or "auto",
                             image_shape=tuple(shape) if shape else None,
                             id_key=source.get("id_key") or None)


def build(output: str, images: Optional[str] = None, out: Optional[str] = None,
          metric: Optional[str] = None, examples: int = EXAMPLES, units: int = UNITS_SHOWN,
          top: int = TOP_UNITS, labels: Optional[Sequence[str]] = None,
          alpha: float = 0.5) -> str:
    """Write the report on the run writing `output` (its `--output` prefix) to `out`
    (default `OUTPUT.report.html`; any Beam filesystem, `gs://` included) and return its
    path. `images` is the job's input pattern (default: the one in the manifest); `metric`
    ranks the best and worst records (see the module docstring).

    Usage:

        build("out/expl", "data/*.tfrecord", "report.html", metric="deletion")
    """
    from apache_beam.io.filesystems import FileSystems

    data = compute_report(output, metric, examples)
    ids = sorted({e.id for e in data.best + data.worst})
    page = render_html(data, source_images(data.summary.manifest, images, ids), labels, units,
                       top, alpha)
    out = out or (output[:-len(".manifest.json")] if output.endswith(".manifest.json")
                  else output) + ".report.html"
    with FileSystems.create(out, mime_type="text/html",
                            compression_type="uncompressed") as target:
        target.write(page.encode("utf-8"))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """Write one self-contained HTML page about a run: counts, dead letters, per-unit counts,
    metric histograms, mean maps, the best and worst records as overlays, the manifest
    (exit 2 without a manifest or for an unknown --metric)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=main.__doc__)
    parser.add_argument("output", help="The run's --output prefix (or its .manifest.json).")
    parser.add_argument("--images", default=None,
                        help="Pattern of the job's inputs, to draw the overlays on (default: "
                        "the input pattern in the manifest).")
    parser.add_argument("--out", default=None, help="HTML file to write "
                        "(default OUTPUT.report.html).")
    parser.add_argument("--metric", default=None,
                        help="Ranks the best and worst records: a metric of the run, "
                        "probability or logit (default: the first metric, else probability, "
                        "else logit).")
    parser.add_argument("--examples", type=int, default=EXAMPLES,
                        help="Best and worst records shown (each).")
    parser.add_argument("--units", type=int, default=UNITS_SHOWN, help="Mean maps shown.")
    parser.add_argument("--top", type=int, default=TOP_UNITS, help="Rows of the unit table.")
    parser.add_argument("--labels", default=None, help="Unit names, comma-separated.")
    parser.add_argument("--alpha", type=float, default=0.5, help="Weight of the map's colours.")
    args = parser.parse_args(argv)
    try:
        path = build(args.output, args.images, args.out, args.metric, args.examples,
                     args.units, args.top, args.labels.split(",") if args.labels else None,
                     args.alpha)
    except (FileNotFoundError, ValueError) as error:
        print(f"pipeline.report: {error}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
