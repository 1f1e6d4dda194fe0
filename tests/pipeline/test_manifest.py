"""The run manifest and `python -m pipeline.summary`: one real run with good and bad records,
maps stored at their native size; the manifest's counts against the files actually written."""

import collections
import datetime
import hashlib
import json
import os

import apache_beam as beam
import keras
import numpy as np
import pytest
import tensorflow as tf

from explain_lib import io as explain_io
from pipeline import demo, summary
from pipeline.results import manifest
from tests.pipeline.conftest import (
    SIZE,
    assert_maps_match,
    expected_explanations,
    run_job,
    write,
)


@pytest.fixture(scope="module")
def job(tmp_path_factory, model_path, shapes):
    images, labels = shapes
    directory = tmp_path_factory.mktemp("manifest")
    good = [demo.make_example(demo.encode_image(image, "png"), int(label), f"m{i}")
            for i, (image, label) in enumerate(zip(images[:8], labels[:8]))]
    bad = [b"junk", demo.make_example(demo.encode_image(images[0], "png"), 9, "bad-unit"),
           demo.make_example(None, 1, "no-image")]
    pattern = write(directory, "in", good[:4] + bad + good[4:])
    ran = run_job(directory, pattern, model_path, "--method", "gradcam", "--units_key", "label",
                  "--map_encoding", "png16", "--map_size", "native")
    return ran, pattern, images[:8], labels[:8]


def test_manifest_counts_equal_the_records_written(job):
    ran, _, _, labels = job
    counts = manifest.read_manifest(ran.output)["counts"]
    assert counts["counted"] is True
    assert counts["read"] == 11
    assert counts["explained"] == len(ran.explanations) == 8
    written = collections.Counter(letter.stage for letter in ran.dead_letters)
    assert {stage: n for stage, n in counts["dead_letters"].items() if n} == dict(written) == {
        "parse": 1, "validate": 2}
    assert counts["dead_lettered"] == len(ran.dead_letters) == 3
    assert ran.summary.manifest == ran.output + ".manifest.json"


def test_manifest_describes_the_run(job, model_path):
    ran, pattern, _, _ = job
    described = manifest.read_manifest(ran.output + ".manifest.json")  # either name works
    assert described["manifest_version"] == 1
    assert described["schema_version"] == explain_io.SCHEMA_VERSION
    assert described["method"] == {
        "name": "gradcam",
        "params": {},  # as given: --map_size native set the resizing below
        "received": {},  # Grad-CAM has no parameter of its own
        "explain": {"postprocessing": "positive_normalize", "resizing": False,
                    "scores": "logits"},
    }
    content = open(model_path, "rb").read()
    assert described["model"] == {"path": model_path,
                                  "sha256": hashlib.sha256(content).hexdigest(),
                                  "bytes": len(content)}
    assert described["input"]["pattern"] == pattern
    assert described["input"]["units_key"] == "label" and described["input"]["tfds"] is None
    def shards(prefix):
        directory = os.path.dirname(prefix)
        return [{"path": os.path.join(directory, name),
                 "bytes": os.path.getsize(os.path.join(directory, name))}
                for name in sorted(os.listdir(directory))
                if name.startswith(os.path.basename(prefix) + "-")]

    assert described["output"] == {
        "explanations": ran.output + "-*.tfrecord.gz",
        "dead_letters": ran.output + ".dead_letters-*.tfrecord.gz",
        "table": None,  # no --table
        "overview": ran.output + ".overview.npz",  # the report's numbers
        "map_encoding": "png16",
        "map_size": "native",
        "map_size_option": "native",
        "files": {"explanations": shards(ran.output),
                  "dead_letters": shards(ran.output + ".dead_letters")},
    }
    assert len(described["output"]["files"]["dead_letters"]) == 1
    assert described["metrics"] is None  # no --metrics
    assert described["duplicate_ids"] == {"ids": 0, "records": 0, "examples": []}
    started, finished = (datetime.datetime.fromisoformat(described[key].replace("Z", "+00:00"))
                         for key in ("started", "finished"))
    assert started <= finished <= datetime.datetime.now(datetime.timezone.utc)
    assert described["seconds"] >= 0
    versions = described["versions"]
    assert versions["tensorflow"] == tf.__version__ and versions["keras"] == keras.__version__
    assert versions["apache-beam"] == beam.__version__ and "explain-lib" in versions
    assert described["runner"] == "DirectRunner"


def test_native_maps_are_stored_small_and_read_at_the_input_size(job, model):
    ran, _, images, labels = job
    x = images.astype(np.float32)  # PNG: exact pixels
    native_logits, native = expected_explanations(model, x, labels[:, None],
                                                  method_params={"resizing": False})
    full_logits, full = expected_explanations(model, x, labels[:, None], map_size="input")
    # The demo CNN pools twice: its last conv layer, and Grad-CAM's map, is 8x8.
    assert native.shape[1:3] == (SIZE // 4, SIZE // 4)
    for i in range(8):
        decoded = ran.explanations[f"m{i}"]
        np.testing.assert_array_equal(decoded["stored_shape"], [8, 8, 1])
        np.testing.assert_array_equal(decoded["input_size"], [SIZE, SIZE])
        assert decoded["map_encoding"] == "png16"
        assert_maps_match(decoded, native[i], native_logits[i])
    # Read back at the input's size, they equal what the engine stores with resizing.
    read = {row["id"].decode(): row for row in explain_io.read_explanations(
        ran.output + "-*", size="input").as_numpy_iterator()}
    for i in range(8):
        assert read[f"m{i}"]["maps"].shape == (SIZE, SIZE, 1)
        assert_maps_match(read[f"m{i}"], full[i], full_logits[i])


def test_summary_prints_the_manifest_counts_units_and_dead_letters(job, capsys):
    ran, _, _, labels = job
    assert summary.main([ran.output]) == 0
    text = capsys.readouterr().out
    assert "method:   gradcam" in text and "png16 maps, native size" in text
    assert "records read:          11" in text and "records explained:     8" in text
    assert "  parse     1" in text and "  validate  2" in text
    assert "out of range" in text and "missing image feature 'image'" in text
    assert "explanations in the files: 8" in text
    table = {}
    for line in text.split("per unit")[1].splitlines()[2:]:
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit():
            table[int(parts[0])] = (int(parts[1]), int(parts[2]))
    expected = collections.Counter(labels.tolist())
    assert table == {unit: (count, count) for unit, count in expected.items()}

    report = summary.summarize_output(ran.output)
    assert report.records == 8 and report.notes == []
    assert sum(report.dead_letters["validate"].values()) == 2

    assert summary.main([ran.output, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == manifest.read_manifest(ran.output)
    assert summary.main([ran.output, "--no_scan"]) == 0
    assert "per unit" not in capsys.readouterr().out


def test_summary_flags_files_that_disagree_with_the_counts(job, tmp_path, capsys):
    ran, _, _, _ = job
    altered = manifest.read_manifest(ran.output)
    altered["counts"]["explained"] += 1
    altered["counts"]["dead_letters"]["decode"] = 1
    manifest.write_manifest(altered, str(tmp_path / "altered.manifest.json"))
    assert summary.main([str(tmp_path / "altered")]) == 1
    text = capsys.readouterr().out
    assert "warning: The files hold 8 explanations, but the job counted 9" in text
    assert "warning: The dead-letter files hold" in text


def test_missing_or_newer_manifests_fail_clearly(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="No run manifest at"):
        manifest.read_manifest(str(tmp_path / "none"))
    assert summary.main([str(tmp_path / "none")]) == 2
    newer = {"manifest_version": 2}
    with open(tmp_path / "newer.manifest.json", "w") as f:
        json.dump(newer, f)
    with pytest.raises(ValueError, match="manifest version 2; this pipeline reads version 1"):
        manifest.read_manifest(str(tmp_path / "newer"))
    assert summary.main([str(tmp_path / "newer")]) == 2
    assert "manifest version 2" in capsys.readouterr().err
    assert os.path.basename(manifest.manifest_path("out/expl")) == "expl.manifest.json"
