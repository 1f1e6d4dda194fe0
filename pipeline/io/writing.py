"""The job's output prefixes: checked before the run, and holding exactly the run's own files
after it.

Separation of concerns:

- `shard_number` knows the job's own shard naming, PREFIX-SSSSS-of-NNNNN.tfrecord.gz (and
  .parquet for the table): it is the only kind of file this module ever deletes, besides
  Beam's own temporary folders.
- `check_writable` writes and deletes a probe file under a prefix, through Beam's
  `FileSystems`, so that an unwritable prefix fails at launch rather than after the work.
- `WriteShards` (TFRecord frames; its elements are lists of serialized records, as the rest
  of the job's are) and `WriteParquet` (the table's `pyarrow.Table`s) are the job's writers:
  Beam `FileBasedSink`s which, once their shards are in place, delete those an earlier run
  left under the same prefix with another shard count, and never a file outside the naming
  (Beam's own writers delete whatever matches PREFIX-*-of-NNNNN.tfrecord.gz, a sibling
  prefix's files too). They run in the job, so they work on every runner and every
  filesystem Beam knows.
- `remove_temporary_files` deletes the `beam-temp-*` folders Beam's writers keep next to a
  prefix while they run (and a probe file a killed launcher left): called when a run fails
  or is interrupted, and before each run (a run that was killed could not clean up after
  itself).
- `list_shards` lists a prefix's shards with their sizes, for the run manifest.

One run at a time per prefix: a run removes what another, concurrent run into the same
prefix is writing.
"""

import logging
import os
import re
import uuid
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.io.framing import frame

_TEMPORARY = "beam-temp-{base}-"  # FileBasedSink's folder: beam-temp-BASENAME-UUIDHEX
_PROBE = ".write-probe-"  # check_writable's file: PREFIX.write-probe-UUIDHEX

FILE_SUFFIX = ".tfrecord.gz"
"""Suffix of every file the job writes (GZIP-compressed TFRecords)."""


def shard_number(path: str, prefix: str, suffix: str = FILE_SUFFIX
                 ) -> Optional[Tuple[int, int]]:
    """(shard, shards) when the name of `path` (a file in `prefix`'s folder) is a shard's of
    `prefix` in the job's own naming, PREFIX-SSSSS-of-NNNNN.tfrecord.gz (or another
    `suffix`: the table's .parquet); else None."""
    base = re.escape(FileSystems.split(prefix)[1])
    found = re.fullmatch(base + r"-(\d{5,})-of-(\d{5,})" + re.escape(suffix),
                         FileSystems.split(path)[1])
    return (int(found.group(1)), int(found.group(2))) if found else None


def _matching(pattern: str) -> List[Tuple[str, int]]:
    """(path, size) of the files matching `pattern`; none when its folder does not exist."""
    return [(m.path, m.size_in_bytes) for m in FileSystems.match([pattern])[0].metadata_list]


def list_shards(prefix: str, suffix: str = FILE_SUFFIX) -> List[Dict[str, object]]:
    """The job's shards under `prefix` (ending in `suffix`), sorted:
    [{"path": ..., "bytes": ...}, ...]."""
    return [{"path": path, "bytes": size}
            for path, size in sorted(_matching(f"{prefix}-*-of-*{suffix}"))
            if shard_number(path, prefix, suffix)]


def check_writable(prefix: str, option: str) -> None:
    """Write and delete a probe file next to `prefix`'s files; raises OSError with one line
    naming the option and the path when that fails (a parent that is a file, a read-only
    place, a missing bucket)."""
    probe = f"{prefix}{_PROBE}{uuid.uuid4().hex}"
    writer = None
    try:
        writer = FileSystems.create(probe, compression_type=CompressionTypes.UNCOMPRESSED)
        writer.write(b"probe")
        writer.close()
        FileSystems.delete([probe])
    except Exception as error:  # noqa: BLE001 - any failure means the job could not write there
        _abandon(writer)
        reason = " ".join(str(error).split())
        raise OSError(f"--{option} {prefix} cannot be written ({type(error).__name__}: "
                      f"{reason[:300]}).") from None


def _abandon(writer) -> None:
    """End a writer whose close failed without writing: otherwise it closes again, uploading
    again, when it is collected (a Cloud Storage writer retries that for minutes)."""
    terminate = getattr(writer, "terminate", None)  # google-cloud-storage's BlobWriter
    try:
        if terminate is not None:
            terminate()
        elif writer is not None and not writer.closed:
            writer.close()
    except Exception:  # noqa: BLE001 - the probe has failed already; this only tidies up
        pass


def temporary_folders(prefix: str) -> List[str]:
    """The `beam-temp-*` folders of `prefix`'s writers, left by runs that did not finish.
    Found through the files they hold (any filesystem), and, on local disks, also empty."""
    directory, base = FileSystems.split(prefix)
    start = _TEMPORARY.format(base=base)
    name = re.compile(re.escape(start) + r"[0-9a-f]{32}")
    folders = set()
    for path, _ in _matching(FileSystems.join(directory, start + "*", "*")):
        folder = FileSystems.split(path)[0]
        if name.fullmatch(FileSystems.split(folder)[1]):
            folders.add(folder)
    if FileSystems.get_scheme(prefix) is None and os.path.isdir(directory or "."):
        folders.update(os.path.join(directory, entry) for entry in os.listdir(directory or ".")
                       if name.fullmatch(entry))
    return sorted(folders)


def remove_temporary_files(prefixes: Iterable[str]) -> List[str]:
    """Delete the `beam-temp-*` folders of `prefixes` (see `temporary_folders`), and the
    probe files of launchers killed while probing; returns them."""
    removed = []
    for prefix in prefixes:
        probes = [path for path, _ in _matching(f"{prefix}{_PROBE}*")
                  if re.fullmatch(re.escape(FileSystems.split(prefix)[1] + _PROBE) + "[0-9a-f]{32}",
                                  FileSystems.split(path)[1])]
        if probes:
            FileSystems.delete(probes)
            removed += probes
        for folder in temporary_folders(prefix):
            files = [path for path, _ in _matching(FileSystems.join(folder, "*"))]
            if files:
                FileSystems.delete(files)
            if FileSystems.exists(folder):  # a folder of its own on filesystems that have them
                FileSystems.delete([folder])
            removed.append(folder)
    if removed:
        logging.info("Removed temporary files of unfinished runs: %s", ", ".join(removed))
    return removed


def remove_spill_files(folder: str, name: "re.Pattern[str]") -> List[str]:
    """Delete the files directly in `folder` whose names `name` fully matches (a command's
    own spill files, never a file it did not name), then `folder` itself where the
    filesystem has folders (a local disk) and it is left empty; returns the deleted
    paths."""
    doomed = [path for path, _ in _matching(FileSystems.join(folder, "*"))
              if name.fullmatch(FileSystems.split(path)[1])]
    if doomed:
        FileSystems.delete(doomed)
        logging.info("Removed %d spilled files from %s.", len(doomed), folder)
    if FileSystems.get_scheme(folder) is None and os.path.isdir(folder) and not os.listdir(
            folder):
        os.rmdir(folder)
    return doomed


def remove_shards(prefix: str, keep=lambda shards: False, suffix: str = FILE_SUFFIX
                  ) -> List[str]:
    """Delete `prefix`'s shards (ending in `suffix`) but those of the shard counts
    `keep(count)` keeps; returns the deleted paths."""
    doomed = [entry["path"] for entry in list_shards(prefix, suffix)
              if not keep(shard_number(entry["path"], prefix, suffix)[1])]
    if doomed:
        FileSystems.delete(doomed)
    return doomed


class _OwnShardsSink(FileBasedSink):
    """Beam's file sink, writing PREFIX-SSSSS-of-NNNNN`suffix` and deleting only the prefix's
    own shards: those of its shard count before its shards are renamed into place (Beam's
    `FileBasedSink.pre_finalize` deletes whatever matches PREFIX-*-of-NNNNN`suffix`: a
    sibling prefix's out/run-2-00000-of-00001.tfrecord.gz for out/run, out/a.table-v2-...
    for out/a.table), and those of any other count once they are in place (an earlier
    run's). Subclasses say how a file is written (`open`, `write_record`, `close`)."""

    def __init__(self, prefix: str, suffix: str, num_shards: int, **kwargs):
        super().__init__(prefix, file_name_suffix=suffix, num_shards=num_shards, **kwargs)
        self._prefix, self._suffix = prefix, suffix

    def pre_finalize(self, init_result, writer_results):
        count = len(list(writer_results))
        remove_shards(self._prefix, keep=lambda shards: shards != count, suffix=self._suffix)

    def finalize_write(self, init_result, writer_results, pre_finalize_results):
        writer_results = list(writer_results)
        written = list(super().finalize_write(init_result, writer_results,
                                              pre_finalize_results))
        older = remove_shards(self._prefix, keep=lambda shards: shards == len(writer_results),
                              suffix=self._suffix)
        if older:
            logging.info("Removed %d shards of an earlier run under %s: %s", len(older),
                         self._prefix, ", ".join(older))
        yield from written


class _TFRecordSink(_OwnShardsSink):
    """GZIP-compressed TFRecord shards PREFIX-SSSSS-of-NNNNN.tfrecord.gz, of lists of
    serialized records (the job's elements), each list written in one call."""

    def __init__(self, prefix: str, num_shards: int):
        super().__init__(prefix, FILE_SUFFIX, num_shards, coder=coders.BytesCoder(),
                         compression_type=CompressionTypes.GZIP)

    def write_record(self, file_handle, value):
        file_handle.write(b"".join(map(frame, value)))


class _ParquetFile(NamedTuple):
    handle: Any
    writer: Any


class _ParquetSink(_OwnShardsSink):
    """Parquet shards PREFIX-SSSSS-of-NNNNN.parquet of `pyarrow.Table`s of one `schema`
    (compressed per column chunk with `codec`, as Beam's own Parquet sink writes them)."""

    def __init__(self, prefix: str, suffix: str, num_shards: int, schema, codec: str):
        super().__init__(prefix, suffix, num_shards, coder=None, mime_type="application/x-parquet",
                         compression_type=CompressionTypes.UNCOMPRESSED)
        self._schema, self._codec = schema, codec

    def open(self, temp_path):
        import pyarrow.parquet as pq

        handle = super().open(temp_path)
        return _ParquetFile(handle, pq.ParquetWriter(handle, self._schema,
                                                     compression=self._codec))

    def write_record(self, file_handle, value):
        file_handle.writer.write_table(value)

    def close(self, file_handle):
        file_handle.writer.close()
        super().close(file_handle.handle)


class WriteShards(beam.PTransform):
    """Writes lists of serialized records (the job's elements) as GZIP-compressed TFRecord
    shards PREFIX-SSSSS-of-NNNNN.tfrecord.gz (`num_shards` of them, 0: as the runner
    decides), deleting no file but the prefix's own earlier shards (see `_OwnShardsSink`).
    Returns the paths written."""

    def __init__(self, prefix: str, num_shards: int = 0, label=None):
        super().__init__(label)
        self._sink = _TFRecordSink(prefix, num_shards)

    def expand(self, records):
        return records | "Write" >> beam.io.Write(self._sink)


class WriteParquet(beam.PTransform):
    """Writes `pyarrow.Table`s of `schema` as Parquet shards PREFIX-SSSSS-of-NNNNN`suffix`
    (`codec`-compressed, `num_shards` of them, 0: as the runner decides), deleting no file
    but the prefix's own earlier shards (see `_OwnShardsSink`). Returns the paths written."""

    def __init__(self, prefix: str, schema, suffix: str, num_shards: int = 0,
                 codec: str = "snappy", label=None):
        super().__init__(label)
        self._sink = _ParquetSink(prefix, suffix, num_shards, schema, codec)

    def expand(self, tables):
        return tables | "Write" >> beam.io.Write(self._sink)


__all__ = [
    "WriteParquet",
    "WriteShards",
    "check_writable",
    "list_shards",
    "remove_shards",
    "remove_spill_files",
    "remove_temporary_files",
    "shard_number",
    "temporary_folders",
]
