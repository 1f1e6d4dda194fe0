"""Reading TFRecord files one file at a time, so that a damaged file costs only its damaged
part.

Beam's `ReadFromTFRecord` fails the whole job at the first bad frame of any file, with a hex
dump of the frame and without the file's name. A TFRecord file (or a gzip stream) cannot be
split anyway, so reading each file whole in one DoFn loses no parallelism, and lets the job
keep every record before the damage and say exactly where the damage is.

Separation of concerns:

- `pipeline.io.framing.iterate_records` parses the TFRecord framing of an open stream, one
  record in memory at a time, and raises `DamagedFile`, with the byte offset of the first
  record it cannot read, on a bad checksum, a truncated record or a decompression error.
- `open_records_file` opens a file on any Beam filesystem, retrying transient errors
  (`pipeline.io.retry`), and decompresses it by its suffix with the standard library's
  streaming readers, which notice a truncated or corrupt gzip, bzip2 or xz stream (Beam's
  own decompressing reader ends quietly where a truncated stream ends).
- `ReadFileRecords`, the DoFn of stage "read": a file's records, in lists (the job's
  elements, so that Beam's per-element work is paid per list), then at most one dead
  letter for the unreadable rest, naming the file and the offset; with `strict`, a
  `DamagedFileError` that fails the job instead.
- `ReadTFRecords`, the PTransform: file patterns -> `fileio.MatchAll` -> Reshuffle (the files,
  not their records, spread over the workers) -> `ReadFileRecords`.

Usage, inside any Beam pipeline:

    read = p | beam.Create(["data/*.tfrecord*"]) | ReadTFRecords()
    read.records, read.dead_letters    # lists of serialized records, of dead letters
"""

import bz2
import contextlib
import gzip
import lzma
import os
from typing import BinaryIO, Iterator, NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from pipeline.counters import METRICS_NAMESPACE, READ_COUNTER
from pipeline.io.dead_letters import DEAD_LETTERS, CountedStage, StageError
from pipeline.io.framing import DamagedFile, iterate_records
from pipeline.io.retry import Retry, is_transient

_STREAMING = {
    CompressionTypes.GZIP: lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    CompressionTypes.BZIP2: lambda raw: bz2.BZ2File(raw, "rb"),
    CompressionTypes.LZMA: lambda raw: lzma.LZMAFile(raw, "rb"),
}
"""Decompressing readers that raise on a truncated or corrupt stream, by Beam's name of the
compression a file's suffix implies. Other compressions Beam knows (deflate, zstd) are
decompressed by Beam."""


class DamagedFileError(RuntimeError):
    """A damaged input file under --strict_read: the job stops, naming the file."""


@contextlib.contextmanager
def open_records_file(path: str, retry: Retry = Retry()) -> Iterator[BinaryIO]:
    """`path` (any Beam filesystem) opened for `iterate_records`, decompressed by its suffix
    (.gz, .bz2, .xz/.lzma, .deflate, .zst). Transient errors of the open are retried; a
    permanent one (not found, permission denied) is a `DamagedFile` at offset 0."""
    compression = CompressionTypes.detect_compression_type(path)
    streaming = _STREAMING.get(compression)
    mode = CompressionTypes.UNCOMPRESSED if streaming else compression
    try:
        raw = retry.call(lambda: FileSystems.open(path, compression_type=mode),
                         f"Opening {path}")
    except Exception as error:  # noqa: BLE001 - sorted below
        if is_transient(error):
            raise
        raise DamagedFile(0, f"cannot open it ({type(error).__name__}: {error})") from None
    with raw, (streaming(raw) if streaming else contextlib.nullcontext(raw)) as stream:
        yield stream


RECORDS_PER_LIST = 512
"""Records per list `ReadTFRecords` emits by default: what one call of the job's model
handler takes with its default options (`RecordsHandler.records_per_call`, which takes at
least this many). Beam's own work is paid once per list, and the handler's batches in flight
drain once per call: 512 records (16 batches of 32) a call fed the null model of
`benchmarks/feed.py` 2 to 8% more records/s than 64 (`benchmarks/RESULTS.md`)."""


class ReadFileRecords(CountedStage):
    """Stage read: files (`FileMetadata` or paths) -> lists of `records_per_list` of their
    serialized records (the last list of a bundle may hold fewer; records of several files
    share lists, so that small files still make full ones). The unreadable rest of a
    damaged file becomes one dead letter (counted as one record read, emitted as a list of
    one), whose error names the file, the byte offset and the records kept before it; with
    `strict`, the job fails with a `DamagedFileError` naming the same."""

    def __init__(self, strict: bool = False, retry: Retry = Retry(),
                 records_per_list: int = RECORDS_PER_LIST):
        if records_per_list < 1:
            raise ValueError(f"records_per_list must be at least 1, got {records_per_list}.")
        self._strict = strict
        self._retry = retry
        self._records_per_list = records_per_list

    def setup(self):
        super().setup()
        self._read = Metrics.counter(METRICS_NAMESPACE, READ_COUNTER)

    def start_bundle(self):
        self._records = []

    def process(self, file):
        path = getattr(file, "path", file)
        try:
            with open_records_file(path, self._retry) as stream:
                for record in iterate_records(stream):
                    self._records.append(record)
                    if len(self._records) == self._records_per_list:
                        yield self._records
                        self._records = []
        except DamagedFile as damage:
            where = (" of the decompressed stream"
                     if CompressionTypes.detect_compression_type(path)
                     != CompressionTypes.UNCOMPRESSED else "")
            message = (f"{path}: unreadable from byte {damage.offset}{where} ({damage.reason}); "
                       f"the {damage.records_before} records before it were read")
            if self._strict:
                raise DamagedFileError(message) from None
            self._read.inc()
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTERS, [self.dead_letter(b"", StageError("read", message))])

    def finish_bundle(self):
        if self._records:
            yield GlobalWindows.windowed_value_at_end_of_window(self._records)
            self._records = []


class ReadResult(NamedTuple):
    """The outputs of `ReadTFRecords`: lists of serialized records, and lists of the dead
    letters of damaged files."""

    records: beam.PCollection
    dead_letters: beam.PCollection


class ReadTFRecords(beam.PTransform):
    """File patterns (or paths) -> the records of every matching TFRecord file, in lists of
    `records_per_list` (what `pipeline.Explain` takes), each file read whole by one worker
    (see the module docstring), and dead letters for damaged files.

    Args:
        strict: fail the job on a damaged file instead of dead-lettering its rest.
        retry: how opening a file is retried on transient errors.
        records_per_list: records per emitted list (the job passes its model handler's
            `records_per_call`).
    """

    def __init__(self, strict: bool = False, retry: Retry = Retry(),
                 records_per_list: int = RECORDS_PER_LIST, label=None):
        super().__init__(label)
        self._read = ReadFileRecords(strict, retry, records_per_list)

    def expand(self, patterns):
        records, dead_letters = (
            patterns
            | "MatchFiles" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW_IF_WILDCARD)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadFiles" >> beam.ParDo(self._read).with_outputs(DEAD_LETTERS, main="records")
        )
        return ReadResult(records, dead_letters)


def check_input(pattern: str) -> None:
    """Fail at launch, naming the pattern, when `--input` matches no file (a folder is not
    one: Beam's local filesystem matches a folder's path as if it were a file)."""
    matched = FileSystems.match([pattern])[0].metadata_list
    if not any(not _is_folder(m.path) for m in matched):
        folder = " (it is a folder: give a pattern of its files, e.g. FOLDER/*)" if any(
            _is_folder(m.path) for m in matched) else ""
        raise FileNotFoundError(f"No files found matching --input {pattern}{folder}.")


def _is_folder(path: str) -> bool:
    return FileSystems.get_scheme(path) is None and os.path.isdir(path)


def first_records(patterns, limit: int = 1000) -> Iterator[bytes]:
    """The first `limit` records of the files matching `patterns` (any Beam filesystem), in
    file order, for what the launcher must learn from the data itself (the kinds of the
    features `--copy_features` copies); the damaged rest of a file is skipped."""
    count = 0
    for match in FileSystems.match(list(patterns)):
        for path in sorted(m.path for m in match.metadata_list):
            try:
                with open_records_file(path) as stream:
                    for record in iterate_records(stream):
                        yield record
                        count += 1
                        if count >= limit:
                            return
            except DamagedFile:
                continue


__all__ = [
    "DamagedFileError",
    "first_records",
    "ReadFileRecords",
    "ReadResult",
    "ReadTFRecords",
    "RECORDS_PER_LIST",
    "check_input",
    "open_records_file",
]
