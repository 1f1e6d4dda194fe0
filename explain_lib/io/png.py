"""Grayscale PNG files, written directly: the container of the png8 and png16 map encodings.

This module owns the bytes of a PNG file and nothing above them: given (N, H, W) images of
8- or 16-bit levels, it chooses each image's row filter, compresses and frames the chunks.
What the levels mean (each map's range, how K maps stack into one image) belongs to
`explain_lib.io.codecs`; reading a PNG back is Pillow's or `tf.io.decode_png`'s.

Why by hand: choosing each map's row filter makes its files the smallest of the ways
measured in `benchmarks/io_codecs.py` (Grad-CAM-like 224x224 maps 30% smaller in 8 bits
than `tf.io.encode_png`'s or Pillow's, 2.8x smaller than a plain filter-None encoder's), in
less time than either library on smooth and on small maps (`benchmarks/RESULTS.md`, "Map
and record writers against the library way"); and no other way writes the same bytes, which
the job's records hold. `tests/explain_lib/test_io_writers.py` checks its files against
`tf.io.decode_png` reading `tf.io.encode_png`'s.

Usage:

    (png,) = grayscale_pngs(levels[None])          # levels (H, W) uint8 or uint16
    tf.io.decode_png(png, dtype=tf.uint8)          # (H, W, 1), the same levels (tf.uint16
                                                   # for 16-bit levels)
"""

import struct
import zlib
from typing import List

import numpy as np

SMALL_PNG_BYTES = 1024
"""Maps of at most this many bytes of samples (a 7x7 or 16x16 CAM) all get PNG's Up filter."""


def grayscale_pngs(images: np.ndarray) -> List[bytes]:
    """(N, H, W) uint8 or uint16 arrays as N PNG files (8- or 16-bit grayscale).

    Written here rather than through an imaging library because the whole of it is a few
    numpy passes and `zlib.compress`: every row of an image gets the same PNG filter, the one
    of None, Sub and Up (applied byte by byte, as the format defines them for every bit
    depth) that compresses every fourth row best at zlib's fastest level (Up for small maps,
    filtered for the whole batch in one pass). Upsampled CAM maps favour Sub or Up, noisy
    gradient maps None. (Trying every row chose the same filters to within 0.5% of the size,
    at four times the cost; choosing by the smallest residuals, per row as libpng does or per
    image, made these maps up to 27% larger.) Per image, only its compression and its
    chunks' framing are left.
    """
    count, height, width = images.shape
    itemsize = images.dtype.itemsize
    # PNG stores 16-bit samples big-endian.
    data = images.astype(f">u{itemsize}").view(np.uint8).reshape(count, height, -1)
    if height * data.shape[2] <= SMALL_PNG_BYTES:
        # A few hundred bytes compress alike under any filter: choosing costs more than it saves.
        filtered = list(_filtered(data, 2, itemsize))
    else:
        filtered = [min((_filtered(image, kind, itemsize) for kind in (0, 1, 2)),
                        key=lambda rows: len(zlib.compress(rows[::4].tobytes(), 1)))
                    for image in data]
    header = struct.pack(">IIBBBBB", width, height, 8 * itemsize, 0, 0, 0, 0)  # grayscale
    start = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
    return [start + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _PNG_END
            for rows in filtered]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    """A PNG chunk: length, type, payload and the CRC of type and payload."""
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(payload, zlib.crc32(kind))))


_PNG_END = _png_chunk(b"IEND", b"")


def _filtered(data: np.ndarray, kind: int, bpp: int) -> np.ndarray:
    """PNG scanlines (..., H, 1 + B) of `data` (..., H, B) uint8 (images of H rows of B
    bytes), `bpp` bytes per pixel, every row filtered with filter type `kind`: 0 None, 1 Sub
    (minus the byte `bpp` to the left), 2 Up (minus the byte above); residuals modulo 256,
    each row prefixed by its filter type."""
    rows = np.empty((*data.shape[:-1], data.shape[-1] + 1), np.uint8)
    rows[..., 0] = kind
    residuals = rows[..., 1:]
    if kind == 1:
        residuals[..., :bpp] = data[..., :bpp]
        np.subtract(data[..., bpp:], data[..., :-bpp], out=residuals[..., bpp:])  # modulo 256
    elif kind == 2:
        residuals[..., 0, :] = data[..., 0, :]
        np.subtract(data[..., 1:, :], data[..., :-1, :], out=residuals[..., 1:, :])
    else:
        residuals[...] = data
    return rows
