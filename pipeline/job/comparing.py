"""Two runs of the job joined by record id, as a Beam pipeline: what
`python -m pipeline.compare RUN_A RUN_B --output PREFIX` runs.

Separation of concerns:

- `CompareSettings` declares the command's options once, with `pipeline.settings.option`, as
  `Settings` declares the job's (`options_table(CompareSettings)` is their reference table).
- `check_runs` reads both runs' manifests before anything runs: a prefix that is not a job
  output (no manifest, or files it lists gone), or an output prefix that would overwrite a
  run, is one line (ValueError / OSError).
- `CompareRuns` is the pipeline: each run's explanation files (the ones its manifest lists)
  read with the job's own reader (`pipeline.io.reading.ReadTFRecords`, any Beam filesystem),
  keyed by record id (parsing the id alone), joined (`CoGroupByKey`), each pair decoded
  with the one codec (`explain_lib.io.decode_explanation`) and compared
  (`pipeline.results.comparison.compare_records`). Its outputs: the rows, written as a
  Parquet table with the job's writer (`pipeline.io.writing.WriteParquet`); the records of
  one run only, counted (Beam counters) and written as a Parquet file of ids; and the
  page's summary, combined in bounded memory (`ComparisonSummary`) and written once.

Memory: every step holds one record pair, one batch of rows or one bounded summary; what the
join itself holds is the runner's (a distributed runner's shuffle spills to disk; Beam's
in-process runner keeps the joined records' bytes in memory).

Usage:

    settings = CompareSettings(run_a="out/gradcam", run_b="out/gradients", output="out/cmp")
    with beam.Pipeline() as p:
        p | CompareRuns(settings, metrics=["deletion"])
"""

import dataclasses
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from explain_lib.io import decode_explanation
from explain_lib.io.schema import parse_example
from pipeline.io.files import write_bytes
from pipeline.io.reading import ReadTFRecords
from pipeline.io.writing import FILE_SUFFIX, WriteParquet, list_shards
from pipeline.results.comparison import (
    ONE_SIDED_SUFFIX,
    RUNS,
    TABLE_SUFFIX,
    TOP_FRACTION,
    ComparisonSummary,
    compare_records,
    comparison_schema,
    one_sided_arrow,
    one_sided_schema,
    summary_bytes,
    summary_path,
    to_arrow,
)
from pipeline.results.manifest import read_manifest
from pipeline.settings import option

COMPARE_NAMESPACE = "explain_compare"
"""The namespace of the comparison's Beam counters: `records_a`, `records_b` (records read
from each run), `compared`, `only_in_a`, `only_in_b`, `duplicates_a`, `duplicates_b`."""

ROWS_PER_TABLE = 1024
"""Compared records gathered into one `pyarrow.Table` before writing (bounded memory)."""


def _fraction(text) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value <= 1:
        raise ValueError(f"--top_fraction is a share of the pixels in (0, 1], not {text!r}.")
    return value


@dataclasses.dataclass(frozen=True)
class CompareSettings:
    """What `python -m pipeline.compare` does, as one value: the two runs (positional on the
    command line) and its options."""

    run_a: str = option(None, "the first run's --output prefix", command_line=False)
    run_b: str = option(None, "the second run's --output prefix", command_line=False)
    output: Optional[str] = option(
        None, "prefix of the comparison: `OUTPUT-SSSSS-of-NNNNN.parquet` (a row per record "
        "and unit), `OUTPUT.one_sided-SSSSS-of-NNNNN.parquet` (the ids of one run only), "
        "`OUTPUT.summary.json` and the page `OUTPUT.html`", shown="required")
    top_fraction: float = option(
        TOP_FRACTION, "share of each map's pixels (its largest) whose intersection over "
        "union the `top_iou` column measures", parse=_fraction)
    num_shards: int = option(0, "shards of the table (0: the runner decides)")

    def __post_init__(self):
        if not self.output:
            raise ValueError("Missing required option --output PREFIX.")
        if self.num_shards < 0:
            raise ValueError(f"--num_shards must be 0 (as the runner decides) or more, not "
                             f"{self.num_shards}.")
        _fraction(self.top_fraction)


@dataclasses.dataclass(frozen=True)
class Runs:
    """Both runs as their manifests describe them: each run's explanation files, and the
    metrics both runs scored (in run A's order)."""

    files: Dict[str, Tuple[str, ...]]
    manifests: Dict[str, Dict[str, Any]]
    metrics: Tuple[str, ...]


def check_runs(settings: CompareSettings) -> Runs:
    """Both runs' manifests read and their explanation shards listed (where they are now: a
    run copied elsewhere is read there): ValueError, one line naming the run, for a prefix
    that is not a job output (no manifest, a manifest that cannot be read, no shards), or
    an output prefix equal to a run's."""
    manifests, files = {}, {}
    for run, prefix in zip(RUNS, (settings.run_a, settings.run_b)):
        name = f"RUN_{run.upper()} {prefix}"
        try:
            manifest = read_manifest(prefix)
        except FileNotFoundError as error:
            raise ValueError(f"{name} is not an output of the job: {error} (give the job's "
                             "--output prefix).") from None
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        files[run] = tuple(entry["path"] for entry in list_shards(prefix))
        if not files[run]:
            raise ValueError(f"{name} holds no explanation shards ({prefix}-SSSSS-of-NNNNN"
                             f"{FILE_SUFFIX}) next to its manifest: run the job again.")
        manifests[run] = manifest
    if settings.output in (settings.run_a, settings.run_b):
        raise ValueError(f"--output {settings.output} is a run's prefix: give the comparison "
                         "a prefix of its own.")
    names = [set((manifests[run].get("metrics") or {}).get("names") or []) for run in RUNS]
    order = (manifests["a"].get("metrics") or {}).get("names") or []
    return Runs(files, manifests, tuple(name for name in order if name in names[1]))


def record_id(record: bytes) -> str:
    """The id of a serialized explanation record, as `decode_explanation` reads it (only the
    id is parsed)."""
    feature = parse_example(record, "An explanation record").features.feature
    if "id" not in feature or not feature["id"].bytes_list.value:
        raise ValueError("An explanation record without an id.")
    return feature["id"].bytes_list.value[0].decode("utf-8", errors="replace")


class _KeyById(beam.DoFn):
    """Lists of serialized records of one run -> (id, record), counted."""

    def __init__(self, run: str):
        self._run = run

    def setup(self):
        self._read = Metrics.counter(COMPARE_NAMESPACE, f"records_{self._run}")

    def process(self, records: List[bytes]):
        self._read.inc(len(records))
        for record in records:
            yield record_id(record), record


class _Compare(beam.DoFn):
    """(id, {"a": records, "b": records}) -> a `ComparedRecord` (main output) and its summary
    part (`SUMMARY`), or, for an id of one run only, (id, run, records) (`ONE_SIDED`).
    An id held by several records in a run is compared through the first of them in byte
    order; the others are counted (`duplicates_a`, `duplicates_b`)."""

    ONE_SIDED = "one_sided"
    SUMMARY = "summary"

    def __init__(self, metrics: Sequence[str], fraction: float):
        self._metrics, self._fraction = tuple(metrics), fraction

    def setup(self):
        self._counters = {name: Metrics.counter(COMPARE_NAMESPACE, name) for name in
                          ("compared", "only_in_a", "only_in_b", "duplicates_a",
                           "duplicates_b")}

    def process(self, element):
        record_id, grouped = element
        sides = {run: sorted(grouped.get(run) or ()) for run in RUNS}
        for run in RUNS:
            if not sides[run]:
                other = RUNS[1 - RUNS.index(run)]
                self._counters[f"only_in_{other}"].inc()
                yield beam.pvalue.TaggedOutput(self.ONE_SIDED,
                                               (record_id, other, len(sides[other])))
                return
        extra = tuple(len(sides[run]) - 1 for run in RUNS)
        for run, count in zip(RUNS, extra):
            if count:
                self._counters[f"duplicates_{run}"].inc(count)
        a, b = (decode_explanation(sides[run][0]) for run in RUNS)
        compared, changed = compare_records(a, b, self._metrics, self._fraction)
        self._counters["compared"].inc()
        yield compared
        yield beam.pvalue.TaggedOutput(self.SUMMARY, (compared, changed, extra))


class SummaryCombineFn(beam.CombineFn):
    """Compared records and one-sided ids -> one `ComparisonSummary` (bounded by the units
    and `pipeline.results.comparison.CHANGED`, not by the records)."""

    def __init__(self, metrics: Sequence[str]):
        self._metrics = list(metrics)

    def create_accumulator(self) -> ComparisonSummary:
        return ComparisonSummary(self._metrics)

    def add_input(self, accumulator: ComparisonSummary, item) -> ComparisonSummary:
        if isinstance(item, ComparisonSummary):
            return accumulator.merge(item)
        if len(item) == 3 and isinstance(item[1], str):  # (id, run, records): one-sided
            return accumulator.add_one_sided(item[0], item[1])
        compared, changed, extra = item
        return accumulator.add(compared, changed, extra)

    def merge_accumulators(self, accumulators: Iterable[ComparisonSummary]):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for accumulator in accumulators:
            merged.merge(accumulator)
        return merged

    def extract_output(self, accumulator: ComparisonSummary) -> ComparisonSummary:
        return accumulator


class _ToArrow(beam.DoFn):
    def __init__(self, schema):
        self._schema = schema

    def process(self, records):
        yield to_arrow(records, self._schema)


def _one_sided_tables(entries):
    yield one_sided_arrow(entries)


class CompareRuns(beam.PTransform):
    """The pipeline root -> the comparison's files (see the module docstring): the table
    `OUTPUT-SSSSS-of-NNNNN.parquet`, the one-sided ids `OUTPUT.one_sided-*.parquet` and the
    summary `OUTPUT.summary.json`."""

    def __init__(self, settings: CompareSettings, runs: Runs, label=None):
        super().__init__(label)
        self.settings, self.runs = settings, runs

    def expand(self, root):
        keyed = {}
        for run in RUNS:
            read = (root
                    | f"Files{run.upper()}" >> beam.Create(list(self.runs.files[run]))
                    | f"Read{run.upper()}" >> ReadTFRecords(strict=True))
            keyed[run] = read.records | f"Key{run.upper()}" >> beam.ParDo(_KeyById(run))
        metrics = list(self.runs.metrics)
        results = (keyed
                   | "Join" >> beam.CoGroupByKey()
                   | "Compare" >> beam.ParDo(_Compare(metrics, self.settings.top_fraction))
                   .with_outputs(_Compare.ONE_SIDED, _Compare.SUMMARY, main="rows"))
        output = self.settings.output
        schema = comparison_schema(metrics)
        (results.rows
         | "Batch" >> beam.BatchElements(min_batch_size=ROWS_PER_TABLE,
                                         max_batch_size=ROWS_PER_TABLE)
         | "ToArrow" >> beam.ParDo(_ToArrow(schema))
         | "WriteTable" >> WriteParquet(output, schema, TABLE_SUFFIX, self.settings.num_shards))
        one_sided = results[_Compare.ONE_SIDED]
        (one_sided
         | "BatchOneSided" >> beam.BatchElements(min_batch_size=ROWS_PER_TABLE,
                                                 max_batch_size=ROWS_PER_TABLE)
         | "OneSidedToArrow" >> beam.FlatMap(_one_sided_tables)
         | "WriteOneSided" >> WriteParquet(output + ONE_SIDED_SUFFIX, one_sided_schema(),
                                           TABLE_SUFFIX, 1))
        path = summary_path(output)

        def merged():
            return beam.CombineGlobally(SummaryCombineFn(metrics))

        # Each kind is combined straight from the stage that makes it (combiner lifting),
        # then the two partial summaries are joined.
        return ((results[_Compare.SUMMARY] | "Summarize" >> merged(),
                 one_sided | "SummarizeOneSided" >> merged())
                | "Both" >> beam.Flatten()
                | "JoinSummaries" >> merged()
                | "WriteSummary" >> beam.Map(
                    lambda summary: write_bytes(path, summary_bytes(summary),
                                                "application/json")))


__all__ = [
    "COMPARE_NAMESPACE",
    "CompareRuns",
    "CompareSettings",
    "Runs",
    "SummaryCombineFn",
    "check_runs",
    "record_id",
]
