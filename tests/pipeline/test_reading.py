"""Reading input files one at a time (`pipeline.io.reading`): every kind of damage to a TFRecord
file or its gzip stream found at the right record and byte offset; in a real job, the records
before the damage explained, the rest one dead letter naming the file and the offset, the
other files read whole; --strict_read failing with one line; opening files retried on
transient errors only."""

import logging
import os
import re
import subprocess
import sys
import zlib

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipeline import demo
from pipeline.io.dead_letters import decode_dead_letter
from pipeline.io.framing import DamagedFile, iterate_records
from pipeline.io.reading import ReadFileRecords, ReadTFRecords, open_records_file
from pipeline.io.retry import Retry
from pipeline.job.launcher import local_runner
from tests.pipeline.conftest import FlakyFileSystem, run_job, write

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _records(count: int, name: str = "r", shapes=None):
    if shapes is None:
        return [demo.make_example(b"\x89PNG\r\n\x1a\n fake", 1, f"{name}{i}" * (i + 1))
                for i in range(count)]
    images, labels = shapes
    return [demo.make_example(demo.encode_image(images[i % len(images)], "png"),
                              int(labels[i % len(images)]), f"{name}{i}") for i in range(count)]


def _offsets(records):
    """Byte offset of each framed record in an uncompressed TFRecord file, and of its end."""
    offsets = [0]
    for record in records:
        offsets.append(offsets[-1] + len(record) + 16)
    return offsets


def _gzip_cut_after(framed: bytes) -> bytes:
    """A gzip stream whose content is `framed` but which stops there, without its end (no
    final block, no trailer): a file cut while it was being copied, at a record boundary."""
    compressor = zlib.compressobj(wbits=31)
    return compressor.compress(framed) + compressor.flush(zlib.Z_FULL_FLUSH)


def _read(path):
    """(records read, the DamagedFile or None)."""
    found = []
    try:
        with open_records_file(path) as stream:
            for record in iterate_records(stream):
                found.append(record)
    except DamagedFile as damage:
        return found, damage
    return found, None


def _damage(tmp_path, kind):
    """A file of 5 records damaged in the way `kind` says; (path, expected records kept,
    expected offset, expected reason)."""
    records = _records(5)
    offsets = _offsets(records)
    plain = open(write(tmp_path, "plain", records), "rb").read()
    data = bytearray(plain)
    name, kept = "damaged.tfrecord", 2
    if kind == "length checksum":
        data[offsets[2] + 1] ^= 0x01
        reason = "bad checksum of the record length"
    elif kind == "data checksum":
        data[offsets[2] + 12 + 3] ^= 0x01
        reason = "bad checksum of the record data"
    elif kind == "truncated header":
        data = data[:offsets[2] + 5]
        reason = "the file ends inside a record header (5 of 12 bytes)"
    elif kind == "truncated data":
        data = data[:offsets[3] - 7]
        reason = f"the file ends inside a record of {len(records[2])} bytes"
    elif kind == "gzip cut at a record boundary":
        name, data = "damaged.tfrecord.gz", _gzip_cut_after(plain[:offsets[2]])
        reason = "EOFError: Compressed file ended before the end-of-stream marker was reached"
    elif kind == "gzip cut inside a record":
        name = "damaged.tfrecord.gz"
        data = _gzip_cut_after(plain[:offsets[2] + 30])
        reason = "EOFError: Compressed file ended before the end-of-stream marker was reached"
    elif kind == "gzip checksum":
        name = "damaged.tfrecord.gz"
        whole = zlib.compressobj(wbits=31)
        data = bytearray(whole.compress(plain) + whole.flush())
        data[-5] ^= 0x01  # the trailer's CRC-32 of the content
        kept, reason = 5, "BadGzipFile: CRC check failed"
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return str(path), records[:kept], offsets[kept], reason


@pytest.mark.parametrize("kind", [
    "length checksum", "data checksum", "truncated header", "truncated data",
    "gzip cut at a record boundary", "gzip cut inside a record", "gzip checksum",
])
def test_damage_is_found_at_its_record_and_offset(tmp_path, kind):
    path, kept, offset, reason = _damage(tmp_path, kind)
    found, damage = _read(path)
    assert found == kept
    assert (damage.offset, damage.records_before) == (offset, len(kept))
    assert damage.reason.startswith(reason), damage.reason


def test_sound_files_read_whole_in_every_compression(tmp_path):
    records = _records(7)
    assert _read(write(tmp_path, "plain", records)) == (records, None)
    assert _read(write(tmp_path, "packed", records, "GZIP")) == (records, None)
    assert _read(write(tmp_path, "empty", [])) == ([], None)


def test_damaged_files_become_one_dead_letter_each_and_the_others_are_explained(
    tmp_path, model_path, shapes
):
    records = _records(12, "f", shapes)
    good = records[:4]  # read through flakyfs, whose first open fails: retried
    write(tmp_path, "in-0", good)
    damaged = records[4:9]
    path_1 = str(tmp_path / "in-1.tfrecord")  # its first 2 records are read
    data = bytearray(open(write(tmp_path, "whole", damaged), "rb").read())
    offset_1 = _offsets(damaged)[2]
    data[offset_1 + 20] ^= 0xFF
    open(path_1, "wb").write(bytes(data))
    cut = records[9:]  # a gzip file cut at a record boundary: 2 of 3 records kept
    framed = open(write(tmp_path, "cut", cut), "rb").read()
    path_2 = str(tmp_path / "in-2.tfrecord.gz")
    open(path_2, "wb").write(_gzip_cut_after(framed[:_offsets(cut)[2]]))
    flaky = f"flakyfs://{tmp_path}/in-0.tfrecord"
    FlakyFileSystem.FAILURES[flaky] = [ConnectionResetError(104, "Connection reset by peer")]

    job = run_job(tmp_path, f"flakyfs://{tmp_path}/in-*", model_path, "--units_key", "label")

    expected_ids = sorted(f"f{i}" for i in (0, 1, 2, 3, 4, 5, 9, 10))
    assert sorted(job.explanations) == expected_ids
    assert FlakyFileSystem.OPENS[flaky] == 2
    letters = sorted(job.dead_letters, key=lambda letter: letter.error)
    assert [(letter.stage, letter.record, letter.id) for letter in letters] == [
        ("read", b"", ""), ("read", b"", "")]
    assert letters[0].error == (
        f"flakyfs://{path_1}: unreadable from byte {offset_1} (bad checksum of the record "
        "data); the 2 records before it were read")
    assert letters[1].error == (
        f"flakyfs://{path_2}: unreadable from byte {_offsets(cut)[2]} of the decompressed "
        "stream (EOFError: Compressed file ended before the end-of-stream marker was "
        "reached); the 2 records before it were read")
    summary = job.summary
    assert (summary.read, summary.explained, summary.dead_lettered) == (10, 8, 2)
    assert summary.dead_letters["read"] == 2 and summary.balanced


@pytest.mark.slow
def test_strict_read_fails_with_one_line_naming_the_file(tmp_path, model_path, shapes):
    records = _records(6, "s", shapes)
    write(tmp_path, "in-0", records[:3])
    data = bytearray(open(write(tmp_path, "whole", records[3:]), "rb").read())
    offset = _offsets(records[3:])[1]
    data[offset + 30] ^= 0xFF
    damaged = tmp_path / "in-1.tfrecord"
    damaged.write_bytes(bytes(data))
    output = tmp_path / "out" / "expl"
    process = subprocess.run(
        [sys.executable, "-m", "pipeline", "--input", str(tmp_path / "in-*"), "--output",
         str(output), "--model", model_path, "--strict_read"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert process.returncode == 1
    ours = [line for line in process.stderr.splitlines() if line.startswith("explain-pipeline")]
    assert ours == [
        f"explain-pipeline: the job failed: DamagedFileError: {damaged}: unreadable from byte "
        f"{offset} (bad checksum of the record data); the 1 records before it were read"]
    assert "Traceback" not in process.stderr
    assert not re.search(r"[0-9a-f]{64}", process.stderr)  # no hex dump of the frame
    assert os.listdir(tmp_path / "out") == []  # no shards, no temporary folders


@pytest.mark.slow
def test_opening_is_retried_on_transient_errors_only(tmp_path, caplog):
    records = _records(3)
    for name in ("slow", "locked", "down"):
        write(tmp_path, name, records)
    slow, locked, down = (f"flakyfs://{tmp_path}/{name}.tfrecord"
                          for name in ("slow", "locked", "down"))
    FlakyFileSystem.FAILURES.update({
        slow: [TimeoutError("timed out"), ConnectionResetError(104, "reset")],
        locked: [PermissionError(13, "Permission denied")],
        down: [ConnectionRefusedError(111, "refused")] * 3,
    })
    retry = Retry(attempts=3, initial_delay=0.01)
    caplog.set_level(logging.WARNING)
    with beam.Pipeline(runner=local_runner(PipelineOptions())) as p:
        read = p | beam.Create([slow, locked]) | ReadTFRecords(retry=retry)
        assert_that(read.records | "Records" >> beam.FlatMap(lambda records: records),
                    equal_to(records), label="records")
        assert_that(read.dead_letters | "Letters" >> beam.FlatMap(lambda letters: letters)
                    | beam.Map(lambda r: decode_dead_letter(r).error),
                    equal_to([f"{locked}: unreadable from byte 0 (cannot open it "
                              "(PermissionError: [Errno 13] Permission denied)); the 0 "
                              "records before it were read"]), label="dead_letters")
    assert FlakyFileSystem.OPENS[slow] == 3 and FlakyFileSystem.OPENS[locked] == 1
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retries == [
        f"Opening {slow} failed (attempt 1 of 3, TimeoutError: timed out); retrying in 0.0 s.",
        f"Opening {slow} failed (attempt 2 of 3, ConnectionResetError: [Errno 104] reset); "
        "retrying in 0.0 s.",
    ]
    # Still failing after the last attempt: the job fails (the runner may retry the bundle)
    # rather than dead-lettering a file that is sound.
    with pytest.raises(Exception, match="refused"):
        with beam.Pipeline(runner=local_runner(PipelineOptions())) as p:
            p | beam.Create([down]) | ReadTFRecords(retry=retry)
    assert FlakyFileSystem.OPENS[down] == 3


def test_files_are_read_into_lists_of_records_that_small_files_share(tmp_path):
    files = [write(tmp_path, f"part-{n}", _records(count, f"f{n}-"))
             for n, count in enumerate([4, 3, 2])]
    damaged = tmp_path / "damaged.tfrecord"
    damaged.write_bytes(open(files[2], "rb").read()[:-3])  # its second record cut
    read = ReadFileRecords(records_per_list=3)
    read.setup()
    read.start_bundle()
    emitted = [list(read.process(path)) for path in [*files, str(damaged)]]
    emitted.append([wv.value for wv in read.finish_bundle()])
    records = [_records(count, f"f{n}-") for n, count in enumerate([4, 3, 2])]
    # Full lists as soon as they fill, across files; the bundle's rest at its end.
    assert emitted[:3] == [[records[0][:3]], [[records[0][3], *records[1][:2]]],
                           [[records[1][2], *records[2]]]]
    letters = [e for e in emitted[3] if isinstance(e, beam.pvalue.TaggedOutput)]
    assert len(letters) == 1 and letters[0].tag == "dead_letters"
    assert [decode_dead_letter(r).stage for r in letters[0].value] == ["read"]
    assert emitted[4] == [[records[2][0]]]  # the damaged file's first record
    with pytest.raises(ValueError, match="records_per_list must be at least 1"):
        ReadFileRecords(records_per_list=0)
