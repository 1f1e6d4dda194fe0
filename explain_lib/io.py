"""Explanations on disk: one codec and one record schema for the writer and every reader.

Separation of concerns:

- A *map encoding* (`ENCODINGS`) turns a stack of maps `(H, W, K)` float32 into bytes plus
  the few numbers needed to read them back, and decodes them again twice over: in numpy
  (`decode_maps`, for Python consumers) and in TensorFlow ops (for `tf.data` readers that
  should not leave the graph). Both decoders share the same layout, so they agree exactly.
- The *record schema* (`encode_explanation` / `decode_explanation`, `FEATURES`) puts one
  explained input into one `tf.train.Example`: id, units, logits and the encoded maps.
- *Readers* (`read_explanations`) turn files of such records into a `tf.data.Dataset`.

The Beam pipeline writes through `encode_explanation`; everything downstream reads through
this module, so a new encoding is added in one place (an entry in `ENCODINGS`).

Schema v1, one `tf.train.Example` per explained input:

    schema_version  int64 [1]      1
    id              bytes [1]      the input record's id
    units           int64 [K]      the explained units (class indices)
    logits          float [K]      the model's scores for those units
    maps            bytes [1]      the K maps, encoded
    map_shape       int64 [3]      (H, W, K)
    map_encoding    bytes [1]      "png8"
    map_min         float [K]      per-map minimum (png8: the value of level 0)
    map_max         float [K]      per-map maximum (png8: the value of level 255)

Usage:

    record = encode_explanation("img-1", units=[3], logits=[7.2], maps=maps)  # maps (H, W, 1)
    decoded = decode_explanation(record)           # dict of numpy arrays
    for row in read_explanations("out/expl-*.tfrecord.gz"):
        row["maps"]                                # tf.Tensor (H, W, K) float32
"""

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
from PIL import Image

SCHEMA_VERSION = 1
"""Version of the explanation record schema written by this module."""

DEFAULT_ENCODING = "png8"

FEATURES = {
    "schema_version": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "id": tf.io.FixedLenFeature([], tf.string),
    "units": tf.io.VarLenFeature(tf.int64),
    "logits": tf.io.VarLenFeature(tf.float32),
    "maps": tf.io.FixedLenFeature([], tf.string),
    "map_shape": tf.io.FixedLenFeature([3], tf.int64),
    "map_encoding": tf.io.FixedLenFeature([], tf.string),
    "map_min": tf.io.VarLenFeature(tf.float32),
    "map_max": tf.io.VarLenFeature(tf.float32),
}
"""The feature spec of schema v1, for `tf.io.parse_single_example`. A missing
`schema_version` parses as 0 so that readers can reject it."""


@dataclass(frozen=True)
class EncodedMaps:
    """Maps as stored: the encoded bytes and what decoding them needs."""

    data: bytes
    shape: tuple  # (H, W, K)
    encoding: str
    map_min: np.ndarray  # (K,) float32; empty for encodings that do not need it
    map_max: np.ndarray  # (K,) float32


@dataclass(frozen=True)
class MapEncoding:
    """One way of storing maps.

    `encode(maps (H, W, K) float32) -> EncodedMaps`; `decode(EncodedMaps) -> (H, W, K)
    float32` in numpy; `decode_tf(data, shape, map_min, map_max) -> (H, W, K) float32` in
    TensorFlow ops, usable inside `tf.data`. `max_error(map_min, map_max)` bounds the
    absolute decoding error of each map.
    """

    name: str
    encode: Callable[[np.ndarray], EncodedMaps]
    decode: Callable[[EncodedMaps], np.ndarray]
    decode_tf: Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]
    max_error: Callable[[np.ndarray, np.ndarray], np.ndarray]


# --- png8: each map quantised to 8 bits over its own range, stored as a lossless PNG -------
#
# The K maps are stacked vertically into one grayscale image (K * H, W): one PNG per record
# keeps the record a single bytes feature and decodes with one `tf.io.decode_png` call.
# Level q of map k stands for map_min[k] + q * (map_max[k] - map_min[k]) / 255; rounding
# to the nearest level bounds the error by half a step, well within range / 255.


def _png8_encode(maps: np.ndarray) -> EncodedMaps:
    height, width, count = maps.shape
    low = maps.min(axis=(0, 1)).astype(np.float32)
    high = maps.max(axis=(0, 1)).astype(np.float32)
    # Work in float64 so that quantising cannot round past a level boundary.
    span = high.astype(np.float64) - low.astype(np.float64)
    scale = np.divide(255.0, span, out=np.zeros_like(span), where=span > 0)
    levels = np.rint((maps.astype(np.float64) - low) * scale)
    levels = np.clip(levels, 0, 255).astype(np.uint8)
    stacked = np.transpose(levels, (2, 0, 1)).reshape(count * height, width)
    return EncodedMaps(_grayscale_png(stacked), (height, width, count), "png8", low, high)


def _grayscale_png(image: np.ndarray) -> bytes:
    """A (H, W) uint8 array as a PNG file (8-bit grayscale).

    Written here rather than through an imaging library because maps are smooth: the PNG
    "Up" filter on every row (each row stored as its difference from the row above) makes
    them compress as well as an encoder's adaptive filtering does, at a fraction of the cost.
    """
    height, width = image.shape
    up = np.diff(image.astype(np.int16), axis=0, prepend=0).astype(np.uint8)
    rows = np.concatenate([np.full((height, 1), 2, np.uint8), up], axis=1)  # 2: filter "Up"

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def _png8_decode(encoded: EncodedMaps) -> np.ndarray:
    height, width, count = encoded.shape
    stacked = np.asarray(Image.open(io.BytesIO(encoded.data)))
    if stacked.shape != (count * height, width):
        raise ValueError(
            f"png8 maps decode to {stacked.shape}, but map_shape {encoded.shape} needs "
            f"{(count * height, width)}: the record is corrupt."
        )
    levels = np.transpose(stacked.reshape(count, height, width), (1, 2, 0)).astype(np.float32)
    low = np.asarray(encoded.map_min, np.float32)
    high = np.asarray(encoded.map_max, np.float32)
    return (low + levels * ((high - low) / np.float32(255.0))).astype(np.float32)


def _png8_decode_tf(data, shape, map_min, map_max):
    stacked = tf.io.decode_png(data, channels=1, dtype=tf.uint8)
    levels = tf.transpose(tf.reshape(stacked, tf.stack([shape[2], shape[0], shape[1]])), [1, 2, 0])
    return map_min + tf.cast(levels, tf.float32) * ((map_max - map_min) / 255.0)


ENCODINGS: Dict[str, MapEncoding] = {
    "png8": MapEncoding(
        name="png8",
        encode=_png8_encode,
        decode=_png8_decode,
        decode_tf=_png8_decode_tf,
        max_error=lambda low, high: (np.asarray(high) - np.asarray(low)) / 255.0,
    ),
}
"""Map encodings by name; `--map_encoding` in the pipeline picks one."""


def get_encoding(name: str) -> MapEncoding:
    """The encoding called `name`, with a helpful error for unknown names."""
    try:
        return ENCODINGS[name]
    except KeyError:
        raise ValueError(
            f"Unknown map encoding {name!r}; known encodings: {', '.join(sorted(ENCODINGS))}."
        ) from None


def encode_maps(maps: np.ndarray, encoding: str = DEFAULT_ENCODING) -> EncodedMaps:
    """Encode the maps of one input, `(H, W, K)` float, with `encoding`.

    Raises ValueError for maps of the wrong rank or with non-finite values (a NaN has no
    place on an 8-bit scale, and silently storing it would hide a broken explanation).

    Usage:

        encoded = encode_maps(maps)                # maps (224, 224, 1)
        len(encoded.data), encoded.map_min, encoded.map_max
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or min(maps.shape) == 0:
        raise ValueError(f"Maps must be a non-empty (H, W, K) array, got shape {maps.shape}.")
    if not np.all(np.isfinite(maps)):
        bad = np.size(maps) - np.isfinite(maps).sum()
        raise ValueError(f"Maps contain {bad} non-finite value(s).")
    return get_encoding(encoding).encode(maps)


def decode_maps(encoded: EncodedMaps) -> np.ndarray:
    """The maps `(H, W, K)` float32 stored in `encoded` (numpy decoder)."""
    return get_encoding(encoded.encoding).decode(encoded)


def max_decode_error(encoded: EncodedMaps) -> np.ndarray:
    """Per-map bound `(K,)` on |decoded - original| for `encoded`."""
    return get_encoding(encoded.encoding).max_error(encoded.map_min, encoded.map_max)


def _bytes(value: Union[str, bytes]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def encode_explanation(
    id: Union[str, bytes],
    units: Sequence[int],
    logits: Sequence[float],
    maps: np.ndarray,
    encoding: str = DEFAULT_ENCODING,
) -> bytes:
    """One explained input as a serialized schema-v1 `tf.train.Example`.

    Args:
        id: the input record's id.
        units: the K explained units.
        logits: the model's K scores for those units.
        maps: `(H, W, K)` float maps, map k explaining units[k].
        encoding: a name in `ENCODINGS`.

    Usage:

        record = encode_explanation("img-1", [3], [7.2], maps)
        tf.io.TFRecordWriter(path).write(record)
    """
    units = np.asarray(units, np.int64).reshape(-1)
    logits = np.asarray(logits, np.float32).reshape(-1)
    maps = np.asarray(maps, np.float32)
    if not (len(units) == len(logits) == (maps.shape[-1] if maps.ndim == 3 else -1)):
        raise ValueError(
            f"units ({len(units)}), logits ({len(logits)}) and maps {maps.shape} must describe "
            "the same K units: maps (H, W, K)."
        )
    encoded = encode_maps(maps, encoding)
    feature = tf.train.Feature
    features = {
        "schema_version": feature(int64_list=tf.train.Int64List(value=[SCHEMA_VERSION])),
        "id": feature(bytes_list=tf.train.BytesList(value=[_bytes(id)])),
        "units": feature(int64_list=tf.train.Int64List(value=units.tolist())),
        "logits": feature(float_list=tf.train.FloatList(value=logits.tolist())),
        "maps": feature(bytes_list=tf.train.BytesList(value=[encoded.data])),
        "map_shape": feature(int64_list=tf.train.Int64List(value=list(encoded.shape))),
        "map_encoding": feature(bytes_list=tf.train.BytesList(value=[encoding.encode()])),
        "map_min": feature(float_list=tf.train.FloatList(value=encoded.map_min.tolist())),
        "map_max": feature(float_list=tf.train.FloatList(value=encoded.map_max.tolist())),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _check_version(version: int):
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"Explanation record has schema version {version}, but this explain_lib reads "
            f"version {SCHEMA_VERSION}: upgrade explain_lib, or re-run the pipeline."
        )


def decode_explanation(record: bytes) -> Dict[str, np.ndarray]:
    """A serialized schema-v1 record as numpy: `id` (str), `units` int64 (K,), `logits`
    float32 (K,), `maps` float32 (H, W, K), `map_encoding` (str), `max_error` float32 (K,)
    (the codec's bound on each map's decoding error)."""
    example = tf.train.Example.FromString(record)
    feature = example.features.feature

    def values(name, kind):
        return list(getattr(feature[name], kind).value) if name in feature else []

    _check_version((values("schema_version", "int64_list") or [0])[0])
    encoded = EncodedMaps(
        data=values("maps", "bytes_list")[0],
        shape=tuple(values("map_shape", "int64_list")),
        encoding=values("map_encoding", "bytes_list")[0].decode(),
        map_min=np.asarray(values("map_min", "float_list"), np.float32),
        map_max=np.asarray(values("map_max", "float_list"), np.float32),
    )
    return {
        "id": values("id", "bytes_list")[0].decode("utf-8", errors="replace"),
        "units": np.asarray(values("units", "int64_list"), np.int64),
        "logits": np.asarray(values("logits", "float_list"), np.float32),
        "maps": decode_maps(encoded),
        "map_encoding": encoded.encoding,
        "max_error": np.asarray(max_decode_error(encoded), np.float32),
    }


def parse_explanation(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Parse and decode one serialized record in TensorFlow ops (for `tf.data.Dataset.map`).

    Returns `id` (string), `units` int64 [K], `logits` float32 [K], `maps` float32 [H, W, K].
    Fails with a clear error on an unknown schema version or map encoding.
    """
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    version = parsed["schema_version"]
    tf.debugging.assert_equal(
        version,
        tf.constant(SCHEMA_VERSION, tf.int64),
        message=f"Explanation record has an unknown schema version (this explain_lib reads "
        f"version {SCHEMA_VERSION}); a missing version reads as 0",
    )
    shape = tf.cast(parsed["map_shape"], tf.int32)
    map_min = tf.sparse.to_dense(parsed["map_min"])
    map_max = tf.sparse.to_dense(parsed["map_max"])
    encoding = parsed["map_encoding"]
    names = sorted(ENCODINGS)
    index = tf.reduce_min(
        tf.where(tf.equal(tf.constant(names), encoding), tf.range(len(names)), len(names))
    )
    tf.debugging.assert_less(
        index, len(names), message=f"Unknown map encoding; known encodings: {', '.join(names)}"
    )
    branches = [
        (lambda name=name: ENCODINGS[name].decode_tf(parsed["maps"], shape, map_min, map_max))
        for name in names
    ]
    maps = tf.switch_case(index, branches) if len(branches) > 1 else branches[0]()
    maps = tf.reshape(maps, shape)
    return {
        "id": parsed["id"],
        "units": tf.sparse.to_dense(parsed["units"]),
        "logits": tf.sparse.to_dense(parsed["logits"]),
        "maps": maps,
    }


def compression_of(path: str) -> str:
    """The TFRecord compression implied by a file name: GZIP for `.gz`, ZLIB for `.zz` or
    `.zlib`, none otherwise (Beam's WriteToTFRecord names its files the same way)."""
    if path.endswith(".gz"):
        return "GZIP"
    if path.endswith((".zz", ".zlib")):
        return "ZLIB"
    return ""


def list_files(file_pattern: Union[str, Sequence[str]]) -> list:
    """Sorted files matching one or several glob patterns (any filesystem `tf.io.gfile`
    knows); raises FileNotFoundError when nothing matches."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted({f for pattern in patterns for f in tf.io.gfile.glob(pattern)})
    if not files:
        raise FileNotFoundError(f"No files match {patterns}.")
    return files


def read_explanations(
    file_pattern: Union[str, Sequence[str]],
    num_parallel_calls: Optional[int] = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """The explanation records in the files matching `file_pattern`, as a `tf.data.Dataset`
    of dicts: `id` (string), `units` int64 [K], `logits` float32 [K], `maps` float32
    [H, W, K]. Compression is taken from each file's name (the pipeline writes `.gz`).

    Usage:

        for row in read_explanations("out/expl-*.tfrecord.gz").take(4):
            print(row["id"].numpy(), row["units"].numpy(), row["maps"].shape)
    """
    files = list_files(file_pattern)
    datasets = [tf.data.TFRecordDataset(f, compression_type=compression_of(f)) for f in files]
    records = datasets[0]
    for dataset in datasets[1:]:
        records = records.concatenate(dataset)
    return records.map(parse_explanation, num_parallel_calls=num_parallel_calls, deterministic=True)


def iterate_records(file_pattern: Union[str, Sequence[str]]):
    """Yield the raw bytes of every record in the TFRecord files matching `file_pattern`,
    file by file (compression from each file's name)."""
    for path in list_files(file_pattern):
        for record in tf.data.TFRecordDataset(path, compression_type=compression_of(path)):
            yield record.numpy()


__all__ = [
    "SCHEMA_VERSION",
    "DEFAULT_ENCODING",
    "FEATURES",
    "ENCODINGS",
    "EncodedMaps",
    "MapEncoding",
    "get_encoding",
    "encode_maps",
    "decode_maps",
    "max_decode_error",
    "encode_explanation",
    "decode_explanation",
    "parse_explanation",
    "read_explanations",
    "iterate_records",
    "list_files",
    "compression_of",
]
