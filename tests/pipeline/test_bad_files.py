"""Bad files get one line naming them, and exit status 2, from every command that reads a
run (`pipeline.summary`, `pipeline.report`, `pipeline.render`), and a one-line ValueError
naming them from the readers (`explain_lib.io`, `pipeline.results.manifest`,
`pipeline.results.overview`, `pipeline.worker.parsing`): truncated, garbage, wrong-typed and
other-version manifests, overviews
and record files. No message suggests loading the file unsafely (numpy's own error for a
non-archive tells its reader to unpickle it)."""

import gzip
import io
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import tensorflow as tf

from explain_lib import io as explain_io
from pipeline import demo, render, report, summary
from pipeline.io import dead_letters
from pipeline.results import manifest, overview
from tests.pipeline.conftest import run_job, write


@pytest.fixture(scope="module")
def run(tmp_path_factory, model_path, shapes):
    """A real run with metrics (so that its manifest has aggregates): 6 records explained,
    one dead letter."""
    images, labels = shapes
    directory = tmp_path_factory.mktemp("bad-files")
    inputs = [demo.make_example(demo.encode_image(image, "png"), int(label), f"b{i}")
              for i, (image, label) in enumerate(zip(images[:6], labels[:6]))]
    pattern = write(directory, "in", inputs + [b"junk"])
    job = run_job(directory, pattern, model_path, "--units_key", "label", "--metrics",
                  "deletion", "--metric_params", '{"deletion": {"n_steps": 4}}')
    return job.output, pattern


def _copy_run(output: str, target) -> str:
    """The run's manifest and overview copied under `target`, the manifest's patterns still
    naming the run's own record files; returns the copy's output prefix."""
    copy = os.path.join(str(target), "copy", "expl")
    os.makedirs(os.path.dirname(copy))
    for suffix in (manifest.MANIFEST_SUFFIX, overview.OVERVIEW_SUFFIX):
        shutil.copy(output + suffix, copy + suffix)
    return copy


def _with_bad_file(output: str, target, suffix: str, make) -> tuple:
    """A copy of the run (`_copy_run`) whose file ending in `suffix` holds `make(output)`;
    returns (the copy's output prefix, that file's path)."""
    copy = _copy_run(output, target)
    with open(copy + suffix, "wb") as bad:
        bad.write(make(output))
    return copy, copy + suffix


def _manifest_text(output: str) -> str:
    with open(output + manifest.MANIFEST_SUFFIX, encoding="utf-8") as source:
        return source.read()


def _manifest_with(output: str, change) -> bytes:
    value = json.loads(_manifest_text(output))
    change(value)
    return json.dumps(value).encode()


BAD_MANIFESTS = {
    "truncated": lambda output: _manifest_text(output)[:300].encode(),
    "binary": lambda output: bytes(range(256)) * 4,
    "not UTF-8": lambda output: b'{"manifest_version": "\xff\xfe"}',
    "a list": lambda output: b"[]",
    "null": lambda output: b"null",
    "a string": lambda output: b'"a manifest"',
    "only a version": lambda output: b'{"manifest_version": 1}',
    "an older version": lambda output: b'{"manifest_version": 0, "counts": {}}',
    "a newer version": lambda output: _manifest_with(
        output, lambda m: m.update(manifest_version=2)),
    "counts as text": lambda output: _manifest_with(
        output, lambda m: m.update(counts="many")),
    "a count as text": lambda output: _manifest_with(
        output, lambda m: m["counts"].update(explained="six")),
    "a count missing": lambda output: _manifest_with(
        output, lambda m: m["counts"].update(explained=None)),
    "files as a number": lambda output: _manifest_with(
        output, lambda m: m["output"].update(files=3)),
    "aggregates without means": lambda output: _manifest_with(
        output, lambda m: m["metrics"]["aggregates"]["deletion"].update(all={})),
}


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _overview_bytes(output: str) -> bytes:
    with open(output + overview.OVERVIEW_SUFFIX, "rb") as source:
        return source.read()


def _overview_with(output: str, change) -> bytes:
    with np.load(io.BytesIO(_overview_bytes(output))) as stored:
        arrays = {name: stored[name] for name in stored.files}
    meta = json.loads(arrays["meta"].tobytes())
    change(meta, arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return _npz(**arrays)


BAD_OVERVIEWS = {
    "truncated": lambda output: _overview_bytes(output)[:len(_overview_bytes(output)) // 2],
    "garbage": lambda output: bytes(np.random.default_rng(0).integers(0, 256, 4000,
                                                                      dtype=np.uint8)),
    "empty": lambda output: b"",
    "a pickle": lambda output: pickle.dumps({"records": 6}),
    "a .npy array": lambda output: _npy(np.zeros(3)),
    "an archive of Python objects": lambda output: _object_npz(),
    "an archive without its entry": lambda output: _npz(sums=np.zeros((2, 4))),
    "records as text": lambda output: _overview_with(
        output, lambda meta, arrays: meta.update(records="six")),
    "an older format": lambda output: _overview_with(
        output, lambda meta, arrays: meta.update(format=0)),
    "sums of another shape": lambda output: _overview_with(
        output, lambda meta, arrays: arrays.update(sums=np.zeros((1, 3)))),
    "an example's image missing": lambda output: _overview_with(
        output, lambda meta, arrays: arrays.pop("logit/high/0/image")),
}


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _object_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array([{"records": 6}], dtype=object))
    return buffer.getvalue()


def _assert_one_line(text: str, path: str):
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert path in lines[0] and "Traceback" not in text, text
    assert "pickle" not in text.lower(), text


@pytest.mark.parametrize("kind", sorted(BAD_MANIFESTS))
@pytest.mark.slow
def test_a_bad_manifest_is_one_line_naming_it(run, tmp_path, capsys, kind):
    output, _ = run
    copy, path = _with_bad_file(output, tmp_path, manifest.MANIFEST_SUFFIX, BAD_MANIFESTS[kind])
    with pytest.raises(ValueError) as error:
        manifest.read_manifest(copy)
    _assert_one_line(str(error.value), path)
    for command in (summary.main, report.main):
        capsys.readouterr()
        assert command([copy, *(["--out", str(tmp_path / "r.html")] if command is report.main
                                else [])]) == 2
        _assert_one_line(capsys.readouterr().err, path)
    assert summary.main([copy, "--json"]) == 2
    _assert_one_line(capsys.readouterr().err, path)


@pytest.mark.parametrize("kind", sorted(BAD_OVERVIEWS))
def test_a_bad_overview_is_one_line_naming_it(run, tmp_path, capsys, kind):
    output, _ = run
    copy, path = _with_bad_file(output, tmp_path, overview.OVERVIEW_SUFFIX, BAD_OVERVIEWS[kind])
    with pytest.raises(ValueError) as error:
        overview.read_overview(copy)
    _assert_one_line(str(error.value), path)
    capsys.readouterr()
    assert report.main([copy, "--out", str(tmp_path / "r.html")]) == 2
    _assert_one_line(capsys.readouterr().err, path)
    assert not os.path.exists(tmp_path / "r.html")


def _explanation_files(output: str):
    return explain_io.list_files(output + "-*")


BAD_RECORD_FILES = {
    # A gzip stream cut short, inside a record.
    "truncated": lambda good: good[:len(good) // 2],
    "garbage": lambda good: gzip.compress(b"not TFRecords at all" * 50),
    "not gzip": lambda good: b"plain bytes, no gzip header" * 20,
}


@pytest.mark.parametrize("kind", sorted(BAD_RECORD_FILES))
@pytest.mark.slow
def test_a_bad_explanation_file_is_one_line_naming_it(run, tmp_path, capsys, kind):
    output, inputs = run
    (good_path,) = _explanation_files(output)
    with open(good_path, "rb") as source:
        good = source.read()
    bad = str(tmp_path / "bad" / "expl-00000-of-00001.tfrecord.gz")
    os.makedirs(os.path.dirname(bad))
    with open(bad, "wb") as target:
        target.write(BAD_RECORD_FILES[kind](good))
    prefix = bad[:-len("-00000-of-00001.tfrecord.gz")]
    # The run's manifest, naming the damaged file (its size as it is, so that only the
    # damage inside is found).
    copy = _copy_run(output, tmp_path)
    value = json.loads(_manifest_text(output))
    value["output"]["explanations"] = prefix + "-*.tfrecord.gz"
    value["output"]["files"]["explanations"] = [{"path": bad, "bytes": os.path.getsize(bad)}]
    manifest.write_manifest(value, copy + manifest.MANIFEST_SUFFIX)

    for reader in (lambda: list(explain_io.iterate_records(bad)),
                   lambda: list(explain_io.iterate_decoded(bad, explain_io.decode_explanation))):
        with pytest.raises(ValueError) as error:
            reader()
        _assert_one_line(str(error.value), bad)
    if kind == "truncated":
        # tf.data's reader checks each file's first record at once; damage further in
        # stops the dataset with TensorFlow's own error, as documented.
        with pytest.raises(tf.errors.DataLossError):
            list(explain_io.read_explanations(bad))
    else:
        with pytest.raises(ValueError) as error:
            explain_io.read_explanations(bad)
        _assert_one_line(str(error.value), bad)
    capsys.readouterr()
    assert summary.main([copy]) == 2
    _assert_one_line(capsys.readouterr().err, bad)
    assert render.main(["--explanations", bad, "--images", inputs, "--out",
                        str(tmp_path / "grid.png")]) == 2
    _assert_one_line(capsys.readouterr().err, bad)


def test_files_of_another_kind_are_named(run, tmp_path, capsys):
    """The dead letters where explanations belong, and explanations where dead letters
    belong: the readers say which file holds what."""
    output, inputs = run
    letters = explain_io.list_files(output + ".dead_letters-*")[0]
    (explanations,) = _explanation_files(output)
    for reader in (lambda: explain_io.read_explanations(letters),
                   lambda: list(explain_io.iterate_decoded(letters,
                                                           explain_io.decode_explanation))):
        with pytest.raises(ValueError, match="Not an explanation record") as error:
            reader()
        _assert_one_line(str(error.value), letters)
    with pytest.raises(ValueError, match="Not a dead letter") as error:
        dead_letters.read_dead_letters(explanations)
    _assert_one_line(str(error.value), explanations)
    assert render.main(["--explanations", letters, "--images", inputs, "--out",
                        str(tmp_path / "grid.png")]) == 2
    _assert_one_line(capsys.readouterr().err, letters)
    # A record that is no tf.train.Example at all.
    junk = write(tmp_path, "junk", [b"\x0a\xff\xff\xff\xff"])
    with pytest.raises(ValueError, match="not a tf.train.Example") as error:
        list(explain_io.iterate_decoded(junk, explain_io.decode_explanation))
    _assert_one_line(str(error.value), junk)


def test_summary_names_the_files_a_run_wrote_that_are_gone_or_changed(run, tmp_path, capsys):
    output, _ = run
    copy = _copy_run(output, tmp_path)
    value = json.loads(_manifest_text(output))
    (letters,) = value["output"]["files"]["dead_letters"]
    moved = str(tmp_path / "letters.tfrecord.gz")
    shutil.copy(letters["path"], moved)
    value["output"]["files"]["dead_letters"] = [
        {"path": moved, "bytes": letters["bytes"] + 1},
        {"path": str(tmp_path / "gone-00001-of-00002.tfrecord.gz"), "bytes": 10}]
    manifest.write_manifest(value, copy + manifest.MANIFEST_SUFFIX)
    for scan in ([], ["--no_scan"]):
        assert summary.main([copy, *scan]) == 1
        text = capsys.readouterr().out
        assert (f"warning: {tmp_path}/gone-00001-of-00002.tfrecord.gz (dead_letters) is "
                "missing.") in text
        assert (f"warning: {moved} (dead_letters) holds {letters['bytes']:,} bytes; the run "
                f"wrote {letters['bytes'] + 1:,}.") in text


@pytest.mark.parametrize("argv", [["--top", "-5"], ["--units", "-1"], ["--examples", "-2"],
                                  ["--top", "many"]])
def test_negative_counts_are_refused(run, argv, capsys):
    output, _ = run
    with pytest.raises(SystemExit) as exit_:
        report.main([output, *argv])
    assert exit_.value.code == 2
    assert f"argument {argv[0]}" in capsys.readouterr().err
    if argv[0] == "--top":
        with pytest.raises(SystemExit) as exit_:
            summary.main([output, *argv])
        assert exit_.value.code == 2
