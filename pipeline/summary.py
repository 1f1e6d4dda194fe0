"""`python -m pipeline.summary OUTPUT`: what a run produced, from its manifest and its files.

    python -m pipeline.summary out/expl [--top 20] [--no_scan] [--json]

Prints the run's manifest (`pipeline.results.manifest`: method, model, input, files, times,
versions), its counts (and the ids held by more than one record, with examples), the dead
letters broken down by stage and by error message, how many explanations each unit has,
and with `--metrics` each metric's count, mean and quantiles, over all units and per unit.
The breakdowns come from the files themselves (the dead letters, and the `units` of every
explanation record, without decoding any map), so the summary also checks that the files
hold as many explanations as the job counted.
`--no_scan` skips reading the files and prints the manifest's counts only.

Usage, from Python:

    report = summarize_output("out/expl")
    report.unit_counts.most_common(5), report.dead_letters["validate"].most_common(3)
"""

import argparse
import collections
import json
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import tensorflow as tf

from explain_lib import io as explain_io
from pipeline.commands import BAD_INPUT, count, fail
from pipeline.io.dead_letters import STAGES, read_dead_letters
from pipeline.results.ids import Duplicates
from pipeline.results.manifest import manifest_path, missing_files, read_manifest


@dataclass
class OutputReport:
    """A run's manifest and what its files hold.

    `unit_counts[u]`: explanation records that explain unit u (a record explaining K units
    counts once for each); `first_unit_counts[u]`: records whose first unit is u (the top
    prediction when the job explained the top-K); `records`: explanation records in the
    files; `dead_letters[stage]`: a Counter of error messages. The file counts are None
    when the files were not scanned.
    """

    manifest: dict
    records: Optional[int] = None
    unit_counts: Optional[collections.Counter] = None
    first_unit_counts: Optional[collections.Counter] = None
    dead_letters: Optional[Dict[str, collections.Counter]] = None
    notes: List[str] = field(default_factory=list)


def count_units(file_pattern: str):
    """(records, unit_counts, first_unit_counts) of the explanation files matching
    `file_pattern`, from each record's `units` feature alone. A file that cannot be read
    raises ValueError naming it."""
    units_only = {"units": tf.io.VarLenFeature(tf.int64)}
    counts, first = collections.Counter(), collections.Counter()
    records = 0
    try:
        files = explain_io.list_files(file_pattern)
    except FileNotFoundError:
        return 0, counts, first
    for path in files:
        dataset = tf.data.TFRecordDataset(path, compression_type=explain_io.compression_of(path))
        parsed = dataset.map(
            lambda r: tf.io.parse_single_example(r, units_only)["units"].values,
            num_parallel_calls=tf.data.AUTOTUNE)
        try:
            for units in parsed.as_numpy_iterator():
                records += 1
                counts.update(units.tolist())
                if len(units):
                    first[int(units[0])] += 1
        except tf.errors.OpError as error:
            raise explain_io.file_error(path, error) from None
    return records, counts, first


def count_dead_letters(file_pattern: str) -> Dict[str, collections.Counter]:
    """Error messages of the dead letters matching `file_pattern`, counted per stage."""
    breakdown: Dict[str, collections.Counter] = {}
    try:
        letters = read_dead_letters(file_pattern)
    except FileNotFoundError:
        return breakdown
    for letter in letters:
        breakdown.setdefault(letter.stage, collections.Counter())[letter.error] += 1
    return breakdown


def summarize_output(output: str, scan: bool = True, units: Optional[tuple] = None
                     ) -> OutputReport:
    """The manifest of the run writing `output` (its `--output` prefix or the manifest's
    path), the files it lists that are gone or changed (`notes`) and, with `scan`, the
    breakdowns read from its files.

    `units`: (records, unit_counts, first_unit_counts) as `count_units` returns them, when
    a reader that scanned the explanation files anyway counted them already (the report
    does, while it decodes the maps): the files are then not read a second time, and the
    counts are checked against the job's as they would be."""
    manifest = read_manifest(output)
    report = OutputReport(manifest, notes=missing_files(manifest))
    if not scan:
        return report
    report.records, report.unit_counts, report.first_unit_counts = (
        units if units is not None else count_units(manifest["output"]["explanations"]))
    report.dead_letters = count_dead_letters(manifest["output"]["dead_letters"])
    counts = manifest["counts"]
    if counts.get("counted"):
        if report.records != counts["explained"]:
            report.notes.append(
                f"The files hold {report.records} explanations, but the job counted "
                f"{counts['explained']} explained: some files are missing or were changed.")
        in_files = {stage: sum(c.values()) for stage, c in report.dead_letters.items()}
        if any(in_files.get(stage, 0) != n for stage, n in counts["dead_letters"].items()):
            report.notes.append(
                f"The dead-letter files hold {in_files}, but the job counted "
                f"{counts['dead_letters']}.")
    return report


def _files_line(files: dict) -> str:
    """'files:    4 explanation shards (120,000 bytes), 1 dead-letter shard (180 bytes)' (and
    ', 2 table shards (...)' with a table)."""
    parts = [f"{_plural(len(files[kind]), name)} "
             f"({sum(f['bytes'] for f in files[kind]):,} bytes)"
             for kind, name in (("explanations", "explanation shard"),
                                ("dead_letters", "dead-letter shard"),
                                ("table", "table shard")) if kind in files]
    return "files:    " + ", ".join(parts)


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def metric_lines(metrics: Optional[dict], top: int = 20) -> List[str]:
    """The manifest's metric aggregates (`pipeline.results.aggregates`) as text: per metric,
    over all units, how many scores, how many missing (no ground truth), the mean and the quantiles;
    then each metric's mean for the `top` units with the most scores."""
    aggregates = (metrics or {}).get("aggregates")
    if not aggregates:
        return []
    names = [name for name in metrics["names"] if name in aggregates]
    truth = (f" (boxes from {metrics['boxes_key']})" if metrics.get("boxes_key")
             else f" (masks from {metrics['mask_key']})" if metrics.get("mask_key") else "")
    levels = aggregates.get("quantile_levels", [])
    labels = {0: "min", 0.5: "median", 1: "max"}
    heads = [labels.get(level, f"q{round(100 * level)}") for level in levels]
    width = max(len(name) for name in names + ["metric"])
    lines = ["", f"metrics{truth}:",
             f"  {'metric':<{width}} {'scored':>7} {'missing':>7} {'mean':>9} "
             + " ".join(f"{head:>9}" for head in heads)]
    for name in names:
        overall = aggregates[name]["all"]
        quantiles = list(overall.get("quantiles") or []) + [None] * len(levels)
        lines.append(f"  {name:<{width}} {overall['count']:>7} {overall['missing']:>7} "
                     f"{_number(overall['mean']):>9} "
                     + " ".join(f"{_number(q):>9}" for q in quantiles[:len(levels)]))
    units = {}
    for name in names:
        for unit, entry in aggregates[name]["per_unit"].items():
            units[unit] = max(units.get(unit, 0), entry["count"] + entry["missing"])
    if units:
        ordered = sorted(units, key=lambda unit: (-units[unit], int(unit)))
        lines.append(f"  mean per unit ({_plural(len(units), 'unit')}, most scored first):")
        columns = [max(len(name), 9) for name in names]
        lines.append(f"  {'unit':>8} {'scores':>7} "
                     + " ".join(f"{name:>{w}}" for name, w in zip(names, columns)))
        for unit in ordered[:top]:
            means = [aggregates[name]["per_unit"].get(unit, {}).get("mean") for name in names]
            lines.append(f"  {unit:>8} {units[unit]:>7} "
                         + " ".join(f"{_number(m):>{w}}" for m, w in zip(means, columns)))
        if len(ordered) > top:
            lines.append(f"  ... {_plural(len(ordered) - top, 'more unit')}")
    return lines


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def format_report(report: OutputReport, top: int = 20, messages: int = 3) -> str:
    """The report as text: `top` units, `messages` error messages per stage."""
    m = report.manifest
    method, model, output, counts = m["method"], m["model"], m["output"], m["counts"]
    source = m["input"].get("pattern") or (
        f"TFDS {m['input'].get('tfds')} split {m['input'].get('split')}")
    size = output["map_size"]
    size = "x".join(map(str, size)) if isinstance(size, list) else size
    lines = [
        f"run:      {m['started']} -> {m['finished']} ({m['seconds']:.1f} s) on {m['runner']}",
        f"method:   {method['name']} {json.dumps(method['received'], sort_keys=True)}",
        f"explain:  {json.dumps(method['explain'], sort_keys=True)}",
        f"model:    {model['path']} (sha256 {model['sha256'][:16]}..., {model['bytes']:,} bytes)",
        f"input:    {source}",
        f"output:   {output['explanations']} (schema v{m['schema_version']}, "
        f"{output['map_encoding']} maps, {size} size)",
        *([f"table:    {output['table']}"] if output.get("table") else []),
        *([_files_line(output["files"])] if output.get("files") else []),
        "versions: " + ", ".join(f"{name} {version}" for name, version in m["versions"].items()),
        "",
    ]
    if counts.get("counted"):
        lines += [
            f"records read:          {counts['read']}",
            f"records explained:     {counts['explained']}",
            f"records dead-lettered: {counts['dead_lettered']}",
        ]
        duplicates = m.get("duplicate_ids") or {}
        if duplicates.get("ids"):
            described = Duplicates(duplicates["ids"], duplicates["records"],
                                   tuple(duplicates["examples"])).describe()
            lines.append(f"duplicate ids:         {described}")
    else:
        lines.append("The runner reported no counters: the run's counts are unknown.")
    stages = [s for s in STAGES if (counts.get("dead_letters") or {}).get(s)]
    stages += [s for s in (report.dead_letters or {}) if s not in stages]
    for stage in stages:
        counted = (counts.get("dead_letters") or {}).get(stage)
        found = report.dead_letters.get(stage) if report.dead_letters is not None else None
        number = counted if counted is not None else sum(found.values())
        lines.append(f"  {stage:<9} {number}")
        if found:
            for message, count in found.most_common(messages):
                lines.append(f"    {count:>6} x {message[:100]}")
            if len(found) > messages:
                lines.append(f"    ... {_plural(len(found) - messages, 'other message')}")
    if report.unit_counts is not None:
        lines += ["", f"explanations in the files: {report.records}"]
        if report.unit_counts:
            lines.append(f"per unit ({_plural(len(report.unit_counts), 'unit')}, "
                         "most explained first):")
            lines.append(f"  {'unit':>8} {'records':>8} {'as first unit':>14}")
            for unit, count in report.unit_counts.most_common(top):
                lines.append(f"  {unit:>8} {count:>8} {report.first_unit_counts.get(unit, 0):>14}")
            if len(report.unit_counts) > top:
                lines.append(f"  ... {_plural(len(report.unit_counts) - top, 'more unit')}")
    lines += metric_lines(m.get("metrics"), top)
    lines += [f"warning: {note}" for note in report.notes]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Print a run's manifest, counts, dead-letter breakdown and per-unit counts; exit 1 if
    the files are not those the run wrote or disagree with the job's counts, 2 if there is
    no manifest or a file cannot be read."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.summary", description=main.__doc__)
    parser.add_argument("output", help="The run's --output prefix (or its .manifest.json).")
    parser.add_argument("--top", type=count, default=20, help="Units to list.")
    parser.add_argument("--no_scan", action="store_true",
                        help="Print the manifest's counts only (and check its files are in "
                        "place); do not read the files.")
    parser.add_argument("--json", action="store_true", help="Print the manifest as JSON.")
    args = parser.parse_args(argv)
    try:
        if args.json:
            print(json.dumps(read_manifest(args.output), indent=2))
            return 0
        report = summarize_output(args.output, scan=not args.no_scan)
    except BAD_INPUT as error:
        return fail("pipeline.summary", error)
    print(f"manifest: {manifest_path(args.output)}")
    print(format_report(report, top=args.top))
    return 1 if report.notes else 0


if __name__ == "__main__":
    sys.exit(main())
