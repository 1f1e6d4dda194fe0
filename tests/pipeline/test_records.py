"""Input records through parse, decode and validate, without Beam: formats, ids, units and the
stage every kind of bad record is attributed to."""

import hashlib
import re

import numpy as np
import pytest
import tensorflow as tf

from explain_lib.io import record_id
from pipeline import demo
from pipeline.io.dead_letters import (
    DeadLetter,
    StageError,
    decode_dead_letter,
    encode_dead_letter,
)
from pipeline.worker import decoding as records_module
from pipeline.worker.decoding import decode_batch, decode_record, parse_record
from pipeline.worker.parsing import RecordSpec, check_record

SPEC = RecordSpec(image_size=(16, 16), channels=3, num_units=5, units_key="label")


@pytest.fixture(scope="module")
def image():
    return demo.make_shapes(1, seed=2, size=16)[0][0]


def test_png_is_exact_and_jpeg_matches_tensorflow(image):
    png = parse_record(demo.make_example(demo.encode_image(image, "png"), 3, "a"), SPEC)
    assert png.id == "a" and png.image.dtype == np.uint8  # exact pixels stay 8-bit
    np.testing.assert_array_equal(png.image, image)
    np.testing.assert_array_equal(png.units, [3])

    jpeg_bytes = demo.encode_image(image, "jpeg")
    jpeg = parse_record(demo.make_example(jpeg_bytes, None, "b"), SPEC)
    np.testing.assert_array_equal(jpeg.image, tf.io.decode_jpeg(jpeg_bytes, channels=3).numpy())
    assert jpeg.units is None  # no units: the model's top-K will be explained


def test_images_are_resized_to_the_model_and_to_its_channels(image):
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)  # 32x32
    record = parse_record(demo.make_example(demo.encode_image(big, "png")), SPEC)
    np.testing.assert_allclose(record.image, tf.image.resize(big, (16, 16)).numpy(), atol=1e-4)

    gray = parse_record(demo.make_example(demo.encode_image(image, "png")),
                        RecordSpec(image_size=(16, 16), channels=1, num_units=5))
    assert gray.image.shape == (16, 16, 1)


@pytest.mark.parametrize("layout", ["float_list", "int64_list", "uint8_bytes", "float32_bytes"])
def test_raw_tensors(image, layout):
    spec = RecordSpec(image_size=(16, 16), channels=3, num_units=5, image_format="auto",
                      image_shape=(16, 16, 3))
    values = {
        "float_list": image.astype(np.float32).ravel() + 0.5,
        "int64_list": image.astype(np.int64).ravel(),
        "uint8_bytes": image.tobytes(),
        "float32_bytes": (image.astype("<f4") + 0.5).tobytes(),
    }[layout]
    record = parse_record(demo.make_example(values), spec)
    shift = 0.5 if layout.startswith("float") else 0.0
    np.testing.assert_array_equal(record.image, image.astype(np.float32) + shift)
    assert record.image.dtype == (np.uint8 if layout == "uint8_bytes" else np.float32)


def test_ids_are_given_or_a_hash_of_the_record(image):
    serialized = demo.make_example(demo.encode_image(image, "png"), 1)
    record = parse_record(serialized, SPEC)
    assert record.id == hashlib.sha256(serialized).hexdigest()[:32] == record_id(serialized)
    assert parse_record(serialized, SPEC).id == record.id
    assert parse_record(demo.make_example(demo.encode_image(image, "png"), 1, 42),
                        SPEC).id == "42"
    # An empty id is no id: each such record gets its own hash, not one shared ''.
    unnamed = demo.make_example(demo.encode_image(image, "png"), 1, "")
    assert parse_record(unnamed, SPEC).id == record_id(unnamed) != record.id
    assert record.record == serialized


@pytest.mark.parametrize(
    "make, stage, message, found_by",
    [
        (lambda img: b"\x00\x01garbage", "parse", "not a tf.train.Example", "check"),
        (lambda img: demo.make_example(None, 1, "x"), "validate", "missing image feature",
         "check"),
        (lambda img: demo.make_example(b"GIF89a....", 1, "x"), "decode", "neither JPEG nor PNG",
         "check"),
        (lambda img: demo.make_example(demo.encode_image(img, "png"), 5, "x"), "validate",
         r"units \[5\] out of range", "check"),
        (lambda img: demo.make_example(demo.encode_image(img, "png"), [-1, 2], "x"), "validate",
         r"units \[-1\] out of range", "check"),
        (lambda img: demo.make_example(demo.encode_image(img, "png"), 0.5, "x"), "validate",
         "must be int64", "check"),
        (lambda img: demo.make_example(demo.encode_image(img, "png"), 1, 1.5), "validate",
         "id feature", "check"),
        # Broken compressed bytes are only found by decoding them, after the shuffle.
        (lambda img: demo.make_example(b"\xff\xd8\xff\xe0broken", 1, "x"), "decode",
         "cannot decode jpeg", "decode"),
        (lambda img: demo.make_example(demo.encode_image(img, "png")[:40], 1, "x"), "decode",
         "cannot decode png", "decode"),
    ],
)
def test_bad_records_fail_at_their_stage(image, make, stage, message, found_by):
    serialized = make(image)
    with pytest.raises(StageError, match=message) as failure:
        parse_record(serialized, SPEC)
    assert failure.value.stage == stage
    if found_by == "check":
        with pytest.raises(StageError, match=message):
            check_record(serialized, SPEC)
    else:
        checked = check_record(serialized, SPEC)
        assert checked.record == serialized and checked.id == "x"
        with pytest.raises(StageError, match=message) as failure:
            decode_record(checked, SPEC)
        assert failure.value.record_id == "x"
        # In a batch, the same record fails alone, with the same message.
        good = check_record(demo.make_example(demo.encode_image(image, "png"), 1, "g"), SPEC)
        _, errors = decode_batch([good, checked, good], SPEC)
        assert errors[0] is None and errors[2] is None
        assert errors[1].stage == stage and errors[1].record_id == "x"
        assert re.search(message, str(errors[1]))


def test_a_batch_longer_than_a_chunk_decodes_in_padded_chunks(monkeypatch):
    """A batch decodes in compiled calls of at most `DECODE_CHUNK` images, the last one
    padded to a power of two: each image comes back as it decodes alone, in order, and a
    corrupt one still fails alone."""
    monkeypatch.setattr(records_module, "DECODE_CHUNK", 4)
    monkeypatch.setattr(records_module, "_batch_decoders", {})
    spec = RecordSpec(image_size=(16, 16), channels=3, num_units=5)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (8 + i % 3 * 4, 12, 3), np.uint8) for i in range(11)]
    for image_format in ("png", "jpeg"):
        checked = [check_record(demo.make_example(demo.encode_image(img, image_format), 1,
                                                  f"{image_format}-{i}"), spec)
                   for i, img in enumerate(images)]
        decoded, errors = decode_batch(checked, spec)  # chunks of 4, 4 and 3 (padded)
        assert errors == [None] * 11 and decoded.shape == (11, 16, 16, 3)
        for i, record in enumerate(checked):
            np.testing.assert_allclose(decoded[i], decode_record(record, spec).image, rtol=0,
                                       atol=1e-4 * 255, err_msg=record.id)
        assert {key[3] for key in records_module._batch_decoders if key[0] == image_format
                } == {4}  # one traced chunk size for the 11 images
        broken = check_record(demo.make_example(demo.encode_image(images[0], image_format)[:60],
                                                1, "broken"), spec)
        _, errors = decode_batch(checked[:5] + [broken] + checked[5:], spec)
        assert [i for i, error in enumerate(errors) if error] == [5]
        assert errors[5].stage == "decode" and errors[5].record_id == "broken"


def test_images_at_the_models_size_decode_to_exact_uint8_pixels(monkeypatch):
    """A batch whose images are all stored at the model's size decodes to uint8, exactly
    the pixels each decodes to alone, padded chunk included (its filler images are at that
    size too); one image of another size in a chunk makes that chunk's images resized
    float32, the batch float32, and every image still its decoding alone."""
    monkeypatch.setattr(records_module, "DECODE_CHUNK", 4)
    monkeypatch.setattr(records_module, "_batch_decoders", {})
    spec = RecordSpec(image_size=(16, 12), channels=3, num_units=5)
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (16, 12, 3), np.uint8) for _ in range(7)]
    for image_format in ("png", "jpeg"):
        checked = [check_record(demo.make_example(demo.encode_image(img, image_format), 1,
                                                  f"{image_format}-{i}"), spec)
                   for i, img in enumerate(images)]
        decoded, errors = decode_batch(checked, spec)  # chunks of 4 and 3 (one filler)
        assert errors == [None] * 7 and decoded.dtype == np.uint8
        for i, record in enumerate(checked):
            np.testing.assert_array_equal(decoded[i], decode_record(record, spec).image,
                                          err_msg=record.id)
        if image_format == "png":
            np.testing.assert_array_equal(decoded, np.stack(images))
        other = rng.integers(0, 256, (10, 12, 3), np.uint8)
        checked[5] = check_record(demo.make_example(demo.encode_image(other, image_format), 1,
                                                    "other"), spec)
        mixed, errors = decode_batch(checked, spec)
        assert errors == [None] * 7 and mixed.dtype == np.float32
        np.testing.assert_array_equal(mixed[:4], decoded[:4])  # the first chunk, exact
        for i, record in enumerate(checked):
            np.testing.assert_allclose(mixed[i], decode_record(record, spec).image, rtol=0,
                                       atol=1e-4 * 255, err_msg=record.id)


def test_bad_raw_tensors_fail_validation(image):
    spec = RecordSpec(image_size=(16, 16), channels=3, num_units=5, image_format="raw",
                      image_shape=(16, 16, 3))
    with pytest.raises(StageError, match="does not match image_shape") as failure:
        parse_record(demo.make_example(image.tobytes()[:-3], None, "x"), spec)
    assert failure.value.stage == "validate" and failure.value.record_id == "x"
    pixels = image.astype(np.float32).ravel()
    pixels[7] = np.nan
    with pytest.raises(StageError, match="non-finite") as failure:
        parse_record(demo.make_example(pixels, None, "y"), spec)
    assert failure.value.stage == "validate"
    with pytest.raises(StageError, match="channels"):
        parse_record(demo.make_example(image[..., :1].tobytes(), None, "z"),
                     RecordSpec((16, 16), 3, 5, image_format="raw", image_shape=(16, 16, 1)))


def test_dead_letters_round_trip():
    letter = DeadLetter(b"\x00original", "decode", "cannot decode: ünïcode", "id-1")
    assert decode_dead_letter(encode_dead_letter(letter)) == letter


def test_spec_checks_its_options():
    with pytest.raises(ValueError, match="image_format"):
        RecordSpec((8, 8), 3, 2, image_format="bmp")
    with pytest.raises(ValueError, match="image_shape"):
        RecordSpec((8, 8), 3, 2, image_format="raw")


def test_a_batch_decodes_as_each_record_alone(image):
    """JPEG and PNG records of any size and channel count, and raw tensors, in one batch:
    `decode_batch` gives each image `decode_record` gives it, as float32."""
    spec = RecordSpec(image_size=(16, 16), channels=3, num_units=5, image_shape=(16, 16, 3))
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)  # resized to 16x16
    gray = image[..., :1]  # decoded to 3 channels
    records = [
        demo.make_example(demo.encode_image(image, "jpeg"), 1, "jpeg"),
        demo.make_example(demo.encode_image(big, "png"), 1, "big-png"),
        demo.make_example(demo.encode_image(image, "png"), 1, "png"),
        demo.make_example(image.astype(np.float32).ravel() + 0.5, 1, "raw"),
        demo.make_example(demo.encode_image(big, "jpeg"), 1, "big-jpeg"),
        demo.make_example(demo.encode_image(gray[..., 0], "png"), 1, "gray"),
    ]
    checked = [check_record(record, spec) for record in records]
    assert [c.image_format for c in checked] == ["jpeg", "png", "png", "raw", "jpeg", "png"]
    images, errors = decode_batch(checked, spec)
    assert errors == [None] * len(records) and images.dtype == np.float32
    for i, record in enumerate(checked):
        alone = decode_record(record, spec).image
        np.testing.assert_allclose(images[i], alone, rtol=0, atol=1e-4 * 255, err_msg=record.id)
    np.testing.assert_array_equal(images[2], image)  # PNG: exact pixels
    # A batch of one format (one compiled call, its result returned as made) decodes alike.
    pngs, errors = decode_batch([checked[i] for i in (1, 2, 5)], spec)
    assert errors == [None] * 3 and pngs.dtype == np.float32 and pngs.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(pngs, images[[1, 2, 5]])


# --- JPEGs decoded at a reduced scale -----------------------------------------------------------


@pytest.mark.parametrize("shape, size, ratio", [
    ((63, 64), (32, 32), 1), ((64, 63), (32, 32), 1),  # under twice the size: full size
    ((64, 64), (32, 32), 2), ((127, 300), (32, 32), 2),
    ((128, 130), (32, 32), 4), ((255, 256), (32, 32), 4),
    ((256, 256), (32, 32), 8), ((3000, 4000), (32, 32), 8),  # 8 at most
    ((375, 500), (224, 224), 1), ((768, 1024), (224, 224), 2), ((900, 1800), (224, 224), 4),
    ((64, 48), (16, 12), 4), ((64, 47), (16, 12), 2),  # each dimension against its own
])
def test_the_ratio_is_the_largest_that_keeps_the_models_size(shape, size, ratio):
    index = records_module.jpeg_ratio_index(tf.constant([*shape, 3]), size)
    assert records_module.JPEG_RATIOS[int(index)] == ratio


@pytest.mark.parametrize("shape", [(40, 56), (64, 64), (130, 96), (300, 260)])
def test_a_large_jpeg_decodes_at_its_ratio_and_at_least_the_models_size(shape):
    size = (32, 24)
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), np.uint8)
    jpeg = tf.io.encode_jpeg(pixels, quality=90).numpy()
    ratio = records_module.JPEG_RATIOS[int(records_module.jpeg_ratio_index(shape, size))]
    image = records_module.decode_jpeg_at(jpeg, 3, size).numpy()
    assert image.shape == (-(-shape[0] // ratio), -(-shape[1] // ratio), 3)  # ceil(side / r)
    assert image.shape[0] >= size[0] and image.shape[1] >= size[1]
    np.testing.assert_array_equal(image, tf.io.decode_jpeg(jpeg, channels=3, ratio=ratio))
    # In a batch, the compiled decoder decodes it alike, and resizes it as any other image.
    spec = RecordSpec(image_size=size, channels=3, num_units=5)
    checked = check_record(demo.make_example(jpeg, 1, "big"), spec)
    decoded, errors = decode_batch([checked, checked], spec)
    assert errors == [None, None]
    np.testing.assert_allclose(decoded[0], tf.image.resize(image, size).numpy(), rtol=0,
                               atol=1e-4 * 255)
    np.testing.assert_array_equal(decoded[0], decode_record(checked, spec).image)


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    """The demo's CNN at 32x32, trained on its shapes (all 32 held-out images right)."""
    import keras

    keras.utils.set_random_seed(0)
    images, labels = demo.make_shapes(1600, seed=0, size=32)
    model = demo.make_model((32, 32, 3), 4, width=16)
    demo.train_model(model, images, labels, epochs=12)
    path = str(tmp_path_factory.mktemp("trained") / "shapes32.keras")
    keras.saving.save_model(model, path)
    return path


MAPS_MEAN_DIFFERENCE = 0.025
MAPS_CORRELATION = 0.95
"""The bound on Grad-CAM maps (positive-normalised to [0, 1]) of JPEGs at 4x the model's
size decoded at 1/4 scale, against the same JPEGs decoded at full size and resized: at most
this mean absolute difference over the maps, at least this correlation for each map, and
the same predicted unit for every image (measured: 0.013, 0.97 and all 32)."""


@pytest.mark.slow
def test_maps_of_jpegs_decoded_at_a_reduced_scale_are_those_of_full_size_ones(trained_model):
    from pipeline.settings import Settings
    from pipeline.worker.explaining import Worker

    images, labels = demo.make_shapes(32, seed=21, size=32)
    large = tf.cast(tf.round(tf.image.resize(images, (128, 128))), tf.uint8).numpy()
    jpegs = [tf.io.encode_jpeg(image, quality=90).numpy() for image in large]
    spec = RecordSpec(image_size=(32, 32), channels=3, num_units=4)
    checked = [check_record(demo.make_example(jpeg, int(label), f"s{i}"), spec)
               for i, (jpeg, label) in enumerate(zip(jpegs, labels))]
    reduced, errors = decode_batch(checked, spec)
    assert errors == [None] * 32
    assert reduced.dtype == np.uint8  # at 1/4 scale, 128 is the model's 32: nothing to resize
    full = np.stack([tf.image.resize(tf.io.decode_jpeg(jpeg, channels=3), (32, 32)).numpy()
                     for jpeg in jpegs])  # what the job decoded before
    worker = Worker.load(Settings(model=trained_model, method="gradcam"))
    mine = worker.explain(reduced, [None] * 32)
    theirs = worker.explain(full, [None] * 32)
    units = np.stack([r.units for r in theirs])[:, 0]
    assert np.mean(units == labels) == 1.0  # a trained model: its maps mean something
    np.testing.assert_array_equal(np.stack([r.units for r in mine])[:, 0], units)
    maps, expected = (np.stack([r.maps for r in results]) for results in (mine, theirs))
    assert np.abs(maps - expected).mean() <= MAPS_MEAN_DIFFERENCE
    correlations = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(maps, expected)]
    assert min(correlations) >= MAPS_CORRELATION, correlations
