"""The TFRecord format, in plain Python: framing records to write them, and reading them back
from a stream with every check the format allows, saying where a damaged stream stops.

A TFRecord file is a sequence of frames: the record's length as a little-endian uint64, the
masked CRC-32C of those 8 bytes, the record, the masked CRC-32C of the record. `frame` makes
one (what `pipeline.io.writing` writes); `iterate_records` reads them one at a time from any
binary stream (what `pipeline.io.reading` reads), so a file is never held in memory.

Usage:

    stream.write(frame(record))
    for record in iterate_records(stream): ...       # raises DamagedFile where it stops
"""

import struct
from typing import BinaryIO, Iterator

import google_crc32c

from pipeline.io.retry import is_transient

_HEADER = struct.Struct("<QI")  # length, masked CRC-32C of the length
_CHECKSUM = struct.Struct("<I")
_MAX_RECORD = 1 << 31  # a tf.train.Example (a protobuf) is smaller than 2 GiB


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C, rotated right by 15 bits, plus a constant."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """`record` framed as TFRecord files store it."""
    length = struct.pack("<Q", len(record))
    return b"".join([length, _CHECKSUM.pack(masked_crc32c(length)), record,
                     _CHECKSUM.pack(masked_crc32c(record))])


class DamagedFile(Exception):
    """A stream cannot be read from byte `offset` on (of its decompressed content), for
    `reason`; `records_before` records were read before that."""

    def __init__(self, offset: int, reason: str, records_before: int = 0):
        super().__init__(f"unreadable from byte {offset} ({reason})")
        self.offset = offset
        self.reason = reason
        self.records_before = records_before


def _read(stream: BinaryIO, size: int, offset: int, count: int) -> bytes:
    """Up to `size` bytes (fewer only at the end of the stream). Errors of the stream that
    retrying cannot cure (a corrupt or truncated compressed stream) become DamagedFile;
    transient ones (a dropped connection) propagate."""
    parts, remaining = [], size
    try:
        while remaining:
            chunk = stream.read(remaining)
            if not chunk:
                break
            parts.append(chunk)
            remaining -= len(chunk)
    except Exception as error:  # noqa: BLE001 - sorted below
        if is_transient(error):
            raise
        raise DamagedFile(offset, f"{type(error).__name__}: {error}", count) from None
    return b"".join(parts)


def iterate_records(stream: BinaryIO) -> Iterator[bytes]:
    """The records of an open TFRecord stream, one at a time. Raises `DamagedFile` at the
    first record that cannot be read: a bad checksum of its length or of its data, a stream
    that ends inside it, or an error of the decompressing stream (the records before it
    have been yielded)."""
    offset = count = 0
    while True:
        header = _read(stream, _HEADER.size, offset, count)
        if not header:
            return
        if len(header) < _HEADER.size:
            raise DamagedFile(offset, f"the file ends inside a record header ({len(header)} of "
                              f"{_HEADER.size} bytes)", count)
        length, length_checksum = _HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_checksum:
            raise DamagedFile(offset, "bad checksum of the record length", count)
        if length >= _MAX_RECORD:
            raise DamagedFile(offset, f"record length {length} is over 2 GiB", count)
        data = _read(stream, length, offset, count)
        checksum = _read(stream, _CHECKSUM.size, offset, count)
        if len(data) < length or len(checksum) < _CHECKSUM.size:
            raise DamagedFile(offset, f"the file ends inside a record of {length} bytes", count)
        if masked_crc32c(data) != _CHECKSUM.unpack(checksum)[0]:
            raise DamagedFile(offset, "bad checksum of the record data", count)
        yield data
        offset += _HEADER.size + length + _CHECKSUM.size
        count += 1


__all__ = ["DamagedFile", "frame", "iterate_records", "masked_crc32c"]
