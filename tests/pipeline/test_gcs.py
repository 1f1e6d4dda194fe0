"""Cloud Storage for real: input, output, dead letters and the model file on gs://, against
gcp-storage-emulator on loopback with the real google-cloud-storage client (Beam's GCS
filesystem), no mocks."""

import numpy as np
import pytest
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from explain_lib import io as explain_io
from pipeline import demo
from pipeline.__main__ import run
from pipeline.records import decode_dead_letter
from tests.pipeline.conftest import assert_maps_match, expected_explanations
from tests.services import NO_CLOUD_ENV, gcs_emulator

BUCKET = "explain-test"


@pytest.fixture
def gcs(tmp_path, monkeypatch):
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


def test_input_output_dead_letters_and_model_on_gcs(tmp_path, gcs, model_path, model, shapes):
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(im, "png"), int(label), f"g{i}")
               for i, (im, label) in enumerate(zip(images[:5], labels[:5]))]
    records.append(demo.make_example(demo.encode_image(images[5], "png"), 99, "g-bad-unit"))
    local = demo.write_records(str(tmp_path / "input.tfrecord"), records)
    upload(local, f"{gcs}/input/part-0.tfrecord")
    upload(model_path, f"{gcs}/models/tiny.keras")

    summary = run(["--input", f"{gcs}/input/*.tfrecord", "--output", f"{gcs}/out/expl",
                   "--model", f"{gcs}/models/tiny.keras", "--units_key", "label",
                   "--batch_size", "4"])

    assert (summary.read, summary.explained, summary.dead_lettered) == (6, 5, 1)
    explained = {d["id"]: d for d in map(explain_io.decode_explanation,
                                         records_at(f"{gcs}/out/expl-*", tmp_path))}
    assert sorted(explained) == [f"g{i}" for i in range(5)]
    logits, maps = expected_explanations(model, images[:5].astype(np.float32), labels[:5])
    for i in range(5):
        assert_maps_match(explained[f"g{i}"], maps[i], logits[i])
    (letter,) = map(decode_dead_letter, records_at(f"{gcs}/out/expl.dead_letters-*", tmp_path))
    assert (letter.stage, letter.id, letter.record) == ("validate", "g-bad-unit", records[-1])
