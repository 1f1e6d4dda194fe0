"""Cloud Storage for real: input, output, dead letters and the model file on gs://, against
gcp-storage-emulator on loopback with the real google-cloud-storage client (Beam's GCS
filesystem), no mocks: a damaged input file dead-lettered with its gs:// path and offset, an
earlier run's shards and temporary folder removed, the manifest's file list, and the errors
retrying cannot cure (a missing or truncated model, a missing bucket) failing at once."""

import logging

import numpy as np
import pytest
from apache_beam.internal.gcp import auth
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from explain_lib import io as explain_io
from pipeline import demo, report
from pipeline.io.dead_letters import decode_dead_letter
from pipeline.job.launcher import main, run
from pipeline.results.manifest import read_manifest
from pipeline.worker.models import load_keras_model
from tests.pipeline.conftest import assert_maps_match, expected_explanations
from tests.services import NO_CLOUD_ENV, gcs_emulator

BUCKET = "explain-test"


@pytest.fixture
def gcs(tmp_path, monkeypatch):
    # What Beam's credential lookup concludes here (no credentials: connect anonymously),
    # told it up front: the lookup itself retries google-auth against the closed metadata
    # port for over half a minute (backoff sleeps), once per process, before concluding so.
    # The clients stay real: Beam builds them from this result as it would from its own.
    monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)
    with gcs_emulator(BUCKET, str(tmp_path / "gcs")) as host:
        for name, value in {**NO_CLOUD_ENV, "STORAGE_EMULATOR_HOST": host}.items():
            monkeypatch.setenv(name, value)
        FileSystems.set_options(PipelineOptions([]))
        yield f"gs://{BUCKET}"


def upload(local_path: str, url: str) -> None:
    with open(local_path, "rb") as source, FileSystems.create(url) as target:
        target.write(source.read())


def records_at(pattern: str, local_dir) -> list:
    """Every record of the files matching a gs:// pattern: copied through Beam's GCS
    filesystem, read with the project's reader."""
    found = []
    for i, metadata in enumerate(FileSystems.match([pattern])[0].metadata_list):
        local = local_dir / f"copy-{i}.tfrecord.gz"
        with FileSystems.open(metadata.path, compression_type=CompressionTypes.UNCOMPRESSED) as src:
            local.write_bytes(src.read())
        found.extend(explain_io.iterate_records(str(local)))
    return found


def names(pattern: str) -> list:
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


@pytest.mark.slow
def test_input_output_dead_letters_and_model_on_gcs(tmp_path, gcs, model_path, model, shapes):
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(im, "png"), int(label), f"g{i}")
               for i, (im, label) in enumerate(zip(images[:5], labels[:5]))]
    records.append(demo.make_example(demo.encode_image(images[5], "png"), 99, "g-bad-unit"))
    local = demo.write_records(str(tmp_path / "input.tfrecord"), records)
    upload(local, f"{gcs}/input/part-0.tfrecord")
    # A second file, cut inside its second record: its first record is explained (again).
    cut = demo.write_records(str(tmp_path / "cut.tfrecord"), records[:2])
    data = open(cut, "rb").read()
    with FileSystems.create(f"{gcs}/input/part-1.tfrecord") as target:
        target.write(data[:len(data) - 20])
    upload(model_path, f"{gcs}/models/tiny.keras")
    # What earlier runs left: shards of another count, a killed run's temporary folder; and
    # a file that is not the job's.
    left = [f"{gcs}/out/expl-0000{i}-of-00003.tfrecord.gz" for i in range(3)] + [
        f"{gcs}/out/beam-temp-expl-{'ab' * 16}/partial.expl.tfrecord.gz"]
    for path in [*left, f"{gcs}/out/expl-notes.txt"]:
        with FileSystems.create(path) as target:
            target.write(b"older")

    summary = run(["--input", f"{gcs}/input/*.tfrecord", "--output", f"{gcs}/out/expl",
                   "--model", f"{gcs}/models/tiny.keras", "--units_key", "label",
                   "--batch_size", "4"])

    assert (summary.read, summary.explained, summary.dead_lettered) == (8, 6, 2)
    written = list(map(explain_io.decode_explanation, records_at(f"{gcs}/out/expl-0*", tmp_path)))
    # g0 is in both files: explained twice, reported as a duplicate.
    assert sorted(d["id"] for d in written) == ["g0", "g0", "g1", "g2", "g3", "g4"]
    assert summary.duplicates == (1, 1, ("g0",))
    explained = {d["id"]: d for d in written}
    logits, maps = expected_explanations(model, images[:5].astype(np.float32), labels[:5])
    for i in range(5):
        assert_maps_match(explained[f"g{i}"], maps[i], logits[i])
    letters = sorted(map(decode_dead_letter, records_at(f"{gcs}/out/expl.dead_letters-*",
                                                        tmp_path)), key=lambda d: d.stage)
    assert [(d.stage, d.id, d.record) for d in letters] == [
        ("read", "", b""), ("validate", "g-bad-unit", records[-1])]
    second = len(records[0]) + 16
    assert letters[0].error == (
        f"{gcs}/input/part-1.tfrecord: unreadable from byte {second} (the file ends inside a "
        f"record of {len(records[1])} bytes); the 1 records before it were read")
    # Only this run's files are left, and the manifest lists them.
    assert names(f"{gcs}/out/**") == [
        f"{gcs}/out/expl-00000-of-00001.tfrecord.gz",
        f"{gcs}/out/expl-notes.txt",
        f"{gcs}/out/expl.dead_letters-00000-of-00001.tfrecord.gz",
        f"{gcs}/out/expl.manifest.json",
        f"{gcs}/out/expl.overview.npz",
    ]
    files = read_manifest(f"{gcs}/out/expl")["output"]["files"]
    assert [f["path"] for f in files["explanations"]] == [
        f"{gcs}/out/expl-00000-of-00001.tfrecord.gz"]
    assert files["explanations"][0]["bytes"] == FileSystems.match(
        [f"{gcs}/out/expl-00000-of-00001.tfrecord.gz"])[0].metadata_list[0].size_in_bytes
    # The report reads the manifest and the overview from the bucket and writes its page
    # there.
    page = report.build(f"{gcs}/out/expl", out=f"{gcs}/pages/report.html")
    assert page == f"{gcs}/pages/report.html"
    data = report.compute_report(f"{gcs}/out/expl")
    assert data.records == summary.explained == 6
    with FileSystems.open(page) as stored:
        assert f'"records": {data.records}' in stored.read().decode("utf-8")


def test_storage_errors_that_retrying_cannot_cure_fail_at_once(tmp_path, gcs, model_path,
                                                                caplog, capsys):
    caplog.set_level(logging.WARNING)
    with pytest.raises(FileNotFoundError, match=f"Model file not found: {gcs}/models/none.keras"):
        load_keras_model(f"{gcs}/models/none.keras")
    data = open(model_path, "rb").read()
    with FileSystems.create(f"{gcs}/models/cut.keras") as target:
        target.write(data[:1000])
    with pytest.raises(ValueError, match=f"Model file {gcs}/models/cut.keras is corrupt or "
                                         "truncated"):
        load_keras_model(f"{gcs}/models/cut.keras")
    assert [r for r in caplog.records if "failed (attempt" in r.getMessage()] == []
    # A bucket that does not exist cannot take the outputs: found before anything runs.
    local = demo.write_records(str(tmp_path / "in.tfrecord"), [demo.make_example(b"x", 1, "x")])
    assert main(["--input", local, "--output", "gs://no-such-bucket/out/expl",
                 "--model", model_path]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("explain-pipeline: --output gs://no-such-bucket/out/expl cannot "
                            "be written (") and "\n" not in error
