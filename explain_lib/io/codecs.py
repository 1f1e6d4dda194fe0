"""Map encodings: a stack of maps `(H, W, K)` float32 as bytes and back, at the size asked.

This module owns the map codecs and nothing about records:

- A *map encoding* (`ENCODINGS`; `get_encoding` by name) turns the maps of N inputs into
  `EncodedMaps` (the bytes plus the few numbers needed to read them back), and decodes
  them twice over: in numpy (`decode_maps`, for Python consumers) and in TensorFlow ops
  (`MapEncoding.decode_tf`, for `tf.data` readers that should not leave the graph). Both
  decoders share the same layout, so they agree exactly. `max_decode_error` bounds what
  an encoding loses. A new encoding is one entry in `ENCODINGS`.
- *Sizes on read* (`Size`, `check_size`, `resize_maps`): the size a reader returns maps at,
  and the resize that gets them there; resizing on read is what lets a 7x7 Grad-CAM map
  be stored at 7x7.

The PNG files of png8 and png16 are written by `explain_lib.io.png`; where the encoded maps
sit in a record is `explain_lib.io.schema`'s.

Usage:

    encoded = encode_maps(maps, "png8")            # maps (224, 224, 1) float
    decode_maps(encoded)                           # (224, 224, 1) float32, each map within
                                                   # max_decode_error(encoded) of the original
"""

import io
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
from PIL import Image

from explain_lib.io.png import grayscale_pngs

DEFAULT_ENCODING = "png8"
"""The encoding writers use unless told otherwise (the pipeline's `--map_encoding`)."""


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
    return encode_batch(maps[None], encoding)[0]


def encode_batch(maps: np.ndarray, encoding: str) -> List[EncodedMaps]:
    """`encode_maps` for the maps of N inputs at once, (N, H, W, K) float32; ValueError for
    non-finite values, naming the inputs that hold them."""
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


Size = Union[str, Sequence[int]]
"""The size a reader returns maps at: "stored" (as written), "input" (the size of the image
they explain, `input_size`) or (H, W)."""


def check_size(size: Size) -> Union[str, Tuple[int, int]]:
    """`size` validated: "stored", "input" or a tuple of two positive ints."""
    if isinstance(size, str):
        if size in ("stored", "input"):
            return size
    elif size is not None and len(size) == 2 and all(int(v) >= 1 for v in size):
        return (int(size[0]), int(size[1]))
    raise ValueError(f'size must be "stored", "input" or (H, W) positive ints, not {size!r}.')


def target_size(size, stored: Tuple[int, int], input_size: Tuple[int, int]) -> Tuple[int, int]:
    """The (H, W) that `size` (checked by `check_size`) asks for, for maps stored at `stored`
    that explain an image of `input_size` ((0, 0): unknown, the maps' own size)."""
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
