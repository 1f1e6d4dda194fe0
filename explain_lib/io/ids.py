"""Input ids: how an input record is named, so that its explanation joins back to it.

This module owns the id an input record gets (`input_id`: its id feature, else `record_id`,
the hash of its bytes) and the text form of a bytes id (`text_id`, reversed by `id_bytes`).
The pipeline writes that id into each explanation record (`explain_lib.io.schema`'s `id`
feature); the analysis helpers compute it again to join explanations to their inputs.

Usage:

    input_id(tf.train.Example.FromString(serialized), serialized, "id")   # "img-1"
    text_id(b"\\xff\\xfe") == "bytes:fffe"; id_bytes("bytes:fffe") == b"\\xff\\xfe"
"""

import hashlib
from typing import Optional

import tensorflow as tf


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
