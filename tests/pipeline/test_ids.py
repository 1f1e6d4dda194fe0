"""Record ids (`pipeline.results.ids`): duplicated ids explained, counted and reported with
examples (the command's counts, the manifest, `python -m pipeline.summary`), an empty id
treated like a missing one."""

import collections
import os

import pytest

from explain_lib import io as explain_io
from pipeline import demo, summary
from pipeline.job.launcher import run
from pipeline.results import manifest
from pipeline.results.ids import Duplicates
from tests.pipeline.conftest import write


@pytest.mark.slow
def test_duplicate_ids_are_explained_and_reported_and_empty_ids_hashed(
    tmp_path, model_path, shapes, capsys
):
    images, labels = shapes
    ids = ["a", "b", "a", "c", "b", "a", "d", "", "", "e"]
    records = [demo.make_example(demo.encode_image(images[i], "png"), int(labels[i]), record_id)
               for i, record_id in enumerate(ids)]
    output = str(tmp_path / "out" / "expl")

    ran = run(["--input", write(tmp_path, "in", records), "--output", output,
               "--model", model_path, "--units_key", "label"])

    written = collections.Counter(explain_io.decode_explanation(record)["id"]
                                  for record in explain_io.iterate_records(output + "-*"))
    empty = [explain_io.record_id(records[7]), explain_io.record_id(records[8])]
    assert written == collections.Counter(["a", "a", "a", "b", "b", "c", "d", "e", *empty])
    assert (ran.read, ran.explained, ran.dead_lettered) == (10, 10, 0) and ran.balanced
    assert ran.duplicates == Duplicates(ids=2, records=3, examples=("a", "b"))
    assert "duplicate ids:         2 ids held by 3 more records (e.g. a, b); all explained" in (
        ran.report().splitlines())
    assert manifest.read_manifest(output)["duplicate_ids"] == {
        "ids": 2, "records": 3, "examples": ["a", "b"]}
    assert summary.main([output]) == 0
    assert "duplicate ids:         2 ids held by 3 more records (e.g. a, b); all explained" in (
        capsys.readouterr().out.splitlines())
    assert sorted(os.listdir(tmp_path / "out")) == [
        "expl-00000-of-00001.tfrecord.gz", "expl.dead_letters-00000-of-00001.tfrecord.gz",
        "expl.manifest.json", "expl.overview.npz"]


def test_examples_are_the_smallest_ids_and_few(tmp_path, model_path, shapes):
    images, labels = shapes
    ids = [f"id-{i % 7}" for i in range(14)]  # 7 ids, each twice
    records = [demo.make_example(demo.encode_image(images[i % 12], "png"), int(labels[i % 12]),
                                 record_id) for i, record_id in enumerate(ids)]
    ran = run(["--input", write(tmp_path, "in", records), "--output",
               str(tmp_path / "out" / "expl"), "--model", model_path, "--batch_size", "8"])
    assert ran.duplicates == Duplicates(7, 7, ("id-0", "id-1", "id-2", "id-3", "id-4"))
    assert ran.explained == 14


def test_bytes_ids_that_are_not_utf8_collide_with_no_text_id(tmp_path, model_path, shapes):
    """b"\\xff\\xfeid" and the 8-character text \\xff\\xfeid are two ids: both explained
    under ids that tell them apart, no duplicate reported."""
    images, labels = shapes
    ids = [b"\xff\xfeid", b"\\xff\\xfeid", b"bytes:fffe6964"]
    records = [demo.make_example(demo.encode_image(images[i], "png"), int(labels[i]), value)
               for i, value in enumerate(ids)]
    ran = run(["--input", write(tmp_path, "in", records), "--output",
               str(tmp_path / "out" / "expl"), "--model", model_path, "--units_key", "label"])
    written = sorted(explain_io.decode_explanation(record)["id"] for record in
                     explain_io.iterate_records(str(tmp_path / "out" / "expl-*")))
    assert written == sorted(["bytes:fffe6964", "\\xff\\xfeid", "bytes:bytes:fffe6964"])
    assert [explain_io.id_bytes(text) for text in written] == sorted(
        ids, key=lambda value: explain_io.text_id(value))
    assert ran.duplicates == Duplicates() and ran.explained == 3
