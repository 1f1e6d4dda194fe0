"""The explanation codec and record schema: round trips, error bounds, both decoders, readers."""

import os

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


@pytest.mark.parametrize("encoding", list(explain_io.ENCODINGS))
def test_a_batch_encodes_to_the_records_each_input_makes_alone(encoding):
    rng = np.random.default_rng(4)
    maps = rng.normal(0, 2, (5, 6, 7, 2)).astype(np.float32)
    maps[3] = 1.5  # a constant map pair among varied ones
    units = rng.integers(0, 1000, (5, 2))
    logits, probabilities = rng.normal(size=(2, 5, 2)).astype(np.float32)
    deletion = rng.random((5, 2)).astype(np.float32)
    ids = [f"r{i}" for i in range(4)] + [b"bytes-id"]
    batch = explain_io.encode_explanations(ids, units, logits, maps, encoding, (24, 28),
                                           probabilities, {"deletion": deletion})
    assert batch == [
        explain_io.encode_explanation(ids[i], units[i], logits[i], maps[i], encoding, (24, 28),
                                      probabilities[i], {"deletion": deletion[i]})
        for i in range(5)]
    again = explain_io.decode_explanation(batch[2])
    np.testing.assert_array_equal(again["units"], units[2])
    np.testing.assert_array_equal(again["metrics"]["deletion"], deletion[2])
    assert explain_io.encode_explanations([], np.zeros((0, 1)), np.zeros((0, 1)),
                                          np.zeros((0, 4, 4, 1))) == []


def test_a_batch_with_bad_maps_or_shapes_fails_naming_what():
    maps = np.zeros((3, 4, 4, 1), np.float32)
    maps[1, 2, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\) \(inputs \[1\] of the batch\)"):
        explain_io.encode_explanations(["a", "b", "c"], [[0]] * 3, [[0.0]] * 3, maps)
    with pytest.raises(ValueError, match="same N inputs and K units"):
        explain_io.encode_explanations(["a", "b"], [[0]] * 3, [[0.0]] * 3, np.zeros((3, 4, 4, 1)))
    with pytest.raises(ValueError, match="probabilities holds 2 values for 1 units"):
        explain_io.encode_explanations(["a"], [[0]], [[0.0]], np.zeros((1, 4, 4, 1)),
                                       probabilities=[[0.5, 0.5]])


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
    assert int(parsed["schema_version"]) == explain_io.SCHEMA_VERSION == 2
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
    example.features.feature["schema_version"].int64_list.value[0] = 3
    record = example.SerializeToString()
    with pytest.raises(ValueError, match="schema version 3.*reads versions 1 and 2"):
        explain_io.decode_explanation(record)
    path = _write(tmp_path / "future.tfrecord", [record])
    with pytest.raises(ValueError, match=r"future\.tfrecord: Explanation record has schema "
                       "version 3.*reads versions 1 and 2"):
        explain_io.read_explanations(path)  # the first record, read at once
    # Further into a file, the graph's own check stops the dataset.
    good = explain_io.encode_explanation("b", [0], [1.0], np.ones((2, 2, 1)))
    mixed = _write(tmp_path / "mixed.tfrecord", [good, record])
    with pytest.raises(tf.errors.InvalidArgumentError, match="unknown schema version"):
        list(explain_io.read_explanations(mixed))


def _v1_record(record_id, units, logits, maps) -> bytes:
    """A record as schema v1 wrote it: version 1, no probabilities, no metrics (the v1
    writer's features, in its order)."""
    encoded = explain_io.encode_maps(maps)
    return explain_io.serialize_example([
        ("schema_version", "int64", [1]), ("id", "bytes", [record_id.encode()]),
        ("units", "int64", units), ("logits", "float", logits),
        ("maps", "bytes", [encoded.data]), ("map_shape", "int64", encoded.shape),
        ("map_encoding", "bytes", [b"png8"]), ("map_min", "float", encoded.map_min),
        ("map_max", "float", encoded.map_max), ("input_size", "int64", encoded.shape[:2]),
    ])


def test_schema_v2_probabilities_and_metrics_and_v1_records_still_read(tmp_path):
    maps = _maps(3, (5, 6, 2))
    v2 = explain_io.encode_explanation(
        "new", [2, 0], [1.5, 0.5], maps, probabilities=[0.6, 0.25],
        metrics={"deletion": [0.125, 0.5], "pointing_game": [1.0, np.nan]})
    v1 = _v1_record("old", [1, 3], [2.0, -1.0], maps)
    decoded = explain_io.decode_explanation(v2)
    np.testing.assert_array_equal(decoded["probabilities"], np.float32([0.6, 0.25]))
    assert sorted(decoded["metrics"]) == ["deletion", "pointing_game"]
    np.testing.assert_array_equal(decoded["metrics"]["deletion"], [0.125, 0.5])
    np.testing.assert_array_equal(decoded["metrics"]["pointing_game"], [1.0, np.nan])
    old = explain_io.decode_explanation(v1)
    assert old["id"] == "old" and old["metrics"] == {}
    assert old["probabilities"].shape == (2,) and np.isnan(old["probabilities"]).all()
    np.testing.assert_array_equal(old["maps"], decoded["maps"])

    # The tf.data reader: both versions in one file; metrics asked for by name.
    path = _write(tmp_path / "mixed.tfrecord", [v2, v1])
    new_row, old_row = explain_io.read_explanations(
        path, metrics=["deletion", "pointing_game"]).as_numpy_iterator()
    np.testing.assert_array_equal(new_row["probabilities"], np.float32([0.6, 0.25]))
    np.testing.assert_array_equal(new_row["metrics"]["deletion"], [0.125, 0.5])
    assert np.isnan(old_row["probabilities"]).all()
    assert np.isnan(old_row["metrics"]["deletion"]).all()
    np.testing.assert_array_equal(old_row["units"], [1, 3])
    assert "metrics" not in next(iter(explain_io.read_explanations(path)))

    # With TensorFlow alone: the documented feature names.
    parsed = tf.io.parse_single_example(v2, {**explain_io.FEATURES,
                                             **explain_io.metric_features(["deletion"])})
    assert int(parsed["schema_version"]) == 2
    np.testing.assert_array_equal(tf.sparse.to_dense(parsed["metrics/deletion"]), [0.125, 0.5])
    with pytest.raises(ValueError, match="deletion holds 1 values for 2 units"):
        explain_io.encode_explanation("x", [1, 2], [0.5, 0.2], maps,
                                      metrics={"deletion": [0.5]})


def test_missing_files_and_compression_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="No files match"):
        explain_io.read_explanations(str(tmp_path / "nothing-*"))
    assert explain_io.compression_of("a/b-00000-of-00001.tfrecord.gz") == "GZIP"
    assert explain_io.compression_of("a.zlib") == "ZLIB"
    assert explain_io.compression_of("a.tfrecord") == ""


# --- every encoding, every size -----------------------------------------------------------------

ENCODINGS = ["png8", "png16", "float16", "raw32"]


def _bound(encoding, maps):
    """The documented error bound of each encoding, per map, from the maps themselves."""
    low, high = maps.min(axis=(0, 1)), maps.max(axis=(0, 1))
    magnitude = np.maximum(np.abs(low), np.abs(high))
    return {"png8": (high - low) / 255, "png16": (high - low) / 65535,
            "float16": magnitude * 2.0**-11 + 2.0**-25, "raw32": np.zeros_like(low)}[encoding]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("shape", [(9, 13, 3), (1, 1, 1), (7, 7, 2), (32, 32, 1)])
def test_every_encoding_round_trips_within_its_bound(encoding, shape):
    maps = _maps(shape=shape)
    encoded = explain_io.encode_maps(maps, encoding)
    decoded = explain_io.decode_maps(encoded)
    assert decoded.shape == shape and decoded.dtype == np.float32
    error = np.abs(decoded - maps).max(axis=(0, 1))
    bound = _bound(encoding, maps)
    np.testing.assert_allclose(explain_io.max_decode_error(encoded), bound, rtol=1e-5)
    assert np.all(error <= bound * (1 + 1e-4) + 1e-7), (error, bound)
    if encoding == "raw32":
        np.testing.assert_array_equal(decoded, maps)
    # The graph decoder (what tf.data readers run) agrees with the numpy one exactly.
    record = explain_io.encode_explanation("m", range(shape[2]), np.zeros(shape[2]), maps,
                                           encoding)
    in_graph = explain_io.parse_explanation(tf.constant(record))["maps"].numpy()
    np.testing.assert_array_equal(in_graph, decoded)


def test_png16_is_finer_and_float16_keeps_relative_precision():
    maps = _maps(4, (16, 16, 2))
    error = {name: np.abs(explain_io.decode_maps(explain_io.encode_maps(maps, name)) - maps)
             .max(axis=(0, 1)) for name in ENCODINGS}
    assert np.all(error["raw32"] == 0) and np.all(error["png16"] > 0)
    assert np.all(error["png16"] < error["png8"] / 100)
    # A range quantiser spends its levels on the peak; float16 keeps ~3 digits of every
    # value, so small values next to a large peak survive it, and not png8.
    peaked = np.linspace(1e-3, 5e-3, 16, dtype=np.float32).reshape(4, 4, 1)
    peaked[0, 0] = 50.0
    small = {name: explain_io.decode_maps(explain_io.encode_maps(peaked, name))[1:, 1:]
             for name in ("png8", "float16")}
    assert np.all(np.abs(small["float16"] - peaked[1:, 1:]) <= peaked[1:, 1:] * 2**-11)
    assert np.ptp(small["png8"]) == 0  # all on level 0: the small values' order is lost


def test_float16_rejects_what_it_cannot_hold_and_corrupt_bytes_fail_clearly():
    with pytest.raises(ValueError, match="float16 holds values up to 65504"):
        explain_io.encode_maps(np.full((2, 2, 1), 1e6, np.float32), "float16")
    encoded = explain_io.encode_maps(np.ones((4, 4, 2), np.float32), "raw32")
    bad = explain_io.EncodedMaps(encoded.data[:-4], encoded.shape, "raw32", encoded.map_min,
                                 encoded.map_max)
    with pytest.raises(ValueError, match="raw32 maps hold 124 bytes, but map_shape"):
        explain_io.decode_maps(bad)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_native_maps_resize_on_read_to_the_size_asked(encoding):
    """A 7x7 map stored with the explained image's size (28x36) comes back at that size on
    request, equal to resizing the original (what the engine would have stored) within the
    encoding's bound: interpolation never widens it."""
    rng = np.random.default_rng(5)
    native = rng.uniform(0, 1, (7, 7, 2)).astype(np.float32)
    record = explain_io.encode_explanation("n", [1, 2], [0.5, 0.25], native, encoding,
                                           input_size=(28, 36))
    bound = _bound(encoding, native) * (1 + 1e-4) + 1e-6
    for size, expected_shape in [("stored", (7, 7, 2)), ("input", (28, 36, 2)),
                                 ((14, 10), (14, 10, 2)), ([7, 7], (7, 7, 2))]:
        decoded = explain_io.decode_explanation(record, size=size)
        maps = decoded["maps"]
        assert maps.shape == expected_shape and maps.dtype == np.float32
        reference = tf.image.resize(native, expected_shape[:2]).numpy()
        assert np.all(np.abs(maps - reference).max(axis=(0, 1)) <= bound)
        np.testing.assert_array_equal(decoded["stored_shape"], [7, 7, 2])
        np.testing.assert_array_equal(decoded["input_size"], [28, 36])
        in_graph = explain_io.parse_explanation(tf.constant(record), size)["maps"].numpy()
        np.testing.assert_allclose(in_graph, maps, atol=1e-6)


def test_read_explanations_at_a_fixed_size_batches_records_of_any_stored_size(tmp_path):
    records = [
        explain_io.encode_explanation("a", [0], [1.0], _maps(1, (7, 7, 1)), "png8", (32, 32)),
        explain_io.encode_explanation("b", [1], [2.0], _maps(2, (32, 32, 1)), "float16"),
        explain_io.encode_explanation("c", [2], [3.0], _maps(3, (4, 5, 1)), "raw32", (16, 20)),
    ]
    path = _write(tmp_path / "sizes.tfrecord.gz", records, "GZIP")
    batch = next(iter(explain_io.read_explanations(path, size=(16, 16)).batch(3)))
    assert batch["maps"].shape == (3, 16, 16, 1)
    stored = [r["maps"].shape for r in explain_io.read_explanations(path)]
    assert stored == [(7, 7, 1), (32, 32, 1), (4, 5, 1)]
    at_input = [r["maps"].shape for r in explain_io.read_explanations(path, size="input")]
    assert at_input == [(32, 32, 1), (32, 32, 1), (16, 20, 1)]
    with pytest.raises(ValueError, match='size must be "stored", "input" or'):
        explain_io.read_explanations(path, size="native")


def test_a_record_without_input_size_reads_at_its_stored_size():
    example = tf.train.Example.FromString(
        explain_io.encode_explanation("old", [0], [1.0], _maps(0, (6, 8, 1))))
    del example.features.feature["input_size"]
    record = example.SerializeToString()
    assert explain_io.decode_explanation(record, "input")["maps"].shape == (6, 8, 1)
    assert explain_io.parse_explanation(tf.constant(record), "input")["maps"].shape == (6, 8, 1)


OUTPUTS_PAGE = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "outputs.md")


def page_dataset(encoding, directory):
    """The plain-TensorFlow reader of docs/outputs.md ("Output schema v2"), taken from the
    page and run as written, with the encoding and the file pattern filled in."""
    text = open(OUTPUTS_PAGE, encoding="utf-8").read()
    block = text.split("Without explain_lib", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert 'ENCODING = "png8"' in block and '"out/expl-*.tfrecord.gz"' in block
    block = block.replace('ENCODING = "png8"', f"ENCODING = {encoding!r}").replace(
        '"out/expl-*.tfrecord.gz"', repr(str(directory / "expl-*.tfrecord.gz")))
    namespace = {}
    exec(block, namespace)  # noqa: S102 - the page's own code
    return namespace["dataset"]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_the_docs_read_every_encoding_with_tensorflow_alone(encoding, tmp_path):
    rows = [_maps(i, (5, 7, 3)) for i in range(3)]
    records = [explain_io.encode_explanation(f"r{i}", [0, 1, 2], [0.0, 1.0, 2.0], maps, encoding)
               for i, maps in enumerate(rows)]
    _write(tmp_path / "expl-00000-of-00001.tfrecord.gz", records, "GZIP")
    read = list(page_dataset(encoding, tmp_path).as_numpy_iterator())
    assert [record_id for record_id, _ in read] == [b"r0", b"r1", b"r2"]
    for (_, maps), record in zip(read, records):
        np.testing.assert_allclose(maps, explain_io.decode_explanation(record)["maps"],
                                   rtol=1e-6, atol=1e-7)


def test_unknown_encoding_in_a_record_fails_clearly(tmp_path):
    example = tf.train.Example.FromString(
        explain_io.encode_explanation("a", [0], [1.0], np.ones((2, 2, 1))))
    example.features.feature["map_encoding"].bytes_list.value[0] = b"webp"
    record = example.SerializeToString()
    with pytest.raises(ValueError, match="Unknown map encoding 'webp'"):
        explain_io.decode_explanation(record)
    path = _write(tmp_path / "webp.tfrecord", [record])
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown map encoding"):
        list(explain_io.read_explanations(path))


def test_input_ids_are_the_pipelines():
    from pipeline import demo

    with_id = demo.make_example(b"x", 1, "img-1")
    numeric = demo.make_example(b"x", 1, 42)
    without = demo.make_example(b"x", 1)
    for record, expected in [(with_id, "img-1"), (numeric, "42"),
                             (without, explain_io.record_id(without))]:
        assert explain_io.input_id(tf.train.Example.FromString(record), record) == expected
    assert len(explain_io.record_id(without)) == 32
    bad = demo.make_example(b"x", 1, [1.5])
    with pytest.raises(ValueError, match="must hold one bytes or int64 value"):
        explain_io.input_id(tf.train.Example.FromString(bad), bad)


def test_bytes_ids_have_one_text_form_each():
    """UTF-8 ids read as themselves; other bytes as "bytes:" and their hex, which no UTF-8 id
    reads as (one starting with "bytes:" gets the prefix twice); the bytes come back."""
    cases = {
        b"img-1": "img-1",
        "caf\u00e9".encode(): "caf\u00e9",
        b"\xff\xfeid": "bytes:fffe6964",
        b"\\xff\\xfeid": "\\xff\\xfeid",  # the 8 characters \xff\xfeid, as they are
        b"bytes:fffe6964": "bytes:bytes:fffe6964",
        b"bytes:": "bytes:bytes:",
        b"bytes:bytes:": "bytes:bytes:bytes:",
        b"bytes": "bytes",
        b"\x80": "bytes:80",
    }
    for value, text in cases.items():
        assert explain_io.text_id(value) == text
        assert explain_io.id_bytes(text) == value
    assert len(set(cases.values())) == len(cases)
    # Through the records, as the job names them.
    for value, text in cases.items():
        record = tf.train.Example(features=tf.train.Features(feature={"id": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[value]))})).SerializeToString()
        assert explain_io.input_id(tf.train.Example.FromString(record), record) == text


@pytest.mark.parametrize("encoding", ["png8", "png16"])
def test_each_map_gets_the_png_filter_that_suits_it_and_decodes_exactly(encoding):
    """Maps that change little from pixel to pixel along rows want Sub, along columns Up;
    both decoders (PIL and TensorFlow) undo every filter exactly, noise included."""
    import struct
    import zlib

    rng = np.random.default_rng(9)
    top = 255 if encoding == "png8" else 65535
    step = 1 if encoding == "png8" else 257

    # 48x64 maps: more than SMALL_PNG_BYTES, so that the filter is chosen; smaller maps all
    # get Up (the last case).
    assert 48 * 64 > explain_io.SMALL_PNG_BYTES >= 12 * 16 * 2

    def walks(axis, shape=(48, 64, 1)):  # independent random walks along `axis`, mid-range
        steps = rng.integers(-1, 2, shape) * step
        return (top // 2 + np.cumsum(steps, axis=axis)).astype(np.float64)

    cases = {1: walks(1), 2: walks(0),
             None: rng.integers(0, top + 1, (48, 64, 1)).astype(np.float64),
             "small": walks(1, (12, 16, 1))}
    for expected_filter, levels in cases.items():
        levels[0, 0], levels[0, 1] = 0, top  # the full range: levels map to themselves
        maps = levels.astype(np.float32)
        encoded = explain_io.encode_maps(maps, encoding)
        np.testing.assert_array_equal(explain_io.decode_maps(encoded), maps)
        record = explain_io.encode_explanation("f", [0], [0.0], maps, encoding)
        np.testing.assert_array_equal(
            explain_io.parse_explanation(tf.constant(record))["maps"].numpy(), maps)
        # The filter type that starts each decompressed scanline: one for the whole map.
        length = struct.unpack(">I", encoded.data[33:37])[0]
        assert encoded.data[37:41] == b"IDAT"
        scanlines = zlib.decompress(encoded.data[41:41 + length])
        height, width = maps.shape[:2]
        stride = 1 + width * (1 if encoding == "png8" else 2)
        filters = {scanlines[i * stride] for i in range(height)}
        assert len(filters) == 1 and filters <= {0, 1, 2}
        if expected_filter == "small":
            assert filters == {2}
        elif expected_filter is not None:
            assert filters == {expected_filter}

    # Encoded as one batch, each map still gets its own filter: the same bytes as alone.
    large = np.stack([cases[1], cases[2], cases[None]]).astype(np.float32)
    batch = explain_io.get_encoding(encoding).encode(large)
    assert [stored.data for stored in batch] == [
        explain_io.encode_maps(maps, encoding).data for maps in large]


def test_examples_serialized_directly_parse_as_protobuf_builds_them():
    features = [
        ("id", "bytes", [b"r\x00\xffid", b""]),
        ("units", "int64", np.array([0, 3, 999_999_999_999, -1, -2**63], np.int64)),
        ("logits", "float", np.array([1.5, -2.25e-30, np.inf], np.float32)),
        ("empty_floats", "float", []),
        ("empty_ints", "int64", []),
        ("empty_bytes", "bytes", []),
        ("one", "int64", [1]),
    ]
    expected = tf.train.Example()
    for key, kind, values in features:
        feature = expected.features.feature[key]
        field = {"bytes": feature.bytes_list, "float": feature.float_list,
                 "int64": feature.int64_list}[kind]
        field.SetInParent()
        field.value.extend(list(values))
    parsed = tf.train.Example.FromString(explain_io.serialize_example(features))
    assert parsed == expected
    # ... and TensorFlow's own parser reads it.
    row = tf.io.parse_single_example(explain_io.serialize_example(features), {
        "units": tf.io.VarLenFeature(tf.int64), "id": tf.io.VarLenFeature(tf.string)})
    assert tf.sparse.to_dense(row["units"]).numpy().tolist() == [
        0, 3, 999_999_999_999, -1, -2**63]
