"""`python -m pipeline.report OUTPUT`: one self-contained HTML page about a run.

    python -m pipeline.report out/expl --out report.html [--images 'data/*.tfrecord'] \\
        [--metric deletion] [--examples 6] [--units 12] [--top 50] [--labels a,b,...]

The page shows the run's counts and its dead letters per stage and message, how many
explanations each unit has, the distribution of every metric the job computed (histograms),
the mean map of each of the most explained units, the best and the worst records by one
metric as overlays on their images with their ids, with `--strategies` each unit's
strategies (SpRAy clusters: size and share, mean map, prototypes over their images, a 2-D
embedding coloured by cluster), and the manifest. Its pictures are
embedded as `data:` URIs (PNG, JPEG), so the one file can be mailed or opened anywhere.

Separation of concerns:

- The numbers come from two small files the job wrote: its manifest (`pipeline.results.manifest`:
  the counts, the settings) and its overview (`pipeline.results.overview`: per-unit counts and map
  sums, every metric's scores or a uniform sample of them, the best and worst records of
  each ranking key with their maps and images, the dead letters' messages per stage), kept
  while the job explained, in memory bounded by the units and the examples. The report
  reads no explanation record: it takes about as long for ten million records as for ten,
  and needs neither TensorFlow nor (for local paths) Beam. `compute_report` returns them
  as a `ReportData` (tests compare it with the records).
- `render_html` draws the pictures (matplotlib figures with the Agg backend, colours from
  matplotlib's colormaps through `pipeline.render`) and writes the page; `build` joins both
  and writes the file (local, or through Beam's filesystems for `gs://` and the like).
- `--images PATTERN` draws the overlays on the images read again from the job's inputs
  (`pipeline.render.load_images_by_id`, with the run's own record options; this imports
  TensorFlow) instead of the copies the job kept.

The ranking (`--metric`): each record is scored by its first explained unit (the top
prediction when the job explained the top-K); records whose score is NaN (not scored, e.g.
no ground truth) are left out. By default the ranking metric is the first metric the run
computed (`--metrics`) with a finite score, best and worst as the metrics registry says
(`higher_is_better`: deletion is better low); in a run without metrics it is the first
unit's probability, "best" meaning most confident. `--metric probability` and `--metric
logit` choose those explicitly. Ties go to the smaller id.

Usage, from Python (e.g. a benchmark):

    path = build("out/expl", out="report.html", metric="deletion")
    data = compute_report("out/expl", metric="deletion")
    [example.id for example in data.best], data.mean_maps[3].shape
"""

import argparse
import base64
import collections
import html
import io
import json
import re
import sys
import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from pipeline.commands import BAD_INPUT, count, fail
from pipeline.io.files import write_bytes
from pipeline.pictures import colorize, overlay, upscale
from pipeline.results.clusters import UnitStrategies
from pipeline.results.manifest import MANIFEST_SUFFIX, read_manifest
from pipeline.results.overview import EXAMPLES as KEPT_EXAMPLES
from pipeline.results.overview import MEAN_MAP_SIZE, RANK_KEYS, Example, read_overview

EXAMPLES = 6
"""Best and worst records shown by default (each; at most `pipeline.results.overview.EXAMPLES`)."""

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


@dataclass
class ReportData:
    """What the page shows, as numbers.

    `manifest`: the run's manifest; `records`: explanation records the job's overview
    counts; `unit_counts[u]`: maps explaining unit u, `first_unit_counts[u]`: records whose
    first unit is u; `dead_letters[stage]`: a Counter of error messages (`other_messages`:
    dead letters of a stage beyond its `pipeline.results.overview.MESSAGES` distinct messages);
    `notes`: warnings about the run's files; `metric`: the ranking key (a metric name,
    "probability" or "logit", None when no record has a finite score),
    `higher_is_better`: its direction, `directions[name]` every metric's; `values[name]`:
    the finite scores of each metric (one per explained map), and of the ranking key when
    it is not a metric (one per record): all of them, or a uniform sample of
    `pipeline.results.overview.SAMPLE` beyond that many; `scored[name]`: how many were finite,
    `missing[name]` how many NaN; `mean_maps[unit]`: the mean (h, w) float64 of the maps
    explaining the unit, `map_counts[unit]` how many there were; `best` and `worst`:
    `pipeline.results.overview.Example`s (with their maps and images), best first and worst first.
    """

    manifest: dict
    records: int
    unit_counts: collections.Counter
    first_unit_counts: collections.Counter
    dead_letters: Dict[str, collections.Counter]
    other_messages: collections.Counter
    notes: List[str]
    metric: Optional[str]
    higher_is_better: bool
    directions: Dict[str, bool]
    values: Dict[str, np.ndarray]
    scored: Dict[str, int]
    missing: Dict[str, int]
    mean_maps: Dict[int, np.ndarray]
    map_counts: Dict[int, int]
    best: List[Example]
    worst: List[Example]
    strategies: Dict[int, UnitStrategies] = dataclasses.field(default_factory=dict)


# --- the numbers -----------------------------------------------------------------------------


def compute_report(output: str, metric: Optional[str] = None,
                   examples: int = EXAMPLES) -> ReportData:
    """The numbers of the report on the run writing `output` (its `--output` prefix or its
    manifest), from its manifest and the overview the job kept (`pipeline.results.overview`);
    `metric` ranks the records (default: the first metric computed with a finite score,
    else "probability", else "logit").

    Raises FileNotFoundError without a manifest or an overview, ValueError for a `metric`
    the run did not compute or more `examples` than the job kept.
    """
    manifest = read_manifest(output)
    prefix = output[:-len(MANIFEST_SUFFIX)] if output.endswith(MANIFEST_SUFFIX) else output
    overview = read_overview(prefix)
    names = overview.names
    if metric is not None and metric not in overview.keys:
        raise ValueError(f"--metric {metric}: the run computed "
                         f"{', '.join(names) or 'no metric'}; or rank by "
                         f"{' or '.join(RANK_KEYS)}.")
    if not 0 <= examples <= KEPT_EXAMPLES:
        raise ValueError(f"--examples {examples}: the job keeps the {KEPT_EXAMPLES} best and "
                         "worst records of each ranking key; ask for at most that many.")
    # Without a metric asked for, the first one with a finite score ranks; the probability
    # when the records have one, else the logit: a run's metric may be NaN everywhere (no
    # ground truth in any record).
    candidates = [metric] if metric else overview.keys
    chosen = next((key for key in candidates if overview.examples[key][0]), None)
    notes = []
    counts = manifest["counts"]
    if counts.get("counted") and counts["explained"] != overview.records:
        notes.append(f"the job's counters report {counts['explained']} explained records, "
                     f"its overview holds {overview.records}.")
    shown = [*names, *([chosen] if chosen in RANK_KEYS else [])]
    return ReportData(
        manifest=manifest, records=overview.records, unit_counts=overview.unit_counts,
        first_unit_counts=overview.first_unit_counts, dead_letters=overview.dead_letters,
        other_messages=overview.other_messages, notes=notes, metric=chosen,
        higher_is_better=overview.higher(chosen) if chosen else True,
        directions={key: overview.higher(key) for key in overview.keys},
        values={key: overview.samples[key].values for key in shown},
        scored={key: overview.samples[key].scored for key in shown},
        missing={key: overview.samples[key].missing for key in shown},
        mean_maps=overview.mean_maps(),
        map_counts={unit: int(overview.unit_counts[unit]) for unit in overview.sums},
        best=overview.best(chosen, examples) if chosen else [],
        worst=overview.worst(chosen, examples) if chosen else [],
        strategies=overview.strategies,
    )


# --- the pictures ----------------------------------------------------------------------------


def data_uri(picture: np.ndarray, kind: str = "png") -> str:
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


def fitted(picture: np.ndarray, shape) -> np.ndarray:
    """`picture` (one or more images of `shape` side by side) with each image at about
    PICTURE_SIZE: upscaled by `picture_scale`, or shrunk (bilinearly) when larger than twice
    that."""
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

STYLE = """
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


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def _unit_name(unit: int, labels: Optional[Sequence[str]]) -> str:
    return f"{unit} {labels[unit]}" if labels and 0 <= unit < len(labels) else str(unit)


def html_table(header: Sequence[str], rows: Sequence[Sequence], text_columns=(0,)) -> str:
    def cell(tag, index, value):
        css = ' class="text"' if index in text_columns else ""
        return f"<{tag}{css}>{escape(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _counts_section(data: ReportData) -> str:
    counts = data.manifest["counts"]
    rows = []
    if counts.get("counted"):
        rows += [("records read", counts["read"]), ("records explained", counts["explained"]),
                 ("records dead-lettered", counts["dead_lettered"])]
    else:
        rows.append(("job counters", "none reported: the run's counts are unknown"))
    rows.append(("explanations in the job's overview", data.records))
    notes = "".join(f'<p class="warning">warning: {escape(note)}</p>' for note in data.notes)
    parts = [html_table(("", "count"), rows), notes, "<h3>Dead letters</h3>"]
    letters = data.dead_letters
    counted = counts.get("dead_letters") or {}
    stages = [s for s in counted if counted.get(s)] + [s for s in letters if s not in counted]
    if not stages:
        parts.append("<p>None.</p>")
    for stage in stages:
        found = letters.get(stage) or {}
        count = counted.get(stage, sum(found.values()))
        parts.append(f'<p><b>{escape(stage)}</b>: '
                     f'<span data-stage="{escape(stage)}">{count}</span></p>')
        if found:
            rows = [(message[:300], count) for message, count in found.most_common(MESSAGES)]
            if len(found) > MESSAGES:
                rows.append((f"... {len(found) - MESSAGES} other messages", ""))
            if data.other_messages.get(stage):
                rows.append(("... messages beyond the first the job counted apart",
                             data.other_messages[stage]))
            parts.append(html_table(("message", "records"), rows))
    return "".join(parts)


def _units_section(data: ReportData, labels, top: int) -> str:
    units = data.unit_counts
    described = data.manifest.get("metrics") or {}
    aggregates = described.get("aggregates") or {}
    metrics = [name for name in described.get("names") or [] if name in aggregates]
    header = ["unit", "records", "as first unit", *[f"mean {m}" for m in metrics]]
    rows = []
    for unit, explained in units.most_common(top):
        means = [(aggregates[m].get("per_unit") or {}).get(str(unit), {}).get("mean")
                 for m in metrics]
        rows.append((_unit_name(unit, labels), explained, data.first_unit_counts.get(unit, 0),
                     *map(number, means)))
    more = f"<p>... {len(units) - top} more units</p>" if len(units) > top else ""
    return html_table(header, rows) + more if rows else "<p>No explanation.</p>"


def _metrics_section(data: ReportData) -> str:
    if not data.values:
        return "<p>No metric in this run (run the job with --metrics).</p>"
    parts = [f'<img alt="histograms" src="{histogram_figure(data.values, data.directions)}">']
    rows = []
    for name, scores in data.values.items():
        quantiles = np.quantile(scores, [0, 0.25, 0.5, 0.75, 1]) if len(scores) else [None] * 5
        rows.append((name, data.scored[name], data.missing[name],
                     number(float(np.mean(scores)) if len(scores) else None),
                     *(number(None if q is None else float(q)) for q in quantiles)))
    parts.append(html_table(("", "scored", "not scored (NaN)", "mean", "min", "25%", "median",
                         "75%", "max"), rows))
    return "".join(parts)


def _mean_maps_section(data: ReportData, labels, units: int) -> str:
    shown = sorted(data.map_counts, key=lambda u: (-data.map_counts[u], u))[:units]
    figures = []
    for unit in shown:
        mean = data.mean_maps[unit]
        scale = picture_scale(mean.shape)
        picture = colorize(mean, MEAN_COLORMAP)
        figures.append(
            f'<figure><img class="mean-map" data-unit="{unit}" data-scale="{scale}" '
            f'alt="mean map of unit {unit}" src="{data_uri(upscale(picture, scale))}">'
            f"<figcaption>{escape(_unit_name(unit, labels))}: {data.map_counts[unit]} maps<br>"
            f"{mean.min():.3g} .. {mean.max():.3g}</figcaption></figure>")
    more = (f"<p>{len(data.map_counts) - len(shown)} more units not shown.</p>"
            if len(data.map_counts) > len(shown) else "")
    note = (f"<p>Each unit's maps averaged at {'x'.join(map(str, mean.shape))} "
            f"(the stored size, at most {MEAN_MAP_SIZE} on a side), coloured with "
            f"matplotlib's {MEAN_COLORMAP} over the mean's own range.</p>") if shown else ""
    return note + f'<div class="figures">{"".join(figures)}</div>' + more


CLUSTER_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
"""Colours of the clusters in the embedding plot and their captions (matplotlib's tab10)."""


def embedding_figure(embedding: np.ndarray, clusters: np.ndarray) -> str:
    """A scatter plot of a unit's sampled maps in 2-D, coloured by cluster, as a data URI."""
    figure = Figure(figsize=(3.2, 3.0), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for c in np.unique(clusters):
        chosen = clusters == c
        axes.scatter(embedding[chosen, 0], embedding[chosen, 1], s=8,
                     color=CLUSTER_COLORS[int(c) % len(CLUSTER_COLORS)], label=f"{c}")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(title="cluster", fontsize=7, title_fontsize=7, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _strategies_section(data: ReportData, labels, units: int, alpha: float) -> str:
    if not data.strategies:
        return ("<p>Not computed: run the job with <code>--strategies</code> to cluster each "
                "unit's maps (SpRAy).</p>")
    shown = sorted(data.strategies, key=lambda u: (-sum(data.strategies[u].records), u))[:units]
    parts = ["<p>Each unit's maps clustered by where their mass lies (SpRAy: a kNN graph of a "
             "uniform sample of the maps reduced to a small size, spectral clustering, k from "
             "the eigengap unless given); every record assigned to the nearest cluster. A "
             "small cluster whose mean map sits away from the object is a strategy worth a "
             "look: a shortcut (Clever Hans). Prototypes: the sampled records nearest the "
             "cluster's centre, the image left, its reduced map over it right.</p>"]
    for unit in shown:
        clusters = data.strategies[unit]
        embedding = clusters.embedding()
        gaps = ", ".join(f"{v:.3g}" for v in clusters.eigenvalues[:min(len(clusters.eigenvalues),
                                                                     10)])
        rows = []
        for c in range(clusters.k):
            mean = clusters.mean_maps[c]
            scale = picture_scale(mean.shape)
            mean_uri = data_uri(upscale(colorize(mean, MEAN_COLORMAP), scale))
            protos = []
            for p, record_id in enumerate(clusters.prototypes[c]):
                image = clusters.prototype_images[c, p]
                small = clusters.prototype_maps[c, p]
                zoom = max(1, image.shape[0] // small.shape[0])
                on_image = small if zoom == 1 else np.kron(small, np.ones((zoom, zoom)))
                on_image = on_image[:image.shape[0], :image.shape[1]]
                if on_image.shape != image.shape[:2]:
                    on_image = np.zeros(image.shape[:2])
                pair = np.concatenate([image, overlay(image, on_image, alpha,
                                                      OVERLAY_COLORMAP)], axis=1)
                protos.append(
                    f'<figure class="prototype" data-id="{escape(record_id)}"><img '
                    f'alt="{escape(record_id)}" src="{data_uri(fitted(pair, image.shape))}">'
                    f"<figcaption>{escape(record_id)}</figcaption></figure>")
            color = CLUSTER_COLORS[c % len(CLUSTER_COLORS)]
            rows.append(
                f'<tr class="cluster" data-unit="{unit}" data-cluster="{c}" '
                f'data-records="{clusters.records[c]}" data-share="{clusters.shares()[c]!r}">'
                f'<td style="color:{color}"><b>{c}</b></td><td>{clusters.records[c]}</td>'
                f"<td>{100 * clusters.shares()[c]:.1f}%</td><td>{clusters.sample_sizes[c]}</td>"
                f'<td><img class="cluster-mean" alt="mean map of cluster {c}" '
                f'src="{mean_uri}"></td><td><div class="figures">{"".join(protos)}</div></td>'
                "</tr>")
        parts.append(
            f'<h3 class="unit-strategies" data-unit="{unit}" data-k="{clusters.k}">'
            f"{escape(_unit_name(unit, labels))}: {clusters.k} "
            f"cluster{'s' if clusters.k != 1 else ''}</h3>"
            f'<div class="figures"><figure><img class="embedding" data-unit="{unit}" '
            f'alt="2-D embedding of unit {unit}" '
            f'src="{embedding_figure(embedding, clusters.feature_clusters)}">'
            f"<figcaption>{len(embedding)} sampled maps (t-SNE of the spectral "
            f"embedding)</figcaption></figure></div>"
            f"<p>Fitted on {clusters.sample} sampled maps; smallest eigenvalues {gaps}; the "
            f"nearest-centroid rule gives {100 * clusters.agreement:.1f}% of the sample its "
            "own cluster.</p>"
            "<table><tr><th>cluster</th><th>records</th><th>share</th><th>in the sample</th>"
            f"<th>mean map</th><th>prototypes</th></tr>{''.join(rows)}</table>")
    if len(data.strategies) > len(shown):
        parts.append(f"<p>{len(data.strategies) - len(shown)} more units not shown.</p>")
    return "".join(parts)


def _examples_section(data: ReportData, images: Dict[str, np.ndarray], labels,
                      alpha: float) -> str:
    if data.metric is None:
        return "<p>No record has a finite score to rank by.</p>"
    better = "higher" if data.higher_is_better else "lower"
    parts = [f"<p>Records ranked by their first unit's <b>{escape(data.metric)}</b> ({better} is "
             f"better); left the image, right the map over it (matplotlib's "
             f"{OVERLAY_COLORMAP}, alpha {alpha}).</p>"]
    for title, chosen in (("Best", data.best), ("Worst", data.worst)):
        figures = []
        for example in chosen:
            image = images.get(example.id)
            if image is None:  # no input to draw on: the map alone
                picture = fitted(colorize(example.map, OVERLAY_COLORMAP), example.map.shape)
            else:
                pair = np.concatenate([overlay(image, np.zeros(image.shape[:2]), alpha=0.0),
                                       overlay(image, example.map, alpha, OVERLAY_COLORMAP)],
                                      axis=1)
                picture = fitted(pair, image.shape)
            figures.append(
                f'<figure class="example" data-kind="{title.lower()}" '
                f'data-id="{escape(example.id)}"'
                f' data-score="{example.score!r}"><img alt="{escape(example.id)}" '
                f'src="{data_uri(picture, "jpeg")}"><figcaption><b>{escape(example.id)}</b><br>'
                f"{escape(data.metric)} {example.score:.4g}<br>unit "
                f"{escape(_unit_name(example.unit, labels))}, p {example.probability:.3g}"
                "</figcaption></figure>")
        parts.append(f"<h3>{title}</h3><div class=\"figures\">{''.join(figures)}</div>")
    return "".join(parts)


_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                   "\u2029": "\\u2029"}


def script_json(value) -> str:
    """`value` as JSON that is safe inside a `<script>` element: `<`, `>` and `&` (which could
    end the element, or open a comment that swallows the rest of the page) and the line
    separators U+2028 and U+2029 written as JSON escapes, which `JSON.parse` reads back as
    the same characters."""
    text = json.dumps(value, sort_keys=True)
    return re.sub("[<>&\u2028\u2029]", lambda match: _SCRIPT_ESCAPES[match.group()], text)


def _page_data(data: ReportData) -> dict:
    """The numbers behind the page, embedded as JSON (`<script id="report-data">`)."""
    return {
        "output": data.manifest["output"]["explanations"],
        "counts": data.manifest["counts"],
        "records": data.records,
        "unit_counts": {str(u): c for u, c in sorted(data.unit_counts.items())},
        "dead_letters": {stage: sum(found.values())
                         for stage, found in data.dead_letters.items()},
        "metric": data.metric,
        "higher_is_better": data.higher_is_better,
        "best": [{"id": e.id, "unit": e.unit, "score": e.score} for e in data.best],
        "worst": [{"id": e.id, "unit": e.unit, "score": e.score} for e in data.worst],
        "strategies": {str(unit): {"k": f.k, "records": f.records}
                       for unit, f in sorted(data.strategies.items())},
        "metrics": {name: {"scored": data.scored[name], "missing": data.missing[name],
                           "mean": float(np.mean(v)) if len(v) else None}
                    for name, v in data.values.items()},
    }


def render_html(data: ReportData, images: Dict[str, np.ndarray],
                labels: Optional[Sequence[str]] = None, units: int = UNITS_SHOWN,
                top: int = TOP_UNITS, alpha: float = 0.5) -> str:
    """The page of `data` as one HTML string; `images` maps the best and worst records' ids
    to their source images (H, W, C) (records without one are drawn as their map alone)."""
    manifest = data.manifest
    method, model = manifest["method"], manifest["model"]
    embedded = script_json(_page_data(data))
    manifest_text = json.dumps(manifest, indent=2)
    sections = [
        ("Counts", _counts_section(data)),
        ("Per unit", _units_section(data, labels, top)),
        ("Metric distributions", _metrics_section(data)),
        ("Mean map per unit", _mean_maps_section(data, labels, units)),
        ("Best and worst records", _examples_section(data, images, labels, alpha)),
        ("Strategies (SpRAy)", _strategies_section(data, labels, units, alpha)),
        ("Manifest", f"<details><summary>{escape(manifest_path_of(manifest))}</summary>"
                     f"<pre>{escape(manifest_text)}</pre></details>"),
    ]
    body = "".join(f"<h2>{escape(title)}</h2>{content}" for title, content in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Explanations: {escape(manifest['output']['explanations'])}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>Explanations: {escape(manifest['output']['explanations'])}</h1>"
        f"<p>{escape(method['name'])} on {escape(model['path'])} "
        f"(sha256 {escape(model['sha256'][:16])}...), "
        f"{escape(manifest['started'])} to {escape(manifest['finished'])} "
        f"({manifest['seconds']:.1f} s) on {escape(manifest['runner'])}.</p>"
        f"{body}"
        f'<script type="application/json" id="report-data">{embedded}</script>'
        "</body></html>\n"
    )


def manifest_path_of(manifest: dict) -> str:
    pattern = manifest["output"]["explanations"]
    return pattern.split("-*")[0] + MANIFEST_SUFFIX


def source_images(data: ReportData, images: Optional[str] = None) -> Dict[str, np.ndarray]:
    """The images of the best and worst records by id: those the job kept with them (as it
    decoded them, at the model's input size), or with `images` (a pattern of the job's
    inputs) read again from those files with the run's own record options (its manifest's
    `input`; this imports TensorFlow to decode them)."""
    chosen = data.best + data.worst
    if not images:
        return {example.id: example.image for example in chosen}
    from pipeline.render import load_images_by_id  # (TensorFlow: only for --images)

    source = data.manifest["input"]
    ids = sorted({example.id for example in chosen})
    if not ids:
        return {}
    shape = source.get("image_shape")
    return load_images_by_id(images, ids, image_key=source.get("image_key") or "image",
                             image_format=source.get("image_format") or "auto",
                             image_shape=tuple(shape) if shape else None,
                             id_key=source.get("id_key") or None)


def build(output: str, images: Optional[str] = None, out: Optional[str] = None,
          metric: Optional[str] = None, examples: int = EXAMPLES, units: int = UNITS_SHOWN,
          top: int = TOP_UNITS, labels: Optional[Sequence[str]] = None,
          alpha: float = 0.5) -> str:
    """Write the report on the run writing `output` (its `--output` prefix) to `out`
    (default `OUTPUT.report.html`; any Beam filesystem, `gs://` included) and return its
    path. The overlays are drawn on the images the job kept, or with `images` on those of
    the inputs matching that pattern (`source_images`); `metric` ranks the best and worst
    records (see the module docstring).

    Usage:

        build("out/expl", out="report.html", metric="deletion")
    """
    data = compute_report(output, metric, examples)
    page = render_html(data, source_images(data, images), labels, units, top, alpha)
    out = out or (output[:-len(MANIFEST_SUFFIX)] if output.endswith(MANIFEST_SUFFIX)
                  else output) + ".report.html"
    return write_bytes(out, page.encode("utf-8"), "text/html")


def main(argv: Optional[List[str]] = None) -> int:
    """Write one self-contained HTML page about a run: counts, dead letters, per-unit counts,
    metric histograms, mean maps, the best and worst records as overlays, the manifest
    (exit 2, one line, for a missing or unreadable manifest or overview, or an unknown
    --metric)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=main.__doc__)
    parser.add_argument("output", help="The run's --output prefix (or its .manifest.json).")
    parser.add_argument("--images", default=None,
                        help="Pattern of the job's inputs, to draw the overlays on their "
                        "images read again (default: the images the job kept with the best "
                        "and worst records, as it decoded them).")
    parser.add_argument("--out", default=None, help="HTML file to write "
                        "(default OUTPUT.report.html).")
    parser.add_argument("--metric", default=None,
                        help="Ranks the best and worst records: a metric of the run, "
                        "probability or logit (default: the first metric, else probability, "
                        "else logit).")
    parser.add_argument("--examples", type=count, default=EXAMPLES,
                        help="Best and worst records shown (each).")
    parser.add_argument("--units", type=count, default=UNITS_SHOWN, help="Mean maps shown.")
    parser.add_argument("--top", type=count, default=TOP_UNITS, help="Rows of the unit table.")
    parser.add_argument("--labels", default=None, help="Unit names, comma-separated.")
    parser.add_argument("--alpha", type=float, default=0.5, help="Weight of the map's colours.")
    args = parser.parse_args(argv)
    try:
        path = build(args.output, args.images, args.out, args.metric, args.examples,
                     args.units, args.top, args.labels.split(",") if args.labels else None,
                     args.alpha)
    except BAD_INPUT as error:
        return fail("pipeline.report", error)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
