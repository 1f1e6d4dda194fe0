"""`python -m pipeline.compare RUN_A RUN_B --output PREFIX`: two runs of the job over the same
records compared record by record.

    python -m pipeline.compare out/gradcam out/gradients --output out/compare \\
        [--top_fraction 0.1] [--num_shards N] [--runner ... and any Beam option]

RUN_A and RUN_B are two `--output` prefixes of the job (any filesystem, `gs://` too); their
methods, units, models and map sizes may differ. The comparison is a Beam pipeline
(`pipeline.job.comparing.CompareRuns`: read both runs, join them by id in hash buckets
through files under `PREFIX.join/`, removed when the command ends, compare) on any runner,
and writes:

- `PREFIX-SSSSS-of-NNNNN.parquet`: a row per record and unit either run explained: the
  Spearman rank correlation of the two maps and the IoU of their top 10% pixels, at the
  smaller of the two stored sizes (the larger map averaged down to it), and the change
  (B - A) of the logit, the probability and every metric both runs scored;
- `PREFIX.one_sided-00000-of-00001.parquet`: the ids held by one run only (never dropped
  silently: also counted, in Beam's counters, the summary and the page);
- `PREFIX.summary.json` and `PREFIX.html`: per unit the distributions of agreement, and the
  records whose maps changed most, both maps side by side.

A prefix that is not a job output, or an output prefix that cannot be written, is one line
and exit status 2 before anything runs; a failed pipeline exit status 1.

Separation of concerns: `pipeline.results.comparison` computes (numpy) and keeps the
summary, `pipeline.job.comparing` declares the options and builds the pipeline, and this
module runs it and draws the page (`render_page`, with the report's own pieces:
`pipeline.report`).

Usage, from Python:

    summary = compare(["out/gradcam", "out/gradients", "--output", "out/compare"])
    summary.units[3].mean("spearman"), [c.id for c in summary.changed_most()]
"""

import argparse
import base64
import io
import logging
import sys
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions
from apache_beam.runners.runner import PipelineState
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.commands import BAD_INPUT, fail
from pipeline.io import writing
from pipeline.io.files import write_bytes
from pipeline.job.comparing import (
    COMPARE_NAMESPACE,
    CompareRuns,
    CompareSettings,
    Runs,
    check_runs,
    remove_join_folder,
)
from pipeline.job.launcher import failure_line, local_runner
from pipeline.job.options import check_arguments
from pipeline.pictures import colorize
from pipeline.report import (
    STYLE,
    data_uri,
    escape,
    fitted,
    html_table,
    number,
    script_json,
)
from pipeline.results.comparison import (
    ONE_SIDED_SUFFIX,
    PAGE_SUFFIX,
    SPEARMAN_BINS,
    TABLE_SUFFIX,
    ComparisonSummary,
    read_summary,
)
from pipeline.settings import add_arguments, from_arguments

PROG = "pipeline.compare"
UNITS_SHOWN = 12
"""Units whose distributions the page draws (the most compared)."""

TOP_UNITS = 50
"""Rows of the page's unit table."""

COLORMAP = "jet"


# --- the page -----------------------------------------------------------------------------------


def _histograms(counts: Dict[str, np.ndarray], title: str) -> str:
    """One PNG (data URI) with the Spearman and IoU histograms of one unit (or of all)."""
    figure = Figure(figsize=(7.2, 2.3), dpi=80, layout="constrained")
    FigureCanvasAgg(figure)
    for index, (name, low) in enumerate((("spearman", -1.0), ("iou", 0.0))):
        axes = figure.add_subplot(1, 2, index + 1)
        edges = np.linspace(low, 1.0, SPEARMAN_BINS + 1)
        axes.bar(edges[:-1], counts[name], width=np.diff(edges), align="edge",
                 color="#4c72b0", edgecolor="white")
        axes.set_xlim(low, 1.0)
        axes.set_title(f"{title}: {'Spearman' if name == 'spearman' else 'top IoU'}",
                       fontsize=10)
        axes.set_ylabel("maps" if index == 0 else "")
        axes.tick_params(labelsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _runs_section(runs: Runs, names: Sequence[str]) -> str:
    rows = []
    for run, prefix in zip(("a", "b"), names):
        manifest = runs.manifests[run]
        output = manifest["output"]
        rows.append((run.upper(), prefix, manifest["method"]["name"],
                     f"{manifest['model']['path']} ({manifest['model']['sha256'][:12]}...)",
                     f"{output['map_encoding']}, {output['map_size']}",
                     ", ".join((manifest.get("metrics") or {}).get("names") or []) or "-"))
    return html_table(("run", "prefix", "method", "model", "maps", "metrics"), rows,
                  text_columns=range(6))


def _counts_section(summary: ComparisonSummary, output: str) -> str:
    rows = [("records compared", summary.records),
            ("records only in A", summary.only["a"]),
            ("records only in B", summary.only["b"]),
            ("records beyond the first of an id, in A", summary.duplicates["a"]),
            ("records beyond the first of an id, in B", summary.duplicates["b"])]
    rows += [(f"compared at {size}", count) for size, count in sorted(summary.sizes.items())]
    parts = [html_table(("", "count"), rows)]
    for run in ("a", "b"):
        if summary.only[run]:
            more = summary.only[run] - len(summary.only_examples[run])
            parts.append(
                f'<p class="warning" data-only="{run}">Only in {run.upper()}: '
                f"{', '.join(escape(i) for i in summary.only_examples[run])}"
                + (f" and {more} more" if more > 0 else "")
                + f" (every one in <code>{escape(output + ONE_SIDED_SUFFIX)}-*{TABLE_SUFFIX}"
                  "</code>).</p>")
    return "".join(parts)


def _units_section(summary: ComparisonSummary, top: int) -> str:
    header = ["unit", "maps compared", "mean Spearman", "mean top IoU", "mean logit change",
              "mean |logit change|", "mean probability change",
              *[f"mean {name} change" for name in summary.metrics], "explained by A only",
              "explained by B only"]
    units = sorted(summary.units, key=lambda u: (-summary.units[u].maps, u))
    rows = []
    for unit in units[:top]:
        stats = summary.units[unit]
        metric_means = [stats.metric_sums[i] / stats.metric_counts[i]
                        if stats.metric_counts[i] else None for i in range(len(summary.metrics))]
        rows.append((unit, stats.maps, *(number(stats.mean(name)) for name in (
            "spearman", "iou", "logit_change", "logit_change_abs", "probability_change")),
            *(number(None if m is None else float(m)) for m in metric_means),
            stats.only_a, stats.only_b))
    more = f"<p>... {len(units) - top} more units</p>" if len(units) > top else ""
    return (html_table(header, rows) + more) if rows else "<p>No record in common.</p>"


def _distributions_section(summary: ComparisonSummary, units: int) -> str:
    shown = sorted((u for u in summary.units if summary.units[u].maps),
                   key=lambda u: (-summary.units[u].maps, u))[:units]
    if not shown:
        return "<p>No map compared.</p>"
    total = {name: sum(getattr(summary.units[u], f"{name}_counts") for u in summary.units)
             for name in ("spearman", "iou")}
    figures = [f'<img class="distribution" data-unit="all" alt="all units" '
               f'src="{_histograms(total, "all units")}">']
    for unit in shown:
        stats = summary.units[unit]
        figures.append(
            f'<img class="distribution" data-unit="{unit}" alt="unit {unit}" '
            f'src="{_histograms({"spearman": stats.spearman_counts, "iou": stats.iou_counts}, f"unit {unit}")}">')  # noqa: E501
    return (f"<p>Spearman's rho ({SPEARMAN_BINS} bins over [-1, 1]) and the IoU of the top "
            "pixels (over [0, 1]) of each pair of maps, over all units, then per unit "
            f"(the {len(shown)} most compared).</p>" + "".join(figures))


def _changed_section(summary: ComparisonSummary) -> str:
    changed = summary.changed_most()
    if not changed:
        return "<p>No pair of maps with a defined Spearman's rho.</p>"
    figures = []
    for item in changed:
        pair = np.concatenate([colorize(item.map_a, COLORMAP),
                               np.full((item.map_a.shape[0], 1, 3), 255, np.uint8),
                               colorize(item.map_b, COLORMAP)], axis=1)
        picture = fitted(pair, item.map_a.shape)
        probabilities = " -> ".join(number(p) for p in item.probabilities)
        figures.append(
            f'<figure class="changed" data-id="{escape(item.id)}" data-unit="{item.unit}" '
            f'data-spearman="{item.spearman!r}"><img alt="{escape(item.id)}" '
            f'src="{data_uri(picture)}"><figcaption><b>{escape(item.id)}</b>, unit {item.unit}'
            f"<br>Spearman {item.spearman:.3g}, top IoU {item.iou:.3g}<br>logit "
            f"{item.logits[0]:.3g} -> {item.logits[1]:.3g}, p {probabilities}"
            "</figcaption></figure>")
    return ("<p>The records whose maps agree least (their least-agreeing unit, lowest "
            f"Spearman first): A left, B right, each coloured ({COLORMAP}) over its own range "
            "at the size they were compared at.</p>"
            f'<div class="figures">{"".join(figures)}</div>')


def _page_data(summary: ComparisonSummary) -> dict:
    value = summary.to_json()
    for changed in value["changed"]:
        del changed["map_a"], changed["map_b"]
        changed["probabilities"] = [None if p != p else p for p in changed["probabilities"]]
    return value


def render_page(summary: ComparisonSummary, runs: Runs, names: Sequence[str], output: str,
                units: int = UNITS_SHOWN, top: int = TOP_UNITS) -> str:
    """The comparison's page: the two runs, the counts (and the one-sided ids), the unit
    table, the distributions of agreement and the records that changed most, with the
    numbers embedded as JSON (`<script id="compare-data">`)."""
    title = f"Comparison: {names[0]} vs {names[1]}"
    sections = [
        ("Runs", _runs_section(runs, names)),
        ("Counts", _counts_section(summary, output)),
        ("Per unit", _units_section(summary, top)),
        ("Agreement", _distributions_section(summary, units)),
        ("Changed most", _changed_section(summary)),
    ]
    body = "".join(f"<h2>{escape(name)}</h2>{content}" for name, content in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{escape(title)}</h1>{body}"
            f'<script type="application/json" id="compare-data">'
            f"{script_json(_page_data(summary))}</script></body></html>\n")


# --- the command ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0] + " Every Beam "
        "pipeline option works too (--runner, --direct_num_workers, ...).")
    parser.add_argument("run_a", help="the first run's --output prefix")
    parser.add_argument("run_b", help="the second run's --output prefix")
    add_arguments(parser, CompareSettings)
    return parser


def _counters(result) -> Optional[Dict[str, int]]:
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(COMPARE_NAMESPACE))
    except Exception:  # noqa: BLE001 - some runners report no metrics
        return None
    values: Dict[str, int] = {}
    for counter in found["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + (value or 0)
    return values


def _remove_join_files(output: str) -> None:
    """`remove_join_folder`, only logging its errors: failing here must not hide why the
    comparison stopped (the next comparison into the same prefix removes them)."""
    try:
        remove_join_folder(output)
    except Exception as error:  # noqa: BLE001 - see the docstring
        logging.warning("Could not remove the join's files of %s (%s: %s); the next "
                        "comparison into the same prefix will.", output,
                        type(error).__name__, error)


class Comparison:
    """A comparison built but not run: its settings, both runs, its Beam pipeline."""

    def __init__(self, argv: Sequence[str]):
        """Parse and check `argv` (the command's arguments) and build the pipeline. Raises
        ValueError or OSError, one line, for bad options, runs that cannot be compared or an
        output that cannot be written: nothing has run yet."""
        args, beam_args = _parser().parse_known_args(list(argv))
        try:
            check_arguments(beam_args)
        except ValueError as error:
            raise ValueError(str(error).replace("python -m pipeline --help",
                                                f"python -m {PROG} --help")) from None
        self.settings = from_arguments(vars(args), CompareSettings, run_a=args.run_a,
                                       run_b=args.run_b)
        self.runs = check_runs(self.settings)
        writing.check_writable(self.settings.output, "output")
        options = PipelineOptions(beam_args)
        portable = options.view_as(PortableOptions)
        if portable.job_endpoint == "embed" and not portable.environment_type:
            portable.environment_type = "LOOPBACK"  # (as the job does)
        self.pipeline = beam.Pipeline(runner=local_runner(options), options=options)
        _ = self.pipeline | CompareRuns(self.settings, self.runs)

    def run(self) -> ComparisonSummary:
        """Run the pipeline, write the page; returns the summary, with the runner's counters
        as `counters` (None when it reports none). Temporary files are removed before, and
        after a failure; the join's bucket files before, and after the pipeline whether it
        succeeded or not."""
        output = self.settings.output
        prefixes = [output, output + ONE_SIDED_SUFFIX]
        writing.remove_temporary_files(prefixes)
        remove_join_folder(output)
        try:
            result = self.pipeline.run()
            result.wait_until_finish()
            if result.state in (PipelineState.FAILED, PipelineState.CANCELLED):
                raise RuntimeError(f"the runner reports the comparison {result.state}.")
        except BaseException:
            writing.remove_temporary_files(prefixes)
            raise
        finally:
            _remove_join_files(output)
        summary = read_summary(output)
        summary.counters = _counters(result)
        names = (self.settings.run_a, self.settings.run_b)
        page = render_page(summary, self.runs, names, output)
        write_bytes(output + PAGE_SUFFIX, page.encode("utf-8"), "text/html")
        return summary


def compare(argv: Sequence[str]) -> ComparisonSummary:
    """Build and run the comparison `argv` describes (`Comparison`); returns its summary."""
    return Comparison(argv).run()


def report(summary: ComparisonSummary, output: str) -> str:
    """What the command prints: the counts, the agreement over all units, the files."""
    maps = sum(stats.maps for stats in summary.units.values())
    defined = sum(stats.maps - stats.undefined for stats in summary.units.values())
    rho = sum(stats.spearman_sum for stats in summary.units.values())
    iou = sum(stats.iou_sum for stats in summary.units.values())
    lines = [f"records compared:  {summary.records}",
             f"records only in A: {summary.only['a']}",
             f"records only in B: {summary.only['b']}",
             f"maps compared:     {maps}"
             + (f" (mean Spearman {rho / defined:.4f}, mean top IoU {iou / defined:.4f})"
                if defined else ""),
             f"table:     {output}-*{TABLE_SUFFIX}",
             f"one-sided: {output}{ONE_SIDED_SUFFIX}-*{TABLE_SUFFIX}",
             f"page:      {output}{PAGE_SUFFIX}"]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Compare two runs (see the module docstring); exit 2 for runs that cannot be compared
    or bad options (one line, before anything runs), 1 when the pipeline fails."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        _parser().print_help()
        return 0
    try:
        comparison = Comparison(argv)
    except (*BAD_INPUT, OSError) as error:  # bad options, runs that cannot be compared
        return fail(PROG, error)
    try:
        summary = comparison.run()
    except Exception as error:  # noqa: BLE001 - reported in one line; Beam logged the rest
        print(f"{PROG}: the comparison failed: {failure_line(error)}", file=sys.stderr)
        return 1
    print(report(summary, comparison.settings.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
