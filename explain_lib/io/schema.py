"""The explanation record: one explained input as one `tf.train.Example`, in numpy and in TF.

This module owns the record schema and nothing about files:

- its features (`FEATURES`, and `metric_features` for the `metrics/NAME` ones), the version
  it writes (`SCHEMA_VERSION`) and the versions readers accept (`READABLE_VERSIONS`: v1
  records have no probabilities or metrics);
- the writer: `encode_explanations` for a batch, as the Beam pipeline writes (the features
  every record shares serialized once), `encode_explanation` for one input;
- the decoders of one record: `decode_explanation` in numpy, `parse_explanation` in
  TensorFlow ops (for `tf.data.Dataset.map`), both returning the maps at the size asked.

The maps inside a record are encoded by `explain_lib.io.codecs`; the Example's bytes are
framed by `explain_lib.io.wire`; files of records are read by `explain_lib.io.readers`.

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
    parse_explanation(tf.constant(record))         # dict of tensors, the same maps
"""

from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from explain_lib.io.codecs import (
    DEFAULT_ENCODING,
    ENCODINGS,
    EncodedMaps,
    Size,
    check_size,
    decode_maps,
    encode_batch,
    max_decode_error,
    resize_maps,
    target_size,
)
from explain_lib.io.wire import example_of, feature_entry, float_feature_entries

SCHEMA_VERSION = 2
"""Version of the explanation record schema written by this module (2: probabilities and
metrics/NAME features)."""

READABLE_VERSIONS = (1, 2)
"""Schema versions the readers accept: v1 records read with NaN probabilities and no
metrics."""

METRIC_PREFIX = "metrics/"
"""Features `metrics/NAME` hold each unit's score by metric NAME (schema v2)."""

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


# --- writing -----------------------------------------------------------------------------------


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
    return serialize_records(ids, units, logits, encode_batch(maps, encoding), input_size,
                             per_unit)


def serialize_records(
    ids: Sequence[Union[str, bytes]],
    units: np.ndarray,
    logits: np.ndarray,
    encoded: Sequence[EncodedMaps],
    input_size: Sequence[int],
    per_unit: Mapping[str, np.ndarray],
) -> List[bytes]:
    """The records of `encode_explanations`, from N >= 1 inputs' maps already encoded (one
    encoding and shape): `units` (N, K) int64, `logits` (N, K) float32, `input_size` (H, W)
    and `per_unit`, the optional (N, K) float32 features by name in the order they are
    written (probabilities, then metrics/NAME), all as `encode_explanations` checks them.

    The features every record shares are serialized once, the float features' entries
    framed once per feature, and only each record's own bytes made per record: this is the
    job's per-record serialization, apart from its maps' (`benchmarks/io_codecs.py` times
    it against building each `tf.train.Example`).
    """
    # The features every record of the batch shares, serialized once.
    version = feature_entry("schema_version", "int64", [SCHEMA_VERSION])
    layout = (feature_entry("map_shape", "int64", encoded[0].shape)
              + feature_entry("map_encoding", "bytes", [encoded[0].encoding.encode()]))
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


# --- reading -----------------------------------------------------------------------------------


def parse_example(serialized: bytes, what: str) -> tf.train.Example:
    """`serialized` parsed as a `tf.train.Example`; ValueError, one line, when it is not one."""
    try:
        return tf.train.Example.FromString(serialized)
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError, or a TypeError
        raise ValueError(f"{what} that is not a tf.train.Example ({len(serialized)} bytes, "
                         f"{type(error).__name__}).") from None


def _versions() -> str:
    return " and ".join(map(str, READABLE_VERSIONS))


def record_version(example: tf.train.Example) -> int:
    """A record's `schema_version`, 0 when it has none."""
    feature = example.features.feature
    values = feature["schema_version"].int64_list.value if "schema_version" in feature else []
    return values[0] if values else 0


def check_version(version: int):
    """ValueError, one line, unless `version` (`record_version`) is one readers accept."""
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
    example = parse_example(record, "An explanation record")
    feature = example.features.feature

    def values(name, kind):
        return list(getattr(feature[name], kind).value) if name in feature else []

    check_version(record_version(example))
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
    maps = resize_maps(decode_maps(encoded), target_size(size, stored, input_size))
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
