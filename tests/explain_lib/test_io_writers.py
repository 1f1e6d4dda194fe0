"""The hand-written writers of explain_lib.io against the libraries they stand in for: PNG files
that `tf.io.decode_png` reads as it reads `tf.io.encode_png`'s, and `tf.train.Example` bytes
that are protobuf's own (`SerializeToString(deterministic=True)`) entry for entry."""

import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf

from explain_lib import io as explain_io
from explain_lib.io.png import SMALL_PNG_BYTES, grayscale_pngs
from explain_lib.io.wire import serialize_example

# --- PNG ---------------------------------------------------------------------------------------


def _chunks(png: bytes):
    """(type, payload) of every chunk of `png`, each chunk's CRC checked."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    at, chunks = 8, []
    while at < len(png):
        (length,) = struct.unpack(">I", png[at:at + 4])
        kind, payload = png[at + 4:at + 8], png[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", png[at + 8 + length:at + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        chunks.append((kind, payload))
        at += 12 + length
    return chunks


def _level_images(bits, shape, rng):
    """Images (N, H, W) of 2**bits levels that favour each PNG filter: noise (None), random
    walks along rows (Sub) and along columns (Up), and a constant image."""
    top = 2**bits - 1
    dtype = np.uint8 if bits == 8 else np.uint16

    def walks(axis):
        steps = rng.integers(-1, 2, shape) * (1 if bits == 8 else 257)
        return np.clip(top // 2 + np.cumsum(steps, axis=axis), 0, top)

    return np.stack([rng.integers(0, top + 1, shape), walks(1), walks(0),
                     np.full(shape, top // 3)]).astype(dtype)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 7), (12, 16), (48, 64), (224, 224)])
def test_png_files_decode_as_the_libraries_own(bits, shape):
    """Every file, alone or in a batch, is a valid grayscale PNG of the image's size and
    depth that `tf.io.decode_png` reads back to the same levels as the file
    `tf.io.encode_png` writes of them (the reference)."""
    images = _level_images(bits, shape, np.random.default_rng(bits + shape[0]))
    dtype = tf.uint8 if bits == 8 else tf.uint16
    if shape == (48, 64):
        assert shape[0] * shape[1] * bits // 8 > SMALL_PNG_BYTES  # the filter is chosen
    batch = grayscale_pngs(images)
    for image, png in zip(images, batch):
        assert grayscale_pngs(image[None]) == [png]  # a batch writes each file as alone
        chunks = _chunks(png)
        assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
        assert chunks[0][1] == struct.pack(">IIBBBBB", shape[1], shape[0], bits, 0, 0, 0, 0)
        decoded = tf.io.decode_png(png, channels=1, dtype=dtype)
        reference = tf.io.decode_png(tf.io.encode_png(image[..., None]), channels=1,
                                     dtype=dtype)
        assert decoded.dtype == reference.dtype and decoded.shape == (*shape, 1)
        np.testing.assert_array_equal(decoded.numpy(), reference.numpy())
        np.testing.assert_array_equal(decoded.numpy()[..., 0], image)


# --- tf.train.Example --------------------------------------------------------------------------


def _entries(serialized: bytes):
    """The serialized map entries (key and Feature) of a serialized Example, in order."""

    def varint(at):
        value = shift = 0
        while True:
            byte = serialized[at]
            value, shift, at = value | (byte & 0x7F) << shift, shift + 7, at + 1
            if byte < 0x80:
                return value, at

    assert serialized[0] == 0x0A  # Example.features
    length, at = varint(1)
    assert at + length == len(serialized)
    entries = []
    while at < len(serialized):
        start = at
        assert serialized[at] == 0x0A  # Features.feature, one map entry
        length, at = varint(at + 1)
        at += length
        entries.append(serialized[start:at])
    return entries


def _example(features) -> tf.train.Example:
    """`features` (key, kind, values) as protobuf builds the Example."""
    example = tf.train.Example()
    for key, kind, values in features:
        feature = example.features.feature[key]
        field = {"bytes": feature.bytes_list, "float": feature.float_list,
                 "int64": feature.int64_list}[kind]
        field.SetInParent()
        field.value.extend(list(values))
    return example


FEATURES = [
    ("id", "bytes", [b"r\x00\xffid", b""]),
    ("units", "int64", np.array([0, 3, 127, 128, 999_999_999_999, -1, -2**63], np.int64)),
    ("logits", "float", np.array([1.5, -2.25e-30, np.inf, -0.0], np.float32)),
    ("empty_floats", "float", []),
    ("empty_ints", "int64", []),
    ("empty_bytes", "bytes", []),
    ("one", "int64", [1]),
    ("long bytes", "bytes", [bytes(range(256)) * 70, b"x" * 127, b"y" * 128]),
    ("many floats", "float", np.linspace(-1, 1, 5000, dtype=np.float32)),
    ("caf\u00e9/k" + "e" * 130, "int64", [2**31, -2**31]),
]


def test_examples_are_protobufs_deterministic_bytes_in_key_order():
    """Given the features in key order, the bytes are those of protobuf's deterministic
    serialization exactly; each feature alone too (the writer keeps the order given)."""
    in_key_order = sorted(FEATURES, key=lambda feature: feature[0])
    assert serialize_example(in_key_order) == _example(FEATURES).SerializeToString(
        deterministic=True)
    for feature in FEATURES:
        assert serialize_example([feature]) == _example([feature]).SerializeToString(
            deterministic=True)
    assert tf.train.Example.FromString(serialize_example(FEATURES)) == _example(FEATURES)


@pytest.mark.parametrize("encoding", list(explain_io.ENCODINGS))
def test_records_are_protobufs_entries_and_decode_as_its_serialization(encoding):
    """A batch of the job's records: each parses to an Example whose deterministic
    serialization holds the same entries, byte for byte (in key order, where the writer
    keeps the schema's), and reads the same through both decoders."""
    rng = np.random.default_rng(7)
    maps = rng.normal(0, 2, (3, 9, 11, 2)).astype(np.float32)
    records = explain_io.encode_explanations(
        ["img-1", b"\xff\xfe", "caf\u00e9"], rng.integers(0, 2**40, (3, 2)),
        rng.normal(size=(3, 2)), maps, encoding, (224, 224),
        probabilities=rng.random((3, 2)),
        metrics={"deletion": rng.random((3, 2)), "pointing_game": [[1.0, np.nan]] * 3})
    for record in records:
        deterministic = tf.train.Example.FromString(record).SerializeToString(
            deterministic=True)
        assert record != deterministic  # the schema's order of features, not the keys'
        assert sorted(_entries(record)) == sorted(_entries(deterministic))
        ours, theirs = (explain_io.decode_explanation(r, "input")
                        for r in (record, deterministic))
        assert ours.keys() == theirs.keys() and ours["id"] == theirs["id"]
        for key in ("units", "logits", "probabilities", "maps", "max_error", "input_size"):
            np.testing.assert_array_equal(ours[key], theirs[key])
        for name in ("deletion", "pointing_game"):
            np.testing.assert_array_equal(ours["metrics"][name], theirs["metrics"][name])
        in_graph = [explain_io.parse_explanation(tf.constant(r), "stored", ["deletion"])
                    for r in (record, deterministic)]
        np.testing.assert_array_equal(in_graph[0]["maps"], in_graph[1]["maps"])
        np.testing.assert_array_equal(in_graph[0]["metrics"]["deletion"],
                                      in_graph[1]["metrics"]["deletion"])
