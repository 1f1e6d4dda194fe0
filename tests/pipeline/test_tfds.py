"""TFDS input: a dataset builder defined here, prepared locally, explained with --tfds."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from explain_lib import io as explain_io
from pipeline import demo
from pipeline.io import tfds as tfds_input
from tests.pipeline.conftest import (
    SIZE,
    assert_maps_match,
    expected_explanations,
    run_job,
)


class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """The demo's shapes as a TFDS dataset: PNG images and a ClassLabel."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "picture": tfds.features.Image(shape=(SIZE, SIZE, 3)),
                "kind": tfds.features.ClassLabel(num_classes=4),
                "caption": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples(seed=3, count=6),
                "train": self._generate_examples(seed=4, count=2)}

    def _generate_examples(self, seed, count):
        images, labels = demo.make_shapes(count, seed=seed, size=SIZE)
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"picture": image, "kind": int(label), "caption": f"shape {i}"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    TinyShapes(data_dir=directory).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return directory


def test_the_split_is_resolved_from_the_datasets_own_feature_spec(data_dir):
    source = tfds_input.resolve("tiny_shapes", data_dir, "test")
    assert (source.image_key, source.units_key, source.num_units) == ("picture", "kind", 4)
    assert source.image_shape == (SIZE, SIZE, 3) and len(source.files) == 1
    assert tfds_input.resolve("tiny_shapes:1.0.0", data_dir, "test").files == source.files
    with pytest.raises(ValueError, match="has no split 'validation'; it has: test, train"):
        tfds_input.resolve("tiny_shapes", data_dir, "validation")
    with pytest.raises(ValueError, match="No prepared version of 'nothing'"):
        tfds_input.resolve("nothing", data_dir, "test")


@pytest.mark.slow
def test_a_tfds_split_is_explained_like_in_process(tmp_path, data_dir, model_path, model):
    job = run_job(tmp_path, None, model_path, "--tfds", "tiny_shapes", "--tfds_data_dir",
                  data_dir, "--split", "test", "--method", "gradcam")
    assert (job.summary.read, job.summary.explained, job.summary.dead_lettered) == (6, 6, 0)

    # The same examples, decoded by TFDS itself, explained in process.
    builder = tfds.builder_from_directory(tfds_input.dataset_directory("tiny_shapes", data_dir))
    files = [str(f) for f in builder.info.splits["test"].filepaths]
    records = [r.numpy() for r in tf.data.TFRecordDataset(files)]
    examples = [builder.info.features.deserialize_example_np(r) for r in records]
    images = np.stack([e["picture"] for e in examples]).astype(np.float32)
    labels = np.array([e["kind"] for e in examples])
    logits, maps = expected_explanations(model, images, labels)
    for i, record in enumerate(records):
        decoded = job.explanations[explain_io.record_id(record)]
        np.testing.assert_array_equal(decoded["units"], [labels[i]])  # the label feature
        assert_maps_match(decoded, maps[i], logits[i])


def test_a_damaged_tfds_shard_goes_through_the_same_reader(tmp_path, data_dir, model_path):
    import shutil

    copy = str(tmp_path / "tfds")
    shutil.copytree(data_dir, copy)
    source = tfds_input.resolve("tiny_shapes", copy, "test")
    (shard,) = source.files
    records = [r.numpy() for r in tf.data.TFRecordDataset(shard)]
    data = open(shard, "rb").read()
    offset = sum(len(r) + 16 for r in records[:4])
    open(shard, "wb").write(data[:offset + 10])  # cut inside the fifth record's header

    job = run_job(tmp_path, None, model_path, "--tfds", "tiny_shapes", "--tfds_data_dir",
                  copy, "--split", "test")
    assert sorted(job.explanations) == sorted(explain_io.record_id(r) for r in records[:4])
    (letter,) = job.dead_letters
    assert (letter.stage, letter.error) == ("read", (
        f"{shard}: unreadable from byte {offset} (the file ends inside a record header (10 of "
        "12 bytes)); the 4 records before it were read"))
    assert (job.summary.read, job.summary.explained, job.summary.dead_lettered) == (5, 4, 1)
