"""The whole job on DirectRunner, on real TFRecord files: every input layout, with and without
ids and units, results equal to in-process `explain_lib.explain`, dead letters for every kind
of bad record, and the same output whichever runner runs it."""

import hashlib

import apache_beam as beam
import keras
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from explain_lib import io as explain_io
from pipeline import demo
from pipeline.job.launcher import local_runner
from pipeline.job.transforms import Explain
from pipeline.settings import Settings
from tests.pipeline.conftest import (
    RUNNERS_FLAGS,
    SIZE,
    assert_maps_match,
    assert_same_output_as_direct,
    expected_explanations,
    run_job,
    write,
)


def _decoded_jpegs(records):
    return np.stack([
        tf.io.decode_jpeg(tf.train.Example.FromString(r).features.feature["image"]
                          .bytes_list.value[0], channels=3).numpy()
        for r in records
    ]).astype(np.float32)


@pytest.mark.slow
def test_jpeg_with_ids_and_units_equals_in_process_explain(tmp_path, model_path, model, shapes):
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(im), int(label), f"img-{i}")
               for i, (im, label) in enumerate(zip(images, labels))]
    # Two input files, one GZIP-compressed: the reader takes both.
    pattern = str(tmp_path / "in-*")
    write(tmp_path, "in-0", records[:7])
    write(tmp_path, "in-1", records[7:], "GZIP")

    job = run_job(tmp_path, pattern, model_path, "--method", "gradcam", "--units_key", "label")

    assert (job.summary.read, job.summary.explained, job.summary.dead_lettered) == (12, 12, 0)
    assert job.summary.balanced and job.dead_letters == []
    assert sorted(job.explanations) == sorted(f"img-{i}" for i in range(12))
    logits, maps = expected_explanations(model, _decoded_jpegs(records), labels)
    for i in range(12):
        decoded = job.explanations[f"img-{i}"]
        np.testing.assert_array_equal(decoded["units"], [labels[i]])
        # --map_size auto: Grad-CAM is stored at its feature map's resolution (32 / 4).
        assert decoded["maps"].shape == (SIZE // 4, SIZE // 4, 1)
        np.testing.assert_array_equal(decoded["input_size"], [SIZE, SIZE])
        assert_maps_match(decoded, maps[i], logits[i])
    # The reader the README documents returns the same thing.
    read = {r["id"].decode(): r for r in explain_io.read_explanations(job.output + "-*")
            .as_numpy_iterator()}
    np.testing.assert_array_equal(read["img-3"]["maps"], job.explanations["img-3"]["maps"])


@pytest.mark.slow
def test_png_without_ids_or_units_gets_hash_ids_and_top_k(tmp_path, model_path, model, shapes):
    images, _ = shapes
    records = [demo.make_example(demo.encode_image(im, "png")) for im in images[:6]]
    job = run_job(tmp_path, write(tmp_path, "png", records), model_path,
                  "--method", "gradcam", "--top_k", "2", "--map_size", "input",
                  "--method_params", '{"postprocessing": "positive_normalize"}')

    ids = [hashlib.sha256(r).hexdigest()[:32] for r in records]
    assert sorted(job.explanations) == sorted(ids)
    x = images[:6].astype(np.float32)  # PNG is lossless
    top2 = np.argsort(-model.predict(x, verbose=0), axis=1, kind="stable")[:, :2]
    logits, maps = expected_explanations(model, x, top2, map_size="input",
                                         method_params={"postprocessing": "positive_normalize"})
    for i, record_id in enumerate(ids):
        decoded = job.explanations[record_id]
        np.testing.assert_array_equal(decoded["units"], top2[i])
        assert decoded["maps"].shape == (SIZE, SIZE, 2)
        assert decoded["maps"].min() >= 0 and decoded["maps"].max() <= 1 + 1e-6
        assert_maps_match(decoded, maps[i], logits[i])

    # Same records, same ids, on every run.
    again = run_job(tmp_path, write(tmp_path, "png", records), model_path, "--method", "gradcam",
                    name="again")
    assert sorted(again.explanations) == sorted(ids)


@pytest.mark.slow
def test_raw_tensors_resized_to_the_model(tmp_path, model_path, model, shapes):
    """Raw float lists, raw uint8 bytes and raw float32 bytes at 24x24: resized to 32x32."""
    images, labels = shapes
    small = tf.image.resize(images[:6].astype(np.float32), (24, 24)).numpy()
    layouts = [small[0].ravel(), np.rint(small[1]).astype(np.uint8).tobytes(),
               small[2].astype("<f4").tobytes(), small[3].ravel(),
               np.rint(small[4]).astype(np.uint8).tobytes(), small[5].astype("<f4").tobytes()]
    records = [demo.make_example(values, int(labels[i]), f"raw-{i}")
               for i, values in enumerate(layouts)]
    job = run_job(tmp_path, write(tmp_path, "raw", records), model_path,
                  "--method", "gradients", "--units_key", "label",
                  "--image_format", "raw", "--image_shape", "24,24,3")

    assert job.summary.explained == 6 and job.dead_letters == []
    sources = small.copy()
    sources[[1, 4]] = np.rint(sources[[1, 4]])
    x = tf.image.resize(sources, (SIZE, SIZE)).numpy()
    logits, maps = expected_explanations(model, x, labels[:6], method="gradients")
    for i in range(6):
        assert_maps_match(job.explanations[f"raw-{i}"], maps[i], logits[i])


@pytest.mark.slow
def test_good_and_corrupt_records_in_one_file(tmp_path, shapes):
    images, labels = shapes
    # Without its Rescaling layer the model overflows on huge (finite) pixels: an explain
    # failure of one record inside a batch of good ones.
    keras.utils.set_random_seed(3)
    model = demo.make_model((SIZE, SIZE, 3), 4, width=4, rescale=False)
    model_path = str(tmp_path / "unscaled.keras")
    keras.saving.save_model(model, model_path)
    good = [demo.make_example(demo.encode_image(im), int(label), f"good-{i}")
            for i, (im, label) in enumerate(zip(images, labels))]
    huge = np.full((SIZE, SIZE, 3), 3e38, np.float32)  # finite pixels, overflowing activations
    bad = {
        "parse": [b"not a protobuf \xff\xfe", b"\x0a\x05broken"],
        "decode": [demo.make_example(b"\xff\xd8\xff\xe0 truncated jpeg", 1, "bad-jpeg"),
                   demo.make_example(demo.encode_image(images[1], "png")[:60], 1, "bad-png")],
        "validate": [demo.make_example(demo.encode_image(images[0]), 9, "bad-unit"),
                     demo.make_example(None, 1, "no-image"),
                     demo.make_example(np.full(SIZE * SIZE * 3, np.nan, np.float32), 1, "nan"),
                     # Neither JPEG nor PNG: with --image_shape, a raw tensor of the wrong size.
                     demo.make_example(b"neither jpeg nor png", 1, "bad-raw")],
        "explain": [demo.make_example(huge.ravel(), 1, "overflow")],
    }
    # Bad records interleaved with good ones, so they share RunInference batches.
    mixed = []
    for i, record in enumerate(good):
        mixed.append(record)
        flat = [r for stage in bad.values() for r in stage]
        if i < len(flat):
            mixed.append(flat[i])
    job = run_job(tmp_path, write(tmp_path, "mixed", mixed), model_path,
                  "--method", "gradcam", "--units_key", "label",
                  "--image_shape", f"{SIZE},{SIZE},3")

    # Every good record exactly once, and correct.
    assert sorted(job.explanations) == sorted(f"good-{i}" for i in range(12))
    logits, maps = expected_explanations(model, _decoded_jpegs(good), labels)
    for i in range(12):
        assert_maps_match(job.explanations[f"good-{i}"], maps[i], logits[i])
    # Every bad record in the dead letters, with its original bytes and the right stage.
    by_record = {letter.record: letter for letter in job.dead_letters}
    assert len(job.dead_letters) == len(by_record) == 9
    for stage, records in bad.items():
        for record in records:
            assert by_record[record].stage == stage, (by_record[record], stage)
            error = by_record[record].error
            assert error and "\n" not in error and len(error) < 300, error  # one line
    assert by_record[bad["explain"][0]].id == "overflow"
    assert "non-finite" in by_record[bad["explain"][0]].error
    assert "out of range" in by_record[bad["validate"][0]].error
    # The counters agree with the files.
    summary = job.summary
    assert summary.read == 21 and summary.explained == 12 and summary.balanced
    assert summary.dead_letters == {"read": 0, "parse": 2, "decode": 2, "validate": 4,
                                    "explain": 1, "encode": 0}


def test_explain_transform_inside_another_pipeline(model_path, model, shapes):
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(im, "png"), int(label), f"p{i}")
               for i, (im, label) in enumerate(zip(images[:4], labels[:4]))] + [b"junk"]
    logits, maps = expected_explanations(model, images[:4].astype(np.float32), labels[:4])

    def summarize(record):
        decoded = explain_io.decode_explanation(record)
        i = int(decoded["id"][1:])
        error = np.abs(decoded["maps"] - maps[i]).max()
        return decoded["id"], decoded["units"].tolist(), bool(error <= np.ptp(maps[i]) / 200)

    with beam.Pipeline(runner=local_runner(PipelineOptions())) as p:
        # Records one per element, from elsewhere, become the lists Explain takes.
        result = (p | beam.Create(records) | beam.BatchElements()
                  | Explain(Settings(model=model_path, units_key="label", batch_size=2)))
        assert_that(result.explanations | beam.FlatMap(lambda records: records)
                    | beam.Map(summarize),
                    equal_to([(f"p{i}", [int(labels[i])], True) for i in range(4)]),
                    label="explanations")
        assert_that(result.dead_letters | "Letters" >> beam.FlatMap(lambda letters: letters)
                    | "Stages" >> beam.Map(lambda r: tf.train.Example.FromString(r)
                                                    .features.feature["stage"].bytes_list.value[0]),
                    equal_to([b"parse"]), label="dead_letters")


def test_explain_checks_its_arguments_before_running(model_path):
    with pytest.raises(ValueError, match="Unknown explaining method 'gradkam'"):
        Explain(Settings(model=model_path, method="gradkam"))
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        Explain(Settings(model=model_path, method="gradcam", activation_layer="nope"))
    with pytest.raises(ValueError, match="differs from the model's input size"):
        Explain(Settings(model=model_path, method="gradcam", image_size=(64, 64)))
    with pytest.raises(ValueError, match="Unknown map encoding"):
        Explain(Settings(model=model_path, method="gradcam", map_encoding="webp"))
    with pytest.raises(ValueError, match="Unknown preprocessing"):
        Explain(Settings(model=model_path, method="gradcam", preprocess="resnet51"))

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(2, 3)(inputs)
    any_size = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    path = model_path.replace("tiny.keras", "any_size.keras")
    keras.saving.save_model(any_size, path)
    with pytest.raises(ValueError, match="pass --image_size"):
        Explain(Settings(model=path, method="gradcam"))
    assert Explain(Settings(model=path, image_size=(20, 24))).spec.image_size == (20, 24)


@pytest.mark.parametrize(
    "runner_flags",
    [
        ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
        # Two bundles at once in one process, on the one model both threads share.
        ["--direct_num_workers=2", "--direct_running_mode=multi_threading"],
        ["--runner=PortableRunner", "--job_endpoint=embed"],
    ],
    ids=["multi_processing", "multi_threading", "portable_embed"],
)
@pytest.mark.slow
def test_other_runners_give_the_same_output_set(tmp_path, model_path, runners_input,
                                                direct_runners_job, runner_flags):
    pattern, records = runners_input
    other = run_job(tmp_path, pattern, model_path, *RUNNERS_FLAGS, *runner_flags, name="other")
    assert_same_output_as_direct(other, direct_runners_job, records)
