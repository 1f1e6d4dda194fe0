"""A run leaves exactly its own outputs (`pipeline.io.writing`): a rerun with another shard count
removes the older shards and nothing else, its records are byte-identical (and a random
method's, with the same seed), an unwritable prefix fails before anything runs, and neither
an interrupted nor a killed run leaves temporary files behind for long."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from explain_lib import io as explain_io
from pipeline import demo, summary
from pipeline.io.dead_letters import read_dead_letters
from pipeline.job.launcher import main, run
from pipeline.results import manifest
from tests.pipeline.conftest import run_job, write

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shapes):
    images, labels = shapes
    directory = tmp_path_factory.mktemp("outputs")
    records = [demo.make_example(demo.encode_image(image, "png"), int(label), f"o{i}")
               for i, (image, label) in enumerate(zip(images[:10], labels[:10]))]
    return write(directory, "in", records + [b"junk"])


def _raw_records(output: str):
    return sorted(explain_io.iterate_records(output + "-*"))


# The 10 images in full batches of 5 whatever the order the shuffle gives them: float
# arithmetic may differ in its last bits between batch sizes, not between batch neighbours.
BATCH = ("--batch_size", "5")


@pytest.mark.slow
def test_a_rerun_leaves_only_its_own_shards_with_identical_records(tmp_path, model_path, inputs):
    first = run_job(tmp_path, inputs, model_path, "--num_shards", "3", "--units_key", "label",
                    *BATCH)
    out = tmp_path / "out"
    assert len(glob.glob(str(out / "expl-*-of-00003.tfrecord.gz"))) == 3
    first_records = _raw_records(first.output)
    # An older run's dead letters in 2 shards, and files that are not the job's shards.
    (out / "expl.dead_letters-00001-of-00002.tfrecord.gz").write_bytes(b"older")
    others = ["expl-notes.txt", "expl-00000-of-00003.tfrecord.gz.bak", "other-00000-of-00001"
              ".tfrecord.gz", "expl-x-00000-of-00001.tfrecord.gz", "expl-0-of-1.tfrecord.gz"]
    for name in others:
        (out / name).write_bytes(b"keep me")

    run(["--input", inputs, "--output", first.output, "--model", model_path, "--num_shards",
         "1", "--units_key", "label", *BATCH])

    assert sorted(os.listdir(out)) == sorted([
        "expl-00000-of-00001.tfrecord.gz", "expl.dead_letters-00000-of-00001.tfrecord.gz",
        "expl.manifest.json", "expl.overview.npz", *others])
    shards = first.output + "-?????-of-?????.tfrecord.gz"
    # Through the README's reader: each record once.
    ids = [row["id"] for row in explain_io.read_explanations(shards).as_numpy_iterator()]
    assert sorted(ids) == sorted(f"o{i}".encode() for i in range(10))
    # A deterministic method gives the same bytes on a rerun, sharded otherwise or not.
    assert sorted(explain_io.iterate_records(shards)) == first_records
    assert len(first_records) == 10
    assert [letter.record for letter in read_dead_letters(f"{first.output}.dead_letters-*")] == [
        b"junk"]
    files = manifest.read_manifest(first.output)["output"]["files"]
    assert files == {
        "explanations": [{"path": f"{out}/expl-00000-of-00001.tfrecord.gz",
                          "bytes": os.path.getsize(out / "expl-00000-of-00001.tfrecord.gz")}],
        "dead_letters": [{"path": f"{out}/expl.dead_letters-00000-of-00001.tfrecord.gz",
                          "bytes": os.path.getsize(
                              out / "expl.dead_letters-00000-of-00001.tfrecord.gz")}],
    }


def _contents(directory) -> dict:
    """Every file under `directory`: relative path -> bytes."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as source:
                found[os.path.relpath(path, directory)] = source.read()
    return found


@pytest.mark.slow
def test_a_rerun_never_touches_a_sibling_prefixs_files(tmp_path, model_path, inputs, capsys):
    """Run A (out/a, its table out/a.table) and run B (out/a.b, its table out/a.table-v2),
    each with metrics, so that every kind of output exists; rerunning A with another shard
    count must leave every file of B as it was (Beam's own sinks delete PREFIX-*-of-NNNNN
    at finalisation: out/a.table-v2-00000-of-00001.parquet for out/a.table)."""
    out = tmp_path / "out"
    common = ["--input", inputs, "--model", model_path, "--units_key", "label",
              "--metrics", "deletion", "--metric_params", '{"deletion": {"n_steps": 4}}',
              *BATCH]
    a = ["--output", str(out / "a"), "--table", str(out / "a.table"), *common]
    run([*a, "--num_shards", "1"])
    run(["--output", str(out / "a.b"), "--table", str(out / "a.table-v2"), *common,
         "--num_shards", "1"])
    theirs = {name: data for name, data in _contents(out).items()
              if name.startswith(("a.b", "a.table-v2"))}
    assert sorted(theirs) == [
        "a.b-00000-of-00001.tfrecord.gz", "a.b.dead_letters-00000-of-00001.tfrecord.gz",
        "a.b.manifest.json", "a.b.overview.npz", "a.table-v2-00000-of-00001.parquet"]

    # The same count as B's (Beam's sinks would delete out/a.table-*-of-00001.parquet), then
    # another (A's older shards go, nothing else).
    run([*a, "--num_shards", "1"])
    assert {name: _contents(out).get(name) for name in theirs} == theirs
    run([*a, "--num_shards", "2"])

    after = _contents(out)
    assert {name: after.get(name) for name in theirs} == theirs
    assert sorted(name for name in after if name.startswith("a-")) == [
        "a-00000-of-00002.tfrecord.gz", "a-00001-of-00002.tfrecord.gz"]
    assert sorted(name for name in after if name.startswith("a.table-0")) == [
        "a.table-00000-of-00002.parquet", "a.table-00001-of-00002.parquet"]
    capsys.readouterr()
    assert summary.main([str(out / "a.b")]) == 0
    assert summary.main([str(out / "a")]) == 0


@pytest.mark.slow
def test_a_random_method_is_reproducible_with_its_seed(tmp_path, model_path, inputs):
    def rise(seed, name):
        params = f'{{"seed": {seed}, "masks": 16, "cell_size": 8}}'
        return run_job(tmp_path, inputs, model_path, "--method", "rise", "--method_params",
                       params, "--units_key", "label", *BATCH, name=name)

    first, again, other = rise(3, "first"), rise(3, "again"), rise(4, "other")
    assert _raw_records(again.output) == _raw_records(first.output)
    for record_id, decoded in first.explanations.items():
        np.testing.assert_array_equal(decoded["logits"], other.explanations[record_id]["logits"])
        assert not np.array_equal(decoded["maps"], other.explanations[record_id]["maps"])


@pytest.mark.parametrize("option", ["--output", "--dead_letter_prefix"])
@pytest.mark.parametrize("place", ["under a file", "read-only"])
def test_an_unwritable_prefix_exits_2_before_anything_runs(tmp_path, inputs, capsys, option,
                                                          place):
    (tmp_path / "a-file").write_bytes(b"not a folder")
    # /sys refuses new files to every user, root included.
    bad = str(tmp_path / "a-file" / "expl") if place == "under a file" else "/sys/explain/expl"
    flags = {"--output": str(tmp_path / "out" / "expl"), option: bad}
    # A missing model would say so if anything but the probe came first.
    assert main(["--input", inputs, "--model", str(tmp_path / "never-loaded.keras"),
                 *[part for pair in flags.items() for part in pair]]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    reason = "FileExistsError" if place == "under a file" else "PermissionError"
    assert len(error) == 1 and error[0].startswith(
        f"explain-pipeline: {option} {bad} cannot be written ({reason}: "), error
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []


RECORDS = 1200
"""Enough for several seconds of explaining in batches of 4, once the job has started."""


INTERRUPTIBLE = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('pipeline', run_name='__main__', alter_sys=True)"
)
"""`python -m pipeline` as a terminal starts it, Ctrl-C raising KeyboardInterrupt, whatever
SIGINT disposition the tests inherited: a shell's background job ignores SIGINT, and so
would the job started from it."""


def _start_and_stop(tmp_path, model_path, stop: signal.Signals):
    """Start the job in a subprocess on enough records to take a while, send it `stop` once
    it writes its first temporary shard, wait for it; returns (exit status, stderr)."""
    images, labels = demo.make_shapes(64, seed=9, size=32)
    records = [demo.make_example(demo.encode_image(images[i % 64], "png"), int(labels[i % 64]),
                                 f"k{i}") for i in range(RECORDS)]
    pattern = write(tmp_path, "many", records)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE, "--input", pattern, "--output", str(out / "expl"),
         "--model", model_path, "--batch_size", "4"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    deadline = time.monotonic() + 240
    while not glob.glob(str(out / "beam-temp-expl-*" / "*")):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr, pattern


@pytest.mark.slow
def test_an_interrupted_run_removes_its_temporary_files(tmp_path, model_path):
    status, stderr, _ = _start_and_stop(tmp_path, model_path, signal.SIGINT)
    assert status == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (
        "explain-pipeline: interrupted; its temporary files are removed, its outputs are "
        "incomplete: run it again.")
    assert "Traceback" not in stderr
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.slow
def test_what_a_killed_run_left_goes_with_the_next_run(tmp_path, model_path):
    status, _, pattern = _start_and_stop(tmp_path, model_path, signal.SIGKILL)
    out = tmp_path / "out"
    assert status == -signal.SIGKILL
    (left,) = glob.glob(str(out / "beam-temp-expl-*"))  # with its partial shard
    assert os.listdir(left)
    # A probe file a launcher killed while probing would leave; another prefix's temporary
    # folder and look-alikes are not this job's to remove.
    (out / f"expl.write-probe-{'0' * 32}").write_bytes(b"probe")
    others = ["beam-temp-other-" + "0" * 32, "beam-temp-expl-notes", "expl.write-probe-notes"]
    for name in others:
        (out / name).mkdir()

    job = run_job(tmp_path, pattern, model_path, "--batch_size", "16")

    assert job.summary.explained == len(job.explanations) == RECORDS
    assert sorted(os.listdir(out)) == sorted([
        "expl-00000-of-00001.tfrecord.gz", "expl.dead_letters-00000-of-00001.tfrecord.gz",
        "expl.manifest.json", "expl.overview.npz", *others])
