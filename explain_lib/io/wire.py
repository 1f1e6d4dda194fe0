"""`tf.train.Example`s serialized directly, in protobuf's wire format: the bytes of a record.

This module owns the framing of an Example and nothing above it: keys, kinds and values in,
bytes out. Which features a record holds belongs to `explain_lib.io.schema`; parsing is
protobuf's (`tf.train.Example.FromString`) or TensorFlow's (`tf.io.parse_single_example`).

Why not `tf.train.Example(...).SerializeToString()`: the job writes one record per explained
input, and building the message and serializing it was a large share of its per-record
Python work. The format is small enough to write directly: an Example is field 1 (Features)
holding, per feature, a map entry (field 1) of the key (field 1) and the Feature (field 2),
whose one field is a BytesList (1), a FloatList (2) or an Int64List (3) of values (field 1;
packed for numbers). The entries come in the order given, where protobuf's deterministic
serialization sorts them by key; given in key order, the bytes are protobuf's exactly
(`tests/explain_lib/test_io_writers.py`). Building and serializing the message takes 1.7-3.5x
the time of one record written here, 3.3-3.9x that of the job's batched records
(`benchmarks/io_codecs.py`; `benchmarks/RESULTS.md`, "Map and record writers against the
library way").

Usage:

    record = serialize_example([("id", "bytes", [b"a"]), ("label", "int64", [3])])
    tf.train.Example.FromString(record)            # the Example of those two features
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np

_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    value &= (1 << 64) - 1  # negative int64s as their two's complement, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag (one byte here), length and payload."""
    return tag + _varint(len(payload)) + payload


_VALUES, _ENTRY, _FEATURE = b"\x0a", b"\x0a", b"\x12"  # fields 1, 1 and 2, length-delimited
_LISTS = {"bytes": b"\x0a", "float": b"\x12", "int64": b"\x1a"}  # BytesList, FloatList, ...
_KEYS: Dict[str, bytes] = {}


def serialize_example(features: Sequence[Tuple[str, str, Sequence]]) -> bytes:
    """A `tf.train.Example` of `features`, (key, kind, values) with kind "bytes", "float" or
    "int64", serialized: the bytes `tf.train.Example(...).SerializeToString()` parses back
    from, written directly (see the module's docstring).

    Usage:

        record = serialize_example([("id", "bytes", [b"a"]), ("label", "int64", [3])])
    """
    return example_of([feature_entry(*feature) for feature in features])


def example_of(entries: Sequence[bytes]) -> bytes:
    """A serialized `tf.train.Example` of features already serialized by `feature_entry`
    (or `float_feature_entries`), in the order given."""
    return _field(_ENTRY, b"".join(entries))


def feature_entry(key: str, kind: str, values: Sequence) -> bytes:
    """One feature of an Example, serialized: its map entry (see the module's docstring),
    framed in one join (the lengths of the nested fields are added up, not the fields
    copied into each other)."""
    if kind == "bytes":
        parts = [part for value in values for part in (_VALUES, _varint(len(value)), value)]
    else:
        packed = (np.asarray(values, "<f4").tobytes() if kind == "float"
                  else b"".join([_varint(int(v)) for v in values]))
        parts = [_VALUES, _varint(len(packed)), packed] if packed else []
    listed = sum(len(part) for part in parts)
    value_list = _LISTS[kind] + _varint(listed)  # the head of the Feature's one field
    feature = _FEATURE + _varint(len(value_list) + listed)  # the head of the Feature
    if key not in _KEYS:
        _KEYS[key] = _field(_VALUES, key.encode())
    keyed = _KEYS[key]
    size = len(keyed) + len(feature) + len(value_list) + listed
    return b"".join([_ENTRY, _varint(size), keyed, feature, value_list, *parts])


def float_feature_entries(key: str, values: np.ndarray) -> List[bytes]:
    """`feature_entry(key, "float", row)` for each row of `values` (N, K), K >= 1: the
    entries of K floats differ only in their last 4K bytes, the packed values."""
    values = np.ascontiguousarray(values, "<f4")
    prefix = feature_entry(key, "float", values[0])[:-values[0].nbytes]
    return [prefix + row.tobytes() for row in values]
