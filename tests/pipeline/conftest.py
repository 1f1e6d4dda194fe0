"""Shared fixtures of the pipeline tests: one tiny model and one small image set per session,
real TFRecord files, a helper that runs the job and reads back everything it wrote, and two
Beam filesystems over local files (`testfs://`, and `flakyfs://` whose opens fail as told)."""

import os
from dataclasses import dataclass
from typing import Dict, List

import keras
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.io.filesystem import FileMetadata, MatchResult
from apache_beam.io.localfilesystem import LocalFileSystem

import explain_lib
from explain_lib import inspection, methods
from explain_lib import io as explain_io
from pipeline import demo
from pipeline.io.dead_letters import DeadLetter, read_dead_letters
from pipeline.job.launcher import run
from pipeline.settings import Settings, explain_params, with_map_size
from pipeline.worker.handler import RecordsHandler
from pipeline.worker.parsing import RecordSpec

SIZE = 32
UNITS = 4


def raw_record(i: int, value: float) -> bytes:
    """A serialized record with id r{i} whose image is a raw 4x4x3 float32 tensor of
    `value`."""
    example = tf.train.Example()
    example.features.feature["image"].bytes_list.value.append(
        np.full((4, 4, 3), value, np.float32).tobytes())
    example.features.feature["id"].bytes_list.value.append(b"r%d" % i)
    return example.SerializeToString()


def make_handler(spec: RecordSpec, **settings) -> RecordsHandler:
    """A handler for tests that hand it a stand-in worker: `Settings` whose model is never
    loaded, without the overview unless asked."""
    return RecordsHandler(Settings(**{"model": "unused.keras", "overview": False, **settings}),
                          spec)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    """The demo CNN at 32x32, random but fixed weights (explaining needs no training)."""
    keras.utils.set_random_seed(7)
    model = demo.make_model((SIZE, SIZE, 3), UNITS, width=4)
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    keras.saving.save_model(model, path)
    return path


@pytest.fixture(scope="session")
def model(model_path):
    return keras.saving.load_model(model_path, compile=False)


@pytest.fixture(scope="session")
def shapes():
    """12 images (32x32 uint8) and labels."""
    return demo.make_shapes(12, seed=5, size=SIZE)


def write(directory, name: str, records: List[bytes], compression=None) -> str:
    """Records into one real TFRecord file; returns its path."""
    suffix = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
    return demo.write_records(os.path.join(str(directory), name + suffix), records, compression)


@dataclass
class Job:
    """What one run of the job produced, read back from its files."""

    summary: object
    explanations: Dict[str, dict]  # id -> explain_lib.io.decode_explanation(record)
    dead_letters: List[DeadLetter]
    output: str


def run_job(tmp_path, input_pattern: str, model_path: str, *flags: str, name="out") -> Job:
    """Run `python -m pipeline` in-process on DirectRunner (unless `flags` say otherwise)."""
    output = os.path.join(str(tmp_path), name, "expl")
    source = ["--input", input_pattern] if input_pattern else []  # flags may say --tfds
    summary = run([*source, "--output", output, "--model", model_path, "--batch_size", "4",
                   *flags])
    explanations = {}
    for record in explain_io.iterate_records(output + "-*"):
        decoded = explain_io.decode_explanation(record)
        assert decoded["id"] not in explanations, f"id {decoded['id']} written twice"
        explanations[decoded["id"]] = decoded
    letters = read_dead_letters(output + ".dead_letters-*")
    return Job(summary, explanations, letters, output)


RUNNERS_FLAGS = ["--method", "gradcam", "--units_key", "label",
                 "--method_params", '{"postprocessing": null}']
"""The job the runner tests run on every runner: raw Grad-CAM maps (no post-processing),
signed values, each map's own range."""


@pytest.fixture(scope="session")
def runners_input(tmp_path_factory, shapes):
    """The input of the runner tests: six PNG records with ids (m0..m5) and labels, one that
    is not a tf.train.Example and one whose unit is out of range, in two files. Returns
    (file pattern, records)."""
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(im, "png"), int(label), f"m{i}")
               for i, (im, label) in enumerate(zip(images[:6], labels[:6]))]
    records += [b"\x00junk", demo.make_example(demo.encode_image(images[6], "png"), 7, "bad")]
    directory = tmp_path_factory.mktemp("runners")
    write(directory, "runners-0", records[:4])
    write(directory, "runners-1", records[4:])
    return str(directory / "runners-*"), records


@pytest.fixture(scope="session")
def direct_runners_job(tmp_path_factory, runners_input, model_path):
    """`RUNNERS_FLAGS` on `runners_input` on plain DirectRunner: the output every other
    runner must reproduce. Run once per session: every runner test compares with this run."""
    job = run_job(tmp_path_factory.mktemp("direct"), runners_input[0], model_path,
                  *RUNNERS_FLAGS, name="plain")
    assert min(d["maps"].min() for d in job.explanations.values()) < 0  # raw, signed maps
    return job


def assert_same_output_as_direct(other: "Job", direct: "Job", records: List[bytes]):
    """`other` (a runner test's job on `runners_input`) wrote what plain DirectRunner wrote:
    the same six explanations (units equal, maps and logits within `assert_maps_match`),
    the same two dead letters, the same counts."""

    def output_set(job):
        return {record_id: (decoded["units"].tolist(), decoded["maps"], decoded["logits"])
                for record_id, decoded in job.explanations.items()}

    expected, actual = output_set(direct), output_set(other)
    assert sorted(actual) == sorted(expected) == [f"m{i}" for i in range(6)]
    for record_id, (units, maps, logits) in expected.items():
        assert actual[record_id][0] == units
        assert_maps_match({"maps": actual[record_id][1], "logits": actual[record_id][2]},
                          maps, logits)
    assert sorted((d.stage, d.record) for d in other.dead_letters) == sorted(
        (d.stage, d.record) for d in direct.dead_letters) == sorted(
        [("parse", b"\x00junk"), ("validate", records[-1])])
    for job in (direct, other):
        assert (job.summary.read, job.summary.explained, job.summary.dead_lettered) == (8, 6, 2)
    # The report's overview, merged from the batches and the workers in whatever order the
    # runner chose, holds the same numbers.
    from pipeline.results.overview import read_overview

    mine, theirs = read_overview(direct.output), read_overview(other.output)
    assert mine.records == theirs.records == 6
    assert mine.unit_counts == theirs.unit_counts
    assert mine.dead_letters == theirs.dead_letters and sum(
        sum(c.values()) for c in mine.dead_letters.values()) == 2
    for unit, mean in mine.mean_maps().items():
        np.testing.assert_allclose(theirs.mean_maps()[unit], mean, rtol=1e-4,
                                   atol=1e-4 * float(np.abs(mean).max()))
    for key in mine.keys:  # (all six records are kept: the ids alike, the scores in order)
        assert sorted(e.id for e in theirs.best(key)) == sorted(e.id for e in mine.best(key))
        assert [e.score for e in theirs.best(key)] == pytest.approx(
            [e.score for e in mine.best(key)], rel=1e-4, abs=1e-6)


def expected_explanations(model, images, units, method="gradcam", method_params=None,
                          map_size=None, **kwargs):
    """What in-process `explain_lib.explain` gives for the same images, units, method and
    map size (`--map_size`; by default the job's "auto")."""
    registered = methods.get(method)
    explained = inspection.expose(model) if registered.exposed else model
    params = explain_params(registered, with_map_size(method_params, map_size))
    return explain_lib.explain(registered.function, explained, np.asarray(images, np.float32),
                               np.asarray(units), verbose=0, **params, **kwargs)


def assert_maps_match(decoded: dict, maps: np.ndarray, logits: np.ndarray):
    """Decoded maps equal `maps` within the codec's bound (range/255) plus float noise from
    batching differently; logits equal to float precision."""
    np.testing.assert_allclose(decoded["logits"], logits, rtol=1e-4, atol=1e-6)
    assert decoded["maps"].shape == maps.shape
    span = maps.max(axis=(0, 1)) - maps.min(axis=(0, 1))
    error = np.abs(decoded["maps"] - maps).max(axis=(0, 1))
    assert np.all(error <= span / 255 + 1e-3 * span + 1e-7), (error, span)


class SchemeFileSystem(LocalFileSystem):
    """Local files under a `testfs://` scheme: a remote filesystem as Beam sees one."""

    @classmethod
    def scheme(cls):
        return "testfs"

    def _local(self, path: str) -> str:
        start = f"{self.scheme()}://"
        return path[len(start):] if path.startswith(start) else path

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def exists(self, path):
        return super().exists(self._local(path))

    def match(self, patterns, limits=None):
        results = super().match([self._local(p) for p in patterns], limits)
        return [MatchResult(pattern, [
            FileMetadata(f"{self.scheme()}://{m.path}", m.size_in_bytes, m.last_updated_in_seconds)
            for m in result.metadata_list]) for pattern, result in zip(patterns, results)]


class FlakyFileSystem(SchemeFileSystem):
    """`flakyfs://`: the local files again, but opening a path first raises, one per open,
    the errors `FAILURES[path]` lists (a storage service having a bad moment); `OPENS[path]`
    counts the attempts. In-process runners share these class attributes with the test."""

    FAILURES: Dict[str, List[Exception]] = {}
    OPENS: Dict[str, int] = {}

    @classmethod
    def scheme(cls):
        return "flakyfs"

    def open(self, path, *args, **kwargs):
        self.OPENS[path] = self.OPENS.get(path, 0) + 1
        if self.FAILURES.get(path):
            raise self.FAILURES[path].pop(0)
        return super().open(path, *args, **kwargs)
