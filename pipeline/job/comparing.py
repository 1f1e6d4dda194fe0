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
  joined by record id through files (below), each pair decoded with the one codec
  (`explain_lib.io.decode_explanation`) and compared
  (`pipeline.results.comparison.compare_records`). Its outputs: the rows, written as a
  Parquet table with the job's writer (`pipeline.io.writing.WriteParquet`); the records of
  one run only, counted (Beam counters) and written as a Parquet file of ids; and the
  page's summary, combined in bounded memory (`ComparisonSummary`) and written once.
- The join is a hash join in buckets, the same on every runner: `_Bucket` parses each
  record's id alone, puts the record in bucket `bucket_of(id, buckets)` (CRC-32 of the id:
  the same bucket in every process), and writes each bucket's records, framed as TFRecords
  with their ids, to files of its own under `join_folder(OUTPUT)`, emitting only
  (bucket, (run, path)); a `GroupByKey` on the bucket shuffles these paths, never a
  record; `_Compare` reads one bucket's files of both runs, groups them by id in memory
  and compares each id (`_Compare.compare_id`). `bucket_count` sizes the buckets from the
  manifests' counts (`RECORDS_PER_BUCKET`); `remove_join_folder` deletes the files, which
  `pipeline.compare` does when the command ends, whether it succeeded or not.

Memory: every step holds one record pair, one batch of rows, one bounded summary, one
bucket (about `RECORDS_PER_BUCKET` records of each run) or `BUCKET_BUFFER_BYTES` of records
waiting to be written: none grows with the record count, and the shuffle holds one small
element per bucket file, so that Beam's in-process runner (which keeps a whole shuffle in
memory) holds the comparison in memory flat in the record count too.

Usage:

    settings = CompareSettings(run_a="out/gradcam", run_b="out/gradients", output="out/cmp")
    with beam.Pipeline() as p:
        p | CompareRuns(settings, check_runs(settings))
    remove_join_folder(settings.output)            # the join's bucket files
"""

import dataclasses
import io
import re
import uuid
import zlib
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from explain_lib.io import decode_explanation
from explain_lib.io.schema import parse_example
from pipeline.io.files import read_bytes, write_bytes
from pipeline.io.framing import frame, iterate_records
from pipeline.io.reading import ReadTFRecords
from pipeline.io.writing import FILE_SUFFIX, WriteParquet, list_shards, remove_spill_files
from pipeline.results.comparison import (
    JOIN_SUFFIX,
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

RECORDS_PER_BUCKET = 4096
"""Records of one run a bucket of the join holds at most, about (the bucket count is the
larger run's records over this, at least 1): comparing a bucket holds its records of both
runs in memory at once, a few MB of explanation records."""

BUCKET_BUFFER_BYTES = 8 << 20
"""Serialized records the bucketing stage keeps per bundle and run before it writes every
bucket's records to their files (so that the files, not the stage, grow with the run)."""

BYTES_PER_RECORD = 64
"""Compressed bytes per record assumed to estimate a run's records from its shards' sizes
when its manifest did not count them: fewer than any explanation record takes, so that the
estimate errs towards more, smaller buckets."""

_SPILLED = re.compile(r"[ab]-\d{5,}-[0-9a-f]{32}\.tfrecord")  # a bucket file's name


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
    """Both runs as their manifests describe them: each run's explanation files, the
    metrics both runs scored (in run A's order) and each run's records (as its manifest
    counts them; estimated from its shards' sizes, `BYTES_PER_RECORD`, when it does not)."""

    files: Dict[str, Tuple[str, ...]]
    manifests: Dict[str, Dict[str, Any]]
    metrics: Tuple[str, ...]
    records: Dict[str, int]


def check_runs(settings: CompareSettings) -> Runs:
    """Both runs' manifests read and their explanation shards listed (where they are now: a
    run copied elsewhere is read there): ValueError, one line naming the run, for a prefix
    that is not a job output (no manifest, a manifest that cannot be read, no shards), or
    an output prefix equal to a run's (or whose join folder holds a run)."""
    manifests, files, records = {}, {}, {}
    for run, prefix in zip(RUNS, (settings.run_a, settings.run_b)):
        name = f"RUN_{run.upper()} {prefix}"
        try:
            manifest = read_manifest(prefix)
        except FileNotFoundError as error:
            raise ValueError(f"{name} is not an output of the job: {error} (give the job's "
                             "--output prefix).") from None
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        shards = list_shards(prefix)
        files[run] = tuple(entry["path"] for entry in shards)
        if not files[run]:
            raise ValueError(f"{name} holds no explanation shards ({prefix}-SSSSS-of-NNNNN"
                             f"{FILE_SUFFIX}) next to its manifest: run the job again.")
        manifests[run] = manifest
        counted = manifest["counts"]["explained"]
        records[run] = (counted if counted is not None else
                        sum(entry["bytes"] for entry in shards) // BYTES_PER_RECORD)
    folder = join_folder(settings.output)
    if settings.output in (settings.run_a, settings.run_b) or any(
            prefix.startswith(folder + "/") for prefix in (settings.run_a, settings.run_b)):
        raise ValueError(f"--output {settings.output} is a run's prefix (or its folder "
                         f"{folder} holds a run): give the comparison a prefix of its own.")
    names = [set((manifests[run].get("metrics") or {}).get("names") or []) for run in RUNS]
    order = (manifests["a"].get("metrics") or {}).get("names") or []
    return Runs(files, manifests, tuple(name for name in order if name in names[1]), records)


def bucket_count(runs: Runs) -> int:
    """The join's buckets: enough that each holds about `RECORDS_PER_BUCKET` records of the
    larger run, at least 1."""
    return max(1, -(-max(runs.records.values()) // RECORDS_PER_BUCKET))


def bucket_of(record_id: str, buckets: int) -> int:
    """The bucket of `record_id` among `buckets`: the CRC-32 of its UTF-8 bytes, modulo,
    the same in every process and on every worker (Python's `hash` of a str is salted per
    process)."""
    return zlib.crc32(record_id.encode("utf-8")) % buckets


def join_folder(output: str) -> str:
    """The folder where the comparison writing `output` keeps its join's bucket files."""
    return output + JOIN_SUFFIX


def remove_join_folder(output: str) -> List[str]:
    """Delete the bucket files of the comparison writing `output` (the files of its join
    folder named as `_Bucket` names them, and on a local disk the folder once empty: no
    other file); returns the deleted paths."""
    return remove_spill_files(join_folder(output), _SPILLED)


def record_id(record: bytes) -> str:
    """The id of a serialized explanation record, as `decode_explanation` reads it (only the
    id is parsed)."""
    feature = parse_example(record, "An explanation record").features.feature
    if "id" not in feature or not feature["id"].bytes_list.value:
        raise ValueError("An explanation record without an id.")
    return feature["id"].bytes_list.value[0].decode("utf-8", errors="replace")


class _Bucket(beam.DoFn):
    """Lists of serialized records of one run -> (bucket, (run, path)) per bucket file
    written: each record framed after its id (TFRecord framing, uncompressed) in a file of
    its bucket, one per bucket, bundle and `BUCKET_BUFFER_BYTES` of records, counted."""

    def __init__(self, run: str, folder: str, buckets: int):
        self._run, self._folder, self._buckets = run, folder, buckets

    def setup(self):
        self._read = Metrics.counter(COMPARE_NAMESPACE, f"records_{self._run}")

    def start_bundle(self):
        self._buffers: Dict[int, List[bytes]] = {}
        self._bytes = 0

    def process(self, records: List[bytes]):
        self._read.inc(len(records))
        for record in records:
            key = record_id(record)
            self._buffers.setdefault(bucket_of(key, self._buckets), []).append(
                frame(key.encode("utf-8")) + frame(record))
            self._bytes += len(record)
        if self._bytes >= BUCKET_BUFFER_BYTES:
            yield from self._write()

    def finish_bundle(self):
        for spilled in self._write():
            yield GlobalWindows.windowed_value_at_end_of_window(spilled)

    def _write(self) -> Iterator[Tuple[int, Tuple[str, str]]]:
        buffers, self._buffers, self._bytes = self._buffers, {}, 0
        for bucket, framed in sorted(buffers.items()):
            path = FileSystems.join(
                self._folder, f"{self._run}-{bucket:05d}-{uuid.uuid4().hex}.tfrecord")
            write_bytes(path, b"".join(framed))
            yield bucket, (self._run, path)


def read_bucket(spilled: Iterable[Tuple[str, str]]) -> Dict[str, Dict[str, List[bytes]]]:
    """One bucket's files, (run, path) each, as {id: {run: records}}."""
    grouped: Dict[str, Dict[str, List[bytes]]] = {}
    for run, path in spilled:
        frames = iterate_records(io.BytesIO(read_bytes(path)))
        for key, record in zip(frames, frames):
            grouped.setdefault(key.decode("utf-8"), {}).setdefault(run, []).append(record)
    return grouped


class _Compare(beam.DoFn):
    """(bucket, its files' (run, path)s) -> for each id in the bucket, in order
    (`compare_id`), a `ComparedRecord` (main output) and its summary part (`SUMMARY`), or,
    for an id of one run only, (id, run, records) (`ONE_SIDED`)."""

    ONE_SIDED = "one_sided"
    SUMMARY = "summary"

    def __init__(self, metrics: Sequence[str], fraction: float):
        self._metrics, self._fraction = tuple(metrics), fraction

    def setup(self):
        self._counters = {name: Metrics.counter(COMPARE_NAMESPACE, name) for name in
                          ("compared", "only_in_a", "only_in_b", "duplicates_a",
                           "duplicates_b")}

    def process(self, element):
        _, spilled = element
        grouped = read_bucket(spilled)
        for record_id in sorted(grouped):
            yield from self.compare_id(record_id, grouped.pop(record_id))

    def compare_id(self, record_id: str, grouped: Dict[str, List[bytes]]):
        """The outputs of one id, given its records {"a": records, "b": records}. An id held
        by several records in a run is compared through the first of them in byte order;
        the others are counted (`duplicates_a`, `duplicates_b`)."""
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


class JoinById(beam.PTransform):
    """The pipeline root -> (bucket, its files' (run, path)s), one element per bucket: both
    runs' `files` read (strictly: a damaged file fails the comparison), their records
    written to `buckets` buckets' files under `folder` (`_Bucket`), the paths grouped by
    bucket. `read_bucket` reads a bucket back as {id: {run: records}}."""

    def __init__(self, files: Dict[str, Sequence[str]], folder: str, buckets: int,
                 label=None):
        super().__init__(label)
        self.files, self.folder, self.buckets = files, folder, buckets

    def expand(self, root):
        spilled = []
        for run in RUNS:
            read = (root
                    | f"Files{run.upper()}" >> beam.Create(list(self.files[run]))
                    | f"Read{run.upper()}" >> ReadTFRecords(strict=True))
            spilled.append(read.records | f"Bucket{run.upper()}" >> beam.ParDo(
                _Bucket(run, self.folder, self.buckets)))
        return spilled | "Both" >> beam.Flatten() | "ByBucket" >> beam.GroupByKey()


class CompareRuns(beam.PTransform):
    """The pipeline root -> the comparison's files (see the module docstring): the table
    `OUTPUT-SSSSS-of-NNNNN.parquet`, the one-sided ids `OUTPUT.one_sided-*.parquet` and the
    summary `OUTPUT.summary.json`."""

    def __init__(self, settings: CompareSettings, runs: Runs, label=None):
        super().__init__(label)
        self.settings, self.runs = settings, runs

    def expand(self, root):
        output = self.settings.output
        metrics = list(self.runs.metrics)
        results = (root
                   | "Join" >> JoinById(self.runs.files, join_folder(output),
                                        bucket_count(self.runs))
                   | "Compare" >> beam.ParDo(_Compare(metrics, self.settings.top_fraction))
                   .with_outputs(_Compare.ONE_SIDED, _Compare.SUMMARY, main="rows"))
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
    "BUCKET_BUFFER_BYTES",
    "COMPARE_NAMESPACE",
    "CompareRuns",
    "CompareSettings",
    "JoinById",
    "RECORDS_PER_BUCKET",
    "Runs",
    "SummaryCombineFn",
    "bucket_count",
    "bucket_of",
    "check_runs",
    "join_folder",
    "read_bucket",
    "record_id",
    "remove_join_folder",
]
