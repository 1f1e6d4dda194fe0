"""Explanations on disk: one codec and one record schema for the writer and every reader.

Separation of concerns:

- A *map encoding* (`ENCODINGS`) turns a stack of maps `(H, W, K)` float32 into bytes plus
  the few numbers needed to read them back, and decodes them again twice over: in numpy
  (`decode_maps`, for Python consumers) and in TensorFlow ops (for `tf.data` readers that
  should not leave the graph). Both decoders share the same layout, so they agree exactly.
- The *record schema* (`encode_explanation` / `decode_explanation`, `FEATURES`) puts one
  explained input into one `tf.train.Example`: id, units, logits, the units' probabilities,
  the encoded maps, the size of the image they explain and the faithfulness metrics computed
  with them. Readers read every version they know (`READABLE_VERSIONS`): v1 records have no
  probabilities or metrics.
- *Readers* (`read_explanations`) turn files of such records into a `tf.data.Dataset`, with
  the maps at the size the caller asks for (`size`: as stored, the explained image's size, or
  any (H, W)); resizing on read is what lets a 7x7 Grad-CAM map be stored at 7x7.
- *Input ids* (`input_id`, `record_id`): how an input record is named, so that explanations
  join back to their inputs; the pipeline and the analysis helpers share it.

The Beam pipeline writes through `encode_explanations` (a batch at a time;
`encode_explanation` for one input); everything downstream reads through this module, so a
new encoding is added in one place (an entry in `ENCODINGS`).

Schema v2, one `tf.train.Example` per explained input:

    schema_version  int64 [1]      2
    id              bytes [1]      the input record's id, as text (`input_id`: UTF-8; an
                                   id of bytes that are not UTF-8 as "bytes:" and their
                                   hex, a text id starting with "bytes:" escaped as
                                   "bytes:bytes:...", so that no two ids meet)
    units           int64 [K]      the explained units (class indices)
    logits          float [K]      the model's scores for those units
    probabilities   float [K]      their probabilities at the input (the softmax of every
                                   logit; optional: absent in v1, read as NaN)
    maps            bytes [1]      the K maps, encoded
    map_shape       int64 [3]      (H, W, K) as stored
    map_encoding    bytes [1]      "png8", "png16", "float16" or "raw32"
    map_min         float [K]      each map's minimum (png8/png16: the value of level 0)
    map_max         float [K]      each map's maximum (png8/png16: the top level)
    input_size      int64 [2]      (H, W) of the image the maps explain (optional: a record
                                   without it explains an image of the maps' own size)
    metrics/NAME    float [K]      one per metric computed with the maps
                                   (`explain_lib.metrics`, e.g. metrics/deletion): each
                                   unit's score, NaN where it could not be scored (a
                                   localisation metric without ground truth); optional

Usage:

    record = encode_explanation("img-1", units=[3], logits=[7.2], maps=maps)  # maps (H, W, 1)
    decoded = decode_explanation(record)           # dict of numpy arrays
    for row in read_explanations("out/expl-*.tfrecord.gz", size="input"):
        row["maps"]                                # tf.Tensor (H, W, K) float32
"""

import hashlib
import io
import re
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
from PIL import Image

from explain_lib.io.png import SMALL_PNG_BYTES, grayscale_pngs
from explain_lib.io.wire import (
    example_of, feature_entry, float_feature_entries, serialize_example)

SCHEMA_VERSION = 2
"""Version of the explanation record schema written by this module (2: probabilities and
metrics/NAME features)."""

READABLE_VERSIONS = (1, 2)
"""Schema versions the readers accept: v1 records read with NaN probabilities and no
metrics."""

METRIC_PREFIX = "metrics/"
"""Features `metrics/NAME` hold each unit's score by metric NAME (schema v2)."""

DEFAULT_ENCODING = "png8"

FEATURES = {
    "schema_version": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "id": tf.io.FixedLenFeature([], tf.string),
    "units": tf.io.VarLenFeature(tf.int64),
    "logits": tf.io.VarLenFeature(tf.float32),
    "probabilities": tf.io.VarLenFeature(tf.float32),
    "maps": tf.io.FixedLenFeature([], tf.string),
    "map_shape": tf.io.FixedLenFeature([3], tf.int64),
    "map_encoding": tf.io.FixedLenFeature([], tf.string),
    "map_min": tf.io.VarLenFeature(tf.float32),
    "map_max": tf.io.VarLenFeature(tf.float32),
    "input_size": tf.io.FixedLenFeature([2], tf.int64, default_value=[0, 0]),
}
"""The feature spec of schema v2 (and v1), for `tf.io.parse_single_example`, but for the
`metrics/NAME` features (`metric_features`). A missing `schema_version` parses as 0 so that
readers can reject it; a missing `input_size` parses as (0, 0): the maps have the explained
image's size; missing `probabilities` (v1) parse as empty."""


def metric_features(names: Sequence[str]) -> Dict[str, tf.io.VarLenFeature]:
    """The feature spec of the `metrics/NAME` features of `names`, to add to `FEATURES`.

    Usage:

        spec = {**FEATURES, **metric_features(["deletion"])}
        tf.sparse.to_dense(tf.io.parse_single_example(record, spec)["metrics/deletion"])
    """
    return {METRIC_PREFIX + name: tf.io.VarLenFeature(tf.float32) for name in names}

Size = Union[str, Sequence[int]]
"""The size a reader returns maps at: "stored" (as written), "input" (the size of the image
they explain, `input_size`) or (H, W)."""


@dataclass(frozen=True)
class EncodedMaps:
    """Maps as stored: the encoded bytes and what decoding them needs."""

    data: bytes
    shape: tuple  # (H, W, K)
    encoding: str
    map_min: np.ndarray  # (K,) float32: each map's minimum
    map_max: np.ndarray  # (K,) float32: each map's maximum


@dataclass(frozen=True)
class MapEncoding:
    """One way of storing maps.

    `encode(maps (N, H, W, K) float32) -> [EncodedMaps] * N`, the maps of N inputs at once
    (the numbers in one numpy pass over the batch, only the bytes made per input);
    `decode(EncodedMaps) -> (H, W, K) float32` in numpy; `decode_tf(data, shape, map_min,
    map_max) -> (H, W, K) float32` in TensorFlow ops, usable inside `tf.data`.
    `max_error(map_min, map_max)` bounds the absolute decoding error of each map.
    """

    name: str
    encode: Callable[[np.ndarray], List[EncodedMaps]]
    decode: Callable[[EncodedMaps], np.ndarray]
    decode_tf: Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]
    max_error: Callable[[np.ndarray, np.ndarray], np.ndarray]


def _range(maps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Each map's minimum and maximum, (N, K) float32 for maps (N, H, W, K)."""
    return maps.min(axis=(1, 2)).astype(np.float32), maps.max(axis=(1, 2)).astype(np.float32)


# --- png8, png16: each map quantised over its own range, stored as a lossless PNG -----------
#
# The K maps are stacked vertically into one grayscale image (K * H, W): one PNG per record
# keeps the record a single bytes feature and decodes with one `tf.io.decode_png` call.
# Level q of map k stands for map_min[k] + q * (map_max[k] - map_min[k]) / top, top = 255
# (png8) or 65535 (png16); rounding to the nearest level bounds the error by half a step,
# well within range / top.


def _quantised_png(name: str, bits: int) -> MapEncoding:
    """The PNG encoding of `bits` (8 or 16) bits per value."""
    top = 2**bits - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    tf_dtype = tf.uint8 if bits == 8 else tf.uint16

    def encode(maps: np.ndarray) -> List[EncodedMaps]:
        inputs, height, width, count = maps.shape
        low, high = _range(maps)
        # Work in float64 so that quantising cannot round past a level boundary.
        span = high.astype(np.float64) - low.astype(np.float64)
        scale = np.divide(top, span, out=np.zeros_like(span), where=span > 0)
        levels = np.clip(np.rint((maps.astype(np.float64) - low[:, None, None])
                                 * scale[:, None, None]), 0, top).astype(dtype)
        stacked = np.transpose(levels, (0, 3, 1, 2)).reshape(inputs, count * height, width)
        return [EncodedMaps(png, (height, width, count), name, lo, hi)
                for png, lo, hi in zip(grayscale_pngs(stacked), low, high)]

    def decode(encoded: EncodedMaps) -> np.ndarray:
        height, width, count = encoded.shape
        stacked = np.asarray(Image.open(io.BytesIO(encoded.data)))
        if stacked.shape != (count * height, width) or stacked.dtype.itemsize * 8 != bits:
            raise ValueError(
                f"{name} maps decode to {stacked.shape} {stacked.dtype}, but map_shape "
                f"{encoded.shape} needs {(count * height, width)} {np.dtype(dtype)}: the "
                "record is corrupt."
            )
        levels = np.transpose(stacked.reshape(count, height, width), (1, 2, 0))
        low = np.asarray(encoded.map_min, np.float32)
        high = np.asarray(encoded.map_max, np.float32)
        return (low + levels.astype(np.float32) * ((high - low) / np.float32(top))).astype(
            np.float32)

    def decode_tf(data, shape, map_min, map_max):
        stacked = tf.io.decode_png(data, channels=1, dtype=tf_dtype)
        levels = tf.transpose(
            tf.reshape(stacked, tf.stack([shape[2], shape[0], shape[1]])), [1, 2, 0])
        return map_min + tf.cast(levels, tf.float32) * ((map_max - map_min) / float(top))

    return MapEncoding(
        name=name, encode=encode, decode=decode, decode_tf=decode_tf,
        max_error=lambda low, high: (np.asarray(high) - np.asarray(low)) / float(top),
    )


# --- float16, raw32: the values themselves, (H, W, K) in C order, little-endian -------------
#
# float16 halves the bytes and zlib-compresses them; it keeps about 3 significant digits of
# every value (relative error <= 2^-11) whatever the map's range, but holds only values of
# magnitude up to 65504. raw32 is the float32 values, exact and uncompressed (the TFRecord
# files are GZIP-compressed as a whole anyway): the reference the others are measured
# against.

_FLOAT16_MAX = float(np.finfo(np.float16).max)


def _float16_encode(maps: np.ndarray) -> List[EncodedMaps]:
    half = maps.astype("<f2")
    if not np.all(np.isfinite(half)):
        raise ValueError(
            f"float16 holds values up to {_FLOAT16_MAX:g} in magnitude, and these maps reach "
            f"{float(np.abs(maps).max()):g}: use png8, png16 or raw32."
        )
    low, high = _range(maps)
    return [EncodedMaps(zlib.compress(values.tobytes(), 6), maps.shape[1:], "float16", lo, hi)
            for values, lo, hi in zip(half, low, high)]


def _float16_decode(encoded: EncodedMaps) -> np.ndarray:
    data = zlib.decompress(encoded.data)
    return _values(data, "<f2", encoded).astype(np.float32)


def _float16_decode_tf(data, shape, map_min, map_max):
    values = tf.io.decode_raw(tf.io.decode_compressed(data, "ZLIB"), tf.float16,
                              little_endian=True)
    return tf.cast(tf.reshape(values, shape), tf.float32)


def _float16_max_error(low, high):
    # Round to nearest: half a unit in the last place, 2^-11 of the magnitude for normal
    # numbers, 2^-25 for subnormal ones.
    magnitude = np.maximum(np.abs(np.asarray(low)), np.abs(np.asarray(high)))
    return magnitude * 2.0**-11 + 2.0**-25


def _raw32_encode(maps: np.ndarray) -> List[EncodedMaps]:
    low, high = _range(maps)
    return [EncodedMaps(values.tobytes(), maps.shape[1:], "raw32", lo, hi)
            for values, lo, hi in zip(maps.astype("<f4"), low, high)]


def _raw32_decode(encoded: EncodedMaps) -> np.ndarray:
    return _values(encoded.data, "<f4", encoded).astype(np.float32)


def _raw32_decode_tf(data, shape, map_min, map_max):
    return tf.reshape(tf.io.decode_raw(data, tf.float32, little_endian=True), shape)


def _values(data: bytes, dtype: str, encoded: EncodedMaps) -> np.ndarray:
    count = int(np.prod(encoded.shape))
    if len(data) != count * np.dtype(dtype).itemsize:
        raise ValueError(
            f"{encoded.encoding} maps hold {len(data)} bytes, but map_shape {encoded.shape} "
            f"needs {count * np.dtype(dtype).itemsize}: the record is corrupt."
        )
    return np.frombuffer(data, dtype).reshape(encoded.shape)


ENCODINGS: Dict[str, MapEncoding] = {
    "png8": _quantised_png("png8", 8),
    "png16": _quantised_png("png16", 16),
    "float16": MapEncoding("float16", _float16_encode, _float16_decode, _float16_decode_tf,
                           _float16_max_error),
    "raw32": MapEncoding("raw32", _raw32_encode, _raw32_decode, _raw32_decode_tf,
                         lambda low, high: np.zeros_like(np.asarray(low, np.float32))),
}
"""Map encodings by name; `--map_encoding` in the pipeline picks one:

- `png8` (default): each map quantised to 8 bits over its own range, lossless PNG;
  error <= (max - min) / 255.
- `png16`: the same with 16 bits; error <= (max - min) / 65535.
- `float16`: half-precision values, zlib-compressed; error <= |value| * 2^-11 (+ 2^-25);
  values up to 65504 in magnitude.
- `raw32`: float32 values as they are; exact.
"""


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

        encoded = encode_maps(maps, "png8")        # maps (224, 224, 1)
        len(encoded.data), encoded.map_min, encoded.map_max
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or min(maps.shape) == 0:
        raise ValueError(f"Maps must be a non-empty (H, W, K) array, got shape {maps.shape}.")
    return _encode_batch(maps[None], encoding)[0]


def _encode_batch(maps: np.ndarray, encoding: str) -> List[EncodedMaps]:
    """`encode_maps` for the maps of N inputs at once, (N, H, W, K) float32."""
    finite = np.isfinite(maps)
    if not finite.all():
        bad = np.flatnonzero(~finite.all(axis=(1, 2, 3)))
        where = f" (inputs {bad.tolist()} of the batch)" if len(maps) > 1 else ""
        raise ValueError(f"Maps contain {maps.size - finite.sum()} non-finite value(s){where}.")
    return get_encoding(encoding).encode(maps)


def decode_maps(encoded: EncodedMaps) -> np.ndarray:
    """The maps `(H, W, K)` float32 stored in `encoded` (numpy decoder)."""
    return get_encoding(encoded.encoding).decode(encoded)


def max_decode_error(encoded: EncodedMaps) -> np.ndarray:
    """Per-map bound `(K,)` on |decoded - original| for `encoded`."""
    return get_encoding(encoded.encoding).max_error(encoded.map_min, encoded.map_max)


# --- sizes on read ---------------------------------------------------------------------------


def check_size(size: Size) -> Union[str, Tuple[int, int]]:
    """`size` validated: "stored", "input" or a tuple of two positive ints."""
    if isinstance(size, str):
        if size in ("stored", "input"):
            return size
    elif size is not None and len(size) == 2 and all(int(v) >= 1 for v in size):
        return (int(size[0]), int(size[1]))
    raise ValueError(f'size must be "stored", "input" or (H, W) positive ints, not {size!r}.')


def _target_size(size, stored: Tuple[int, int], input_size: Tuple[int, int]) -> Tuple[int, int]:
    if size == "stored":
        return stored
    if size == "input":
        return tuple(input_size) if min(input_size) > 0 else stored
    return size


def resize_maps(maps: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Maps `(H, W, K)` resized bilinearly to `size` (H', W'): the same operation
    (`tf.image.resize`) the engine uses when it resizes maps to the input, so a map stored at
    its native size and resized on read equals the one resized before storing, up to the
    encoding's error (interpolation never widens it). Returns float32; unchanged at its own
    size."""
    maps = np.asarray(maps, np.float32)
    if tuple(maps.shape[:2]) == tuple(size):
        return maps
    return tf.image.resize(maps, tuple(int(v) for v in size)).numpy()


# --- records -----------------------------------------------------------------------------------


def _bytes(value: Union[str, bytes]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def encode_explanation(
    id: Union[str, bytes],
    units: Sequence[int],
    logits: Sequence[float],
    maps: np.ndarray,
    encoding: str = DEFAULT_ENCODING,
    input_size: Optional[Sequence[int]] = None,
    probabilities: Optional[Sequence[float]] = None,
    metrics: Optional[Mapping[str, Sequence[float]]] = None,
) -> bytes:
    """One explained input as a serialized schema-v2 `tf.train.Example`.

    Args:
        id: the input record's id.
        units: the K explained units.
        logits: the model's K scores for those units.
        maps: `(H, W, K)` float maps, map k explaining units[k], at any resolution.
        encoding: a name in `ENCODINGS`.
        input_size: (H, W) of the image the maps explain (default: the maps' own size);
            readers asked for `size="input"` resize the maps to it.
        probabilities: the K units' probabilities at the input (left out when None).
        metrics: each metric's K scores by metric name (`metrics/NAME` features).

    Usage:

        record = encode_explanation("img-1", [3], [7.2], maps)
        record = encode_explanation("img-1", [3], [7.2], maps_7x7, input_size=(224, 224),
                                    probabilities=[0.91], metrics={"deletion": [0.12]})
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

    def row(values):
        return np.asarray(values, np.float32).reshape(1, -1)

    return encode_explanations(
        [id], units[None], logits[None], maps[None], encoding, input_size,
        probabilities=None if probabilities is None else row(probabilities),
        metrics={name: row(values) for name, values in (metrics or {}).items()})[0]


def encode_explanations(
    ids: Sequence[Union[str, bytes]],
    units: np.ndarray,
    logits: np.ndarray,
    maps: np.ndarray,
    encoding: str = DEFAULT_ENCODING,
    input_size: Optional[Sequence[int]] = None,
    probabilities: Optional[np.ndarray] = None,
    metrics: Optional[Mapping[str, np.ndarray]] = None,
) -> List[bytes]:
    """`encode_explanation` for N inputs at once, each explaining K units: the same records,
    byte for byte, with the batch's numbers handled together (the maps' ranges and
    quantisation in one numpy pass each, the features every record shares serialized once)
    and only each record's own bytes made per record.

    Args:
        ids: the N input records' ids.
        units, logits: (N, K) int and float.
        maps: (N, H, W, K) float maps.
        encoding, input_size: as for `encode_explanation`, one for the batch.
        probabilities: (N, K) floats, or None.
        metrics: each metric's (N, K) scores by metric name.

    Raises ValueError for arrays that do not describe N inputs of K units, or maps that
    cannot be stored (non-finite values, naming the inputs): a caller that must keep the
    other inputs encodes them one by one.

    Usage:

        records = encode_explanations(["a", "b"], [[3], [1]], [[7.2], [0.4]], maps,
                                      input_size=(224, 224))     # maps (2, 7, 7, 1)
    """
    count = len(ids)
    units = np.asarray(units, np.int64)
    logits = np.asarray(logits, np.float32)
    maps = np.asarray(maps, np.float32)
    if (maps.ndim != 4 or min(maps.shape[1:], default=0) == 0 or len(maps) != count
            or units.shape != (count, maps.shape[-1]) or logits.shape != units.shape):
        raise ValueError(
            f"ids ({count}), units {units.shape}, logits {logits.shape} and maps {maps.shape} "
            "must describe the same N inputs and K units: units and logits (N, K), maps "
            "(N, H, W, K)."
        )
    per_unit = {} if probabilities is None else {"probabilities": probabilities}
    per_unit.update({METRIC_PREFIX + name: values for name, values in (metrics or {}).items()})
    for name, values in per_unit.items():
        per_unit[name] = np.asarray(values, np.float32)
        if per_unit[name].shape != units.shape:
            raise ValueError(f"{name} holds {per_unit[name].size // max(count, 1)} values for "
                             f"{units.shape[-1]} units: give one per explained unit.")
    input_size = tuple(maps.shape[1:3]) if input_size is None else tuple(input_size)
    if len(input_size) != 2 or min(input_size) < 1:
        raise ValueError(f"input_size must be (H, W) positive ints, not {input_size}.")
    if not count:
        return []
    encoded = _encode_batch(maps, encoding)
    # The features every record of the batch shares, serialized once.
    version = feature_entry("schema_version", "int64", [SCHEMA_VERSION])
    layout = (feature_entry("map_shape", "int64", encoded[0].shape)
              + feature_entry("map_encoding", "bytes", [encoding.encode()]))
    size = feature_entry("input_size", "int64", input_size)
    # Float features hold K values in every record, so their entries differ only in them.
    floats = {name: float_feature_entries(name, values) for name, values in (
        ("logits", logits), ("map_min", np.stack([stored.map_min for stored in encoded])),
        ("map_max", np.stack([stored.map_max for stored in encoded])), *per_unit.items())}
    per_unit_entries = [floats[name] for name in per_unit]
    unit_entries: Dict[bytes, bytes] = {}  # a batch explains few distinct unit lists
    records = []
    for i, (record_id, stored) in enumerate(zip(ids, encoded)):
        unit_key = units[i].tobytes()
        if unit_key not in unit_entries:
            unit_entries[unit_key] = feature_entry("units", "int64", units[i])
        records.append(example_of([
            version,
            feature_entry("id", "bytes", [_bytes(record_id)]),
            unit_entries[unit_key],
            floats["logits"][i],
            feature_entry("maps", "bytes", [stored.data]),
            layout,
            floats["map_min"][i],
            floats["map_max"][i],
            size,
            *[entries[i] for entries in per_unit_entries],
        ]))
    return records


def _example(serialized: bytes, what: str) -> tf.train.Example:
    """`serialized` parsed as a `tf.train.Example`; ValueError, one line, when it is not one."""
    try:
        return tf.train.Example.FromString(serialized)
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError, or a TypeError
        raise ValueError(f"{what} that is not a tf.train.Example ({len(serialized)} bytes, "
                         f"{type(error).__name__}).") from None


def _versions() -> str:
    return " and ".join(map(str, READABLE_VERSIONS))


def _version(example: tf.train.Example) -> int:
    """A record's `schema_version`, 0 when it has none."""
    feature = example.features.feature
    values = feature["schema_version"].int64_list.value if "schema_version" in feature else []
    return values[0] if values else 0


def _check_version(version: int):
    if version == 0:
        raise ValueError("Not an explanation record: it has no schema_version (the job's "
                         "inputs and dead letters have none).")
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"Explanation record has schema version {version}, but this explain_lib reads "
            f"versions {_versions()}: upgrade explain_lib, or re-run the pipeline."
        )


def decode_explanation(record: bytes, size: Size = "stored") -> Dict[str, np.ndarray]:
    """A serialized schema-v2 (or v1) record as numpy: `id` (str), `units` int64 (K,),
    `logits` float32 (K,), `probabilities` float32 (K,) (NaN in v1 records), `maps` float32
    (H, W, K) at `size` ("stored", "input" or (H, W)), `metrics` (a dict: metric name ->
    float32 (K,) scores; empty when none was computed), `map_encoding` (str), `max_error`
    float32 (K,) (the codec's bound on each map's decoding error, which resizing does not
    widen), `stored_shape` (H, W, K) as stored and `input_size` (H, W) of the image the
    maps explain.

    Usage:

        decoded = decode_explanation(record, size="input")
        decoded["maps"].shape                      # (224, 224, K), even if stored at 7x7
    """
    size = check_size(size)
    example = _example(record, "An explanation record")
    feature = example.features.feature

    def values(name, kind):
        return list(getattr(feature[name], kind).value) if name in feature else []

    _check_version(_version(example))
    encoded = EncodedMaps(
        data=values("maps", "bytes_list")[0],
        shape=tuple(values("map_shape", "int64_list")),
        encoding=values("map_encoding", "bytes_list")[0].decode(),
        map_min=np.asarray(values("map_min", "float_list"), np.float32),
        map_max=np.asarray(values("map_max", "float_list"), np.float32),
    )
    stored = tuple(encoded.shape[:2])
    input_size = tuple(values("input_size", "int64_list")) or (0, 0)
    input_size = input_size if min(input_size) > 0 else stored
    maps = resize_maps(decode_maps(encoded), _target_size(size, stored, input_size))
    units = np.asarray(values("units", "int64_list"), np.int64)
    probabilities = np.asarray(values("probabilities", "float_list"), np.float32)
    return {
        "id": values("id", "bytes_list")[0].decode("utf-8", errors="replace"),
        "units": units,
        "logits": np.asarray(values("logits", "float_list"), np.float32),
        "probabilities": probabilities if len(probabilities) else np.full(len(units), np.nan,
                                                                          np.float32),
        "maps": maps,
        "metrics": {name[len(METRIC_PREFIX):]: np.asarray(values(name, "float_list"), np.float32)
                    for name in sorted(feature) if name.startswith(METRIC_PREFIX)},
        "map_encoding": encoded.encoding,
        "max_error": np.asarray(max_decode_error(encoded), np.float32),
        "stored_shape": np.asarray(encoded.shape, np.int64),
        "input_size": np.asarray(input_size, np.int64),
    }


def parse_explanation(serialized: tf.Tensor, size: Size = "stored",
                      metrics: Sequence[str] = ()) -> Dict[str, tf.Tensor]:
    """Parse and decode one serialized record in TensorFlow ops (for `tf.data.Dataset.map`).

    Returns `id` (string), `units` int64 [K], `logits` float32 [K], `probabilities` float32
    [K] (NaN in v1 records), `maps` float32 [H, W, K] at `size`: "stored" (as written),
    "input" (the explained image's size) or (H, W); and, when `metrics` names some,
    `metrics`: a dict of their float32 [K] scores (NaN in a record without them). Fails with
    a clear error on an unknown schema version or map encoding.
    """
    size = check_size(size)
    parsed = tf.io.parse_single_example(serialized, {**FEATURES, **metric_features(metrics)})
    # The checks run before anything is decoded (control dependencies), so that a record
    # of another version or encoding fails with their message, not a decoder's.
    known_version = tf.debugging.Assert(
        tf.reduce_any(tf.equal(parsed["schema_version"],
                               tf.constant(READABLE_VERSIONS, tf.int64))),
        [f"Explanation record has an unknown schema version (this explain_lib reads versions "
         f"{_versions()}); a missing version reads as 0. Its version:",
         parsed["schema_version"]],
    )
    with tf.control_dependencies([known_version]):
        shape = tf.cast(parsed["map_shape"], tf.int32)
    map_min = tf.sparse.to_dense(parsed["map_min"])
    map_max = tf.sparse.to_dense(parsed["map_max"])
    encoding = parsed["map_encoding"]
    names = sorted(ENCODINGS)
    index = tf.reduce_min(
        tf.where(tf.equal(tf.constant(names), encoding), tf.range(len(names)), len(names))
    )
    known_encoding = tf.debugging.assert_less(
        index, len(names), message=f"Unknown map encoding; known encodings: {', '.join(names)}"
    )
    with tf.control_dependencies([known_encoding]):
        index = tf.identity(index)
    branches = [
        (lambda name=name: ENCODINGS[name].decode_tf(parsed["maps"], shape, map_min, map_max))
        for name in names
    ]
    maps = tf.switch_case(index, branches) if len(branches) > 1 else branches[0]()
    maps = tf.reshape(maps, shape)
    if size != "stored":
        if size == "input":
            input_size = tf.cast(parsed["input_size"], tf.int32)
            target = tf.where(tf.reduce_min(input_size) > 0, input_size, shape[:2])
        else:
            target = tf.constant(size, tf.int32)
        maps = tf.cond(
            tf.reduce_all(tf.equal(target, shape[:2])),
            lambda: maps,
            lambda: tf.image.resize(maps, target),
        )
        if not isinstance(size, str):
            maps = tf.ensure_shape(maps, [size[0], size[1], None])
    units = tf.sparse.to_dense(parsed["units"])

    def per_unit(name):
        """A float [K] feature, NaN when the record does not have it."""
        values = tf.sparse.to_dense(parsed[name])
        return tf.cond(tf.size(values) > 0, lambda: values,
                       lambda: tf.fill(tf.shape(units), float("nan")))

    row = {
        "id": parsed["id"],
        "units": units,
        "logits": tf.sparse.to_dense(parsed["logits"]),
        "probabilities": per_unit("probabilities"),
        "maps": maps,
    }
    if metrics:
        row["metrics"] = {name: per_unit(METRIC_PREFIX + name) for name in metrics}
    return row


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
    size: Size = "stored",
    num_parallel_calls: Optional[int] = tf.data.AUTOTUNE,
    metrics: Sequence[str] = (),
) -> tf.data.Dataset:
    """The explanation records in the files matching `file_pattern`, as a `tf.data.Dataset`
    of dicts: `id` (string), `units` int64 [K], `logits` float32 [K], `probabilities`
    float32 [K] (NaN in v1 records), `maps` float32 [H, W, K], and with `metrics` (names,
    as the run's manifest lists them) `metrics`, a dict of float32 [K] scores. Compression
    is taken from each file's name (the pipeline writes `.gz`).

    `size` says at which size the maps come back:
    - "stored" (default): as written. That is the explained image's size, unless the job
      stored them smaller (`--map_size native` or `H,W`);
    - "input": the size of the image each record explains (its `input_size`), resizing
      bilinearly where the stored maps are smaller;
    - (H, W): that size, for every record (batchable).

    The first record of each file is read here (`check_explanation_files`), so that a file
    that is not TFRecords of explanations of a readable schema version (another file, the
    dead letters, an older explain_lib's) fails at once, with a ValueError naming it.
    Damage further into a file surfaces while iterating, as TensorFlow's
    `tf.errors.DataLossError`, which does not name the file; `iterate_records` does.

    Usage:

        for row in read_explanations("out/expl-*.tfrecord.gz", size="input").take(4):
            print(row["id"].numpy(), row["units"].numpy(), row["maps"].shape)
    """
    size = check_size(size)
    files = list_files(file_pattern)
    check_explanation_files(files)
    datasets = [tf.data.TFRecordDataset(f, compression_type=compression_of(f)) for f in files]
    records = datasets[0]
    for dataset in datasets[1:]:
        records = records.concatenate(dataset)
    metrics = tuple(metrics)

    # Plain TensorFlow ops, without Python control flow on tensors: traced as written, not
    # converted by AutoGraph (whose first conversion in a process takes seconds).
    @tf.autograph.experimental.do_not_convert
    def parse(record):
        return parse_explanation(record, size, metrics)

    return records.map(parse, num_parallel_calls=num_parallel_calls, deterministic=True)


def check_explanation_files(files: Sequence[str]) -> None:
    """Read the first record of each of `files` (in parallel) and check that it is an
    explanation record of a readable schema version; raises ValueError, one line naming
    the file, when one is not (or cannot be read as TFRecords)."""
    names = tf.constant(list(files))

    def first(path):
        return tf.data.TFRecordDataset(path, compression_type=compression_type(path)).take(
            1).map(lambda record: (path, record))

    firsts = tf.data.Dataset.from_tensor_slices(names).interleave(
        first, cycle_length=min(len(files), 16), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    try:
        found = list(firsts.as_numpy_iterator())
    except tf.errors.OpError as error:
        for path in files:  # which one: read them again, one by one
            next(iterate_records(path), None)  # raises, naming the file
        raise file_error(", ".join(files), error) from None
    for path, record in found:
        try:
            _check_version(_version(_example(record, "A record")))
        except ValueError as error:
            raise ValueError(f"{path.decode()}: {error}") from None


def compression_type(path: tf.Tensor) -> tf.Tensor:
    """`compression_of` in TensorFlow ops, for a path inside a `tf.data` pipeline."""
    return tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP",
                    tf.where(tf.strings.regex_full_match(path, r".*\.(zz|zlib)"), "ZLIB", ""))


ITERATE_BATCH = 256
"""Records `iterate_records` takes from TensorFlow per step (one eager step costs about as
much as parsing a record, so records come out of the dataset in batches)."""


def iterate_records(file_pattern: Union[str, Sequence[str]]):
    """Yield the raw bytes of every record in the TFRecord files matching `file_pattern`,
    file by file (compression from each file's name). A file that cannot be read as
    TFRecords (damaged, cut short, not TFRecords at all) raises ValueError, one line naming
    it, once the records before the damage are yielded."""
    for path in list_files(file_pattern):
        dataset = tf.data.TFRecordDataset(path, compression_type=compression_of(path))
        try:
            for batch in dataset.batch(ITERATE_BATCH):
                yield from batch.numpy().tolist()
        except tf.errors.OpError as error:
            raise file_error(path, error) from None


def iterate_decoded(file_pattern: Union[str, Sequence[str]], decode: Callable[[bytes], Any]):
    """Yield `decode(record)` for every record of the files matching `file_pattern` (as
    `iterate_records` reads them); a record `decode` refuses with a ValueError raises a
    ValueError naming its file and its number in the file.

    Usage:

        for row in iterate_decoded("out/expl-*", decode_explanation):
            row["id"], row["maps"]
    """
    for path in list_files(file_pattern):
        for number, record in enumerate(iterate_records(path)):
            try:
                decoded = decode(record)
            except ValueError as error:
                raise ValueError(f"{path}: record {number}: {error}") from None
            yield decoded


def file_error(path: str, error: Exception) -> ValueError:
    """One line naming `path` for an error met reading it (TensorFlow's errors do not name
    the file, and carry the op's name and a node stack after their first line)."""
    message = error.message if isinstance(error, tf.errors.OpError) else str(error)
    message = message.strip().splitlines()[0] if message.strip() else ""
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
    message = re.sub(r"\s*\[Op:\w+\].*$", "", message)
    return ValueError(f"{path} cannot be read as TFRecords: {type(error).__name__}: "
                      f"{message[:200]}.")


# --- input ids ---------------------------------------------------------------------------------


def record_id(serialized: bytes) -> str:
    """The deterministic id of a record without one: the first 128 bits of the SHA-256 of
    its bytes, in hex (the same record gets the same id on every run and every worker)."""
    return hashlib.sha256(serialized).hexdigest()[:32]


BYTES_ID_PREFIX = "bytes:"
"""Starts the text form of an id whose bytes are not UTF-8 (`text_id`)."""


def text_id(value: bytes) -> str:
    """The text form of a bytes id, reversible (`id_bytes`) and unambiguous: UTF-8 bytes are
    their text, but that a text starting with `BYTES_ID_PREFIX` gets the prefix once more;
    other bytes are the prefix and their hex. So b"\\xff\\xfeid" is "bytes:fffe6964", which
    no UTF-8 id is (hex has no "y": "bytes:" itself is "bytes:bytes:").

    Usage:

        text_id(b"img-1") == "img-1"; text_id(b"\\xff\\xfe") == "bytes:fffe"
    """
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return BYTES_ID_PREFIX + value.hex()
    return BYTES_ID_PREFIX + text if text.startswith(BYTES_ID_PREFIX) else text


def id_bytes(text: str) -> bytes:
    """The bytes id whose text form (`text_id`) is `text`."""
    if text.startswith(BYTES_ID_PREFIX * 2):
        return text[len(BYTES_ID_PREFIX):].encode("utf-8")
    if text.startswith(BYTES_ID_PREFIX):
        return bytes.fromhex(text[len(BYTES_ID_PREFIX):])
    return text.encode("utf-8")


def input_id(example: tf.train.Example, serialized: bytes, id_key: Optional[str] = "id") -> str:
    """The id an input record gets, which its explanation carries: its `id_key` feature (one
    bytes value, as `text_id` gives it, or one int64 value, as decimal), else
    `record_id(serialized)`. An empty bytes id counts as no id: `''` would be one id shared
    by every such record. Raises ValueError for an id feature of another kind or with
    several values.

    Usage:

        input_id(tf.train.Example.FromString(serialized), serialized, "id")
    """
    if id_key and id_key in example.features.feature:
        feature = example.features.feature[id_key]
        kind = feature.WhichOneof("kind")
        values = getattr(feature, kind).value if kind else []
        if len(values):
            if len(values) != 1 or kind == "float_list":
                raise ValueError(f"id feature {id_key!r} must hold one bytes or int64 value.")
            if kind == "int64_list":
                return str(values[0])
            if values[0]:
                return text_id(values[0])
    return record_id(serialized)


__all__ = [
    "SCHEMA_VERSION",
    "READABLE_VERSIONS",
    "METRIC_PREFIX",
    "DEFAULT_ENCODING",
    "FEATURES",
    "metric_features",
    "ENCODINGS",
    "EncodedMaps",
    "MapEncoding",
    "get_encoding",
    "encode_maps",
    "decode_maps",
    "max_decode_error",
    "check_size",
    "resize_maps",
    "encode_explanation",
    "decode_explanation",
    "parse_explanation",
    "read_explanations",
    "iterate_records",
    "iterate_decoded",
    "list_files",
    "compression_of",
    "record_id",
    "input_id",
    "text_id",
    "id_bytes",
    "BYTES_ID_PREFIX",
    "check_explanation_files",
    "file_error",
    "SMALL_PNG_BYTES",
    "serialize_example",
]
