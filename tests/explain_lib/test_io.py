"""The explanation codec and record schema: round trips, error bounds, both decoders, readers."""

import numpy as np
import pytest
import tensorflow as tf

from explain_lib import io as explain_io


def _maps(seed=0, shape=(9, 13, 3)):
    rng = np.random.default_rng(seed)
    maps = rng.normal(0, 3, shape).astype(np.float32)
    maps[..., 0] = np.abs(maps[..., 0]) * 1e-4  # a tiny range
    return maps


def _write(path, records, compression=None):
    with tf.io.TFRecordWriter(str(path), compression) as writer:
        for record in records:
            writer.write(record)
    return str(path)


@pytest.mark.parametrize("shape", [(9, 13, 3), (1, 1, 1), (32, 32, 1), (7, 5, 20)])
def test_png8_round_trip_within_quantisation_error(shape):
    maps = _maps(shape=shape)
    encoded = explain_io.encode_maps(maps)
    decoded = explain_io.decode_maps(encoded)
    assert decoded.shape == shape and decoded.dtype == np.float32
    span = maps.max(axis=(0, 1)) - maps.min(axis=(0, 1))
    error = np.abs(decoded - maps).max(axis=(0, 1))
    # Rounding to the nearest of 256 levels: half a step, within the promised range / 255.
    assert np.all(error <= span / 510 * (1 + 1e-4) + 1e-7)
    np.testing.assert_allclose(explain_io.max_decode_error(encoded), span / 255, rtol=1e-5)
    # Each map keeps its own extremes exactly (levels 0 and 255).
    np.testing.assert_array_equal(decoded.min(axis=(0, 1)), maps.min(axis=(0, 1)))
    np.testing.assert_allclose(decoded.max(axis=(0, 1)), maps.max(axis=(0, 1)), rtol=1e-6)


def test_png8_is_compact_and_lossless_container():
    # A smooth map compresses well: far below raw float32.
    y, x = np.mgrid[0:224, 0:224]
    smooth = np.exp(-((y - 80) ** 2 + (x - 140) ** 2) / 2000.0)[..., None].astype(np.float32)
    encoded = explain_io.encode_maps(smooth)
    assert len(encoded.data) * 10 < smooth.nbytes
    # Quantised input survives exactly: the container adds no loss of its own.
    levels = np.random.default_rng(3).integers(0, 256, (16, 16, 2)).astype(np.float32)
    levels[0, 0] = 0
    levels[1, 1] = 255
    np.testing.assert_array_equal(explain_io.decode_maps(explain_io.encode_maps(levels)), levels)


def test_constant_and_negative_maps():
    maps = np.stack(
        [np.full((4, 6), -2.5), np.full((4, 6), 0.0), np.linspace(-3, -1, 24).reshape(4, 6)],
        axis=-1,
    ).astype(np.float32)
    decoded = explain_io.decode_maps(explain_io.encode_maps(maps))
    np.testing.assert_array_equal(decoded[..., 0], -2.5)
    np.testing.assert_array_equal(decoded[..., 1], 0.0)
    assert np.abs(decoded[..., 2] - maps[..., 2]).max() <= 2 / 255


def test_encode_rejects_bad_maps():
    with pytest.raises(ValueError, match="non-finite"):
        explain_io.encode_maps(np.array([[[np.nan]], [[1.0]]], np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        explain_io.encode_maps(np.full((2, 2, 1), np.inf, np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, K\)"):
        explain_io.encode_maps(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="Unknown map encoding 'jpeg'"):
        explain_io.encode_maps(np.zeros((4, 4, 1), np.float32), "jpeg")
    with pytest.raises(ValueError, match="same K units"):
        explain_io.encode_explanation("x", [1, 2], [0.5, 0.2], np.zeros((4, 4, 1)))


def test_record_round_trip_and_plain_tf_parsing():
    maps = _maps(1)
    record = explain_io.encode_explanation("img-7", [3, 0, 4], [1.5, -2.0, 0.25], maps)
    decoded = explain_io.decode_explanation(record)
    assert decoded["id"] == "img-7"
    np.testing.assert_array_equal(decoded["units"], [3, 0, 4])
    np.testing.assert_array_equal(decoded["logits"], np.float32([1.5, -2.0, 0.25]))
    assert decoded["map_encoding"] == "png8"
    assert np.all(np.abs(decoded["maps"] - maps) <= decoded["max_error"])

    # The schema is readable with nothing but TensorFlow and the documented features.
    parsed = tf.io.parse_single_example(record, explain_io.FEATURES)
    assert int(parsed["schema_version"]) == explain_io.SCHEMA_VERSION == 1
    assert parsed["map_encoding"].numpy() == b"png8"
    np.testing.assert_array_equal(parsed["map_shape"].numpy(), [9, 13, 3])
    stacked = tf.io.decode_png(parsed["maps"], channels=1).numpy()
    assert stacked.shape == (3 * 9, 13, 1)

    # The graph decoder (for tf.data) equals the numpy decoder exactly.
    in_graph = explain_io.parse_explanation(tf.constant(record))
    np.testing.assert_array_equal(in_graph["maps"].numpy(), decoded["maps"])
    assert in_graph["id"].numpy() == b"img-7"


def test_read_explanations_over_compressed_and_plain_files(tmp_path):
    rows = [(f"r{i}", [i % 4], [float(i)], _maps(i, (6, 8, 1))) for i in range(7)]
    records = [explain_io.encode_explanation(*row) for row in rows]
    _write(tmp_path / "expl-00000-of-00002.tfrecord.gz", records[:4], "GZIP")
    _write(tmp_path / "expl-00001-of-00002.tfrecord", records[4:])
    dataset = explain_io.read_explanations(str(tmp_path / "expl-*"))
    read = list(dataset.as_numpy_iterator())
    assert [r["id"] for r in read] == [row[0].encode() for row in rows]
    for r, (_, units, logits, maps) in zip(read, rows):
        assert r["maps"].dtype == np.float32 and r["maps"].shape == (6, 8, 1)
        np.testing.assert_array_equal(r["units"], units)
        np.testing.assert_array_equal(r["logits"], logits)
        assert np.abs(r["maps"] - maps).max() <= np.ptp(maps) / 255
    assert list(explain_io.iterate_records(str(tmp_path / "expl-*"))) == records


def test_readers_reject_unknown_schema_version(tmp_path):
    example = tf.train.Example.FromString(
        explain_io.encode_explanation("a", [0], [1.0], np.ones((2, 2, 1)))
    )
    example.features.feature["schema_version"].int64_list.value[0] = 2
    record = example.SerializeToString()
    with pytest.raises(ValueError, match="schema version 2"):
        explain_io.decode_explanation(record)
    path = _write(tmp_path / "future.tfrecord", [record])
    with pytest.raises(tf.errors.InvalidArgumentError, match="unknown schema version"):
        list(explain_io.read_explanations(path))


def test_missing_files_and_compression_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="No files match"):
        explain_io.read_explanations(str(tmp_path / "nothing-*"))
    assert explain_io.compression_of("a/b-00000-of-00001.tfrecord.gz") == "GZIP"
    assert explain_io.compression_of("a.zlib") == "ZLIB"
    assert explain_io.compression_of("a.tfrecord") == ""
