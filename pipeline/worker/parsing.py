"""Stages "parse" and "validate": a serialized `tf.train.Example` checked for everything
the job needs of it without decoding its image, parsed once.

- parse: the bytes are a `tf.train.Example`.
- validate: the features the job needs are present and sane: the image (present, a JPEG or
  PNG signature, or a raw tensor of the right size with finite values), the units (int64,
  in range), the id, the ground truth of the localisation metrics (boxes: 4 values each,
  in [0, 1], ymin <= ymax, xmin <= xmax; a mask: PNG or JPEG bytes) and the features copied
  into the table (one value of the kind found at launch).

A failure is a `StageError` naming its stage, so the dead letters say where a record
stopped. (Before them, stage "read" is the file's, `pipeline.io.reading`; after them,
stage "decode" is `pipeline.worker.decoding`'s.) `check_record` keeps the record's image as
found (compressed bytes, or raw pixels) in a `CheckedRecord`: pixels of compressed images
only exist on the worker that explains them, a batch at a time.

Usage:

    spec = RecordSpec(image_size=(32, 32), channels=3, num_units=10)
    record = check_record(serialized, spec)    # CheckedRecord, or raises StageError
"""

from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from explain_lib.io import input_id
from pipeline.io.dead_letters import StageError
from pipeline.settings import IMAGE_FORMATS

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class RecordSpec:
    """How to read the input records, and what the model needs of them.

    Attributes:
        image_size: (H, W) the model takes; images of another size are resized.
        channels: channels the model takes (JPEG/PNG are decoded to this many).
        num_units: the model's output units, to check the units to explain.
        image_key: the feature holding the image.
        image_format: "auto" (JPEG or PNG bytes detected by their signature, a raw tensor
            otherwise), "jpeg", "png" or "raw".
        image_shape: (H, W, C) of raw tensors: a float or int64 feature of H*W*C values, or
            bytes holding H*W*C uint8 or H*W*C little-endian float32 values.
        id_key: the feature holding the record id (bytes or int64); records without it get
            a deterministic id, `record_id(serialized)`.
        units_key: the int64 feature holding the units to explain; records without it (or
            with it empty) get the model's top-K predictions.
        boxes_key: the float feature holding the record's ground-truth boxes, 4 values per
            box, (ymin, xmin, ymax, xmax) in [0, 1] (TFDS's `objects/bbox`); a record
            without it has no boxes (its localisation metrics are NaN).
        mask_key: the feature holding the record's ground-truth mask, PNG or JPEG bytes whose
            nonzero pixels are the object (instead of boxes).
        copy_features: (name, kind) of the input features copied into the table, kind
            "int64", "float" or "bytes" (`pipeline.results.table.FEATURE_KINDS`).
    """

    image_size: Tuple[int, int]
    channels: int
    num_units: int
    image_key: str = "image"
    image_format: str = "auto"
    image_shape: Optional[Tuple[int, int, int]] = None
    id_key: Optional[str] = "id"
    units_key: Optional[str] = None
    boxes_key: Optional[str] = None
    mask_key: Optional[str] = None
    copy_features: Tuple[Tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(
                f"image_format must be one of {IMAGE_FORMATS}, not {self.image_format!r}."
            )
        if self.image_format == "raw" and self.image_shape is None:
            raise ValueError("image_format 'raw' needs image_shape (H, W, C).")


class CheckedRecord(NamedTuple):
    """A record that passed the checks: its id, its units (or None: explain the top-K
    predictions), its original bytes (for a dead letter at a later stage), and its image as
    found in the record: `image_format` "jpeg" or "png" and the compressed bytes, or "raw"
    and the pixels. The record is parsed once, here; the pixels of compressed images only
    exist on the worker that explains them, a batch at a time (`decode_batch`). With the
    localisation metrics, `ground_truth` holds its boxes (m, 4) float32, or its mask's
    compressed bytes (None: the record has none); `features` the values of the features
    copied into the table."""

    id: str
    units: Optional[np.ndarray]
    record: bytes
    image_format: str
    payload: Any
    ground_truth: Any = None
    features: Tuple[Any, ...] = ()


def parse_example(serialized: bytes) -> tf.train.Example:
    """Stage "parse": the bytes as a `tf.train.Example`."""
    try:
        return tf.train.Example.FromString(serialized)
    except Exception as error:  # protobuf raises DecodeError, but also others on garbage
        raise StageError("parse", f"not a tf.train.Example: {error}") from None


def _feature_values(example: tf.train.Example, key: str):
    """(kind, values) of a feature: kind is "bytes", "float" or "int64"; (None, []) if absent."""
    if key not in example.features.feature:
        return None, []
    feature = example.features.feature[key]
    kind = feature.WhichOneof("kind")
    if kind is None:
        return None, []
    return kind.replace("_list", ""), getattr(feature, kind).value


def detect_format(data: bytes) -> Optional[str]:
    """"jpeg" or "png" from the bytes' signature, or None."""
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data.startswith(_PNG_MAGIC):
        return "png"
    return None


def _raw_image(kind: str, values, shape: Tuple[int, int, int]) -> np.ndarray:
    """A raw tensor feature as an (H, W, C) array: uint8 for bytes of H*W*C values, float32
    otherwise; StageError("validate") when its size does not match `shape`."""
    size = int(np.prod(shape))
    if kind == "bytes":
        if len(values) != 1:
            raise StageError("validate", f"a raw image needs one bytes value, got {len(values)}.")
        data = values[0]
        if len(data) == size:
            return np.frombuffer(data, np.uint8).reshape(shape)
        if len(data) != 4 * size:
            raise StageError(
                "validate",
                f"raw image of {len(data)} bytes does not match image_shape {tuple(shape)} "
                f"({size} uint8 or {4 * size} float32 bytes).",
            )
        array = np.frombuffer(data, "<f4")
    else:
        array = np.asarray(values, np.float32)
        if array.size != size:
            raise StageError(
                "validate",
                f"raw image of {array.size} values does not match image_shape {tuple(shape)} "
                f"({size} values).",
            )
    return array.reshape(shape).astype(np.float32)


def _image_feature(example: tf.train.Example, spec: RecordSpec):
    """(format, kind, values) of the image feature, the format resolved from "auto";
    StageError when the feature is missing or cannot be an image of that format."""
    kind, values = _feature_values(example, spec.image_key)
    if kind is None or len(values) == 0:
        raise StageError("validate", f"missing image feature {spec.image_key!r}.")
    image_format = spec.image_format
    if image_format == "auto":
        detected = detect_format(values[0]) if kind == "bytes" else None
        if detected is None and spec.image_shape is None:
            raise StageError(
                "decode",
                "image is neither JPEG nor PNG bytes"
                + ("" if kind == "bytes" else f" (a {kind} feature)")
                + "; for raw tensors pass image_shape (H, W, C).",
            )
        image_format = detected or "raw"
    if image_format != "raw" and (kind != "bytes" or len(values) != 1):
        raise StageError(
            "validate",
            f"a {image_format} image needs one bytes value, got {len(values)} {kind} values.",
        )
    return image_format, kind, values


def _check_raw(image: np.ndarray, spec: RecordSpec) -> np.ndarray:
    if image.shape[-1] != spec.channels:
        raise StageError(
            "validate",
            f"raw image has {image.shape[-1]} channels, the model takes {spec.channels}.",
        )
    if image.dtype != np.uint8 and not np.all(np.isfinite(image)):
        raise StageError("validate", "image has non-finite pixel values.")
    return image


def image_payload(example: tf.train.Example, spec: RecordSpec) -> Tuple[str, Any]:
    """Stage "validate" for the image, without decoding compressed bytes: the feature is
    there, JPEG and PNG bytes carry their format's signature (in "auto", that is how they
    are recognised), raw tensors have the right size, channels and finite values. Returns
    (format, payload): "jpeg" or "png" and the compressed bytes, or "raw" and the pixels
    (H, W, C)."""
    image_format, kind, values = _image_feature(example, spec)
    if image_format == "raw":
        return "raw", _check_raw(_raw_image(kind, values, spec.image_shape), spec)
    if detect_format(values[0]) != image_format:
        raise StageError("decode", f"image bytes do not start with the {image_format} signature.")
    return image_format, values[0]


def read_id(example: tf.train.Example, serialized: bytes, spec: RecordSpec) -> str:
    """The record's id (stage "validate"): the `id_key` feature, else `record_id`
    (`explain_lib.io.input_id`, which the analysis helpers use to join explanations back to
    their inputs)."""
    try:
        return input_id(example, serialized, spec.id_key)
    except ValueError as error:
        raise StageError("validate", str(error)) from None


def read_units(example: tf.train.Example, spec: RecordSpec) -> Optional[np.ndarray]:
    """The units to explain (stage "validate"): the `units_key` feature, or None (top-K)."""
    if not spec.units_key:
        return None
    kind, values = _feature_values(example, spec.units_key)
    if kind is None or len(values) == 0:
        return None
    if kind != "int64":
        raise StageError("validate", f"units feature {spec.units_key!r} must be int64, not {kind}.")
    listed = list(values)  # (a record's few units: checked in Python, faster than numpy)
    if min(listed) < 0 or max(listed) >= spec.num_units:
        bad = sorted({unit for unit in listed if not 0 <= unit < spec.num_units})
        raise StageError(
            "validate",
            f"units {bad} out of range: the model has {spec.num_units} "
            f"output units [0, {spec.num_units - 1}].",
        )
    return np.array(listed, np.int64)


def read_boxes(example: tf.train.Example, spec: RecordSpec) -> Optional[np.ndarray]:
    """The record's ground-truth boxes (m, 4) float32 (stage "validate"), or None when it
    has none: the `boxes_key` feature, 4 floats per box, (ymin, xmin, ymax, xmax) in [0, 1]
    with ymin < ymax and xmin < xmax (TFDS's `BBoxFeature`; a zero-area box is refused, as
    `explain_lib.metrics` would read it as padding)."""
    key = spec.boxes_key
    kind, values = _feature_values(example, key)
    if kind is None or len(values) == 0:
        return None
    if kind != "float":
        raise StageError("validate", f"boxes feature {key!r} must be a float list (4 values per "
                         f"box: ymin, xmin, ymax, xmax in [0, 1]), not {kind}.")
    boxes = np.asarray(values, np.float32)
    if boxes.size % 4:
        raise StageError("validate", f"boxes feature {key!r} holds {boxes.size} values, not a "
                         "multiple of 4: each box is 4 values (ymin, xmin, ymax, xmax).")
    boxes = boxes.reshape(-1, 4)
    outside = ~((boxes >= 0) & (boxes <= 1))  # NaN too
    if outside.any():
        box, value = np.argwhere(outside)[0]
        side = "ymin xmin ymax xmax".split()[value]
        raise StageError("validate", f"box {box} of {key!r} has {side} "
                         f"{boxes[box, value]:g}, outside [0, 1]: boxes are fractions of the "
                         "image's height and width (TFDS's normalised coordinates).")
    # A zero-area box is refused too: explain_lib.metrics reads one as padding (padded_batch's
    # zeros), so kept, it would vanish and its record score NaN without a word.
    for wrong, problem in (((boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3]),
                            "is inverted"),
                           ((boxes[:, 0] == boxes[:, 2]) | (boxes[:, 1] == boxes[:, 3]),
                            "has zero area")):
        if wrong.any():
            box = int(np.argmax(wrong))
            ymin, xmin, ymax, xmax = boxes[box].tolist()
            raise StageError("validate", f"box {box} of {key!r} {problem} (ymin {ymin:g}, xmin "
                             f"{xmin:g}, ymax {ymax:g}, xmax {xmax:g}): the order is ymin, "
                             "xmin, ymax, xmax, with ymin < ymax and xmin < xmax.")
    return boxes


def read_mask(example: tf.train.Example, spec: RecordSpec) -> Optional[bytes]:
    """The record's ground-truth mask as compressed bytes (stage "validate"), or None when it
    has none: the `mask_key` feature, one PNG or JPEG image (decoded with the batch,
    `decode_masks`)."""
    key = spec.mask_key
    kind, values = _feature_values(example, key)
    if kind is None or len(values) == 0:
        return None
    if kind != "bytes" or len(values) != 1 or detect_format(values[0]) is None:
        raise StageError("validate", f"mask feature {key!r} must hold one PNG or JPEG image "
                         "(nonzero pixels are the object).")
    return values[0]


def read_copied(example: tf.train.Example, spec: RecordSpec) -> Tuple[Any, ...]:
    """The values of the features copied into the table (stage "validate"): one value per
    feature, of the kind found at launch (bytes as UTF-8 text: other bytes fail the record),
    None where the record does not have it."""
    copied = []
    for name, expected in spec.copy_features:
        kind, values = _feature_values(example, name)
        if kind is None or len(values) == 0:
            copied.append(None)
            continue
        if kind != expected or len(values) != 1:
            raise StageError("validate", f"copied feature {name!r} holds {len(values)} {kind} "
                             f"value(s); --copy_features copies one {expected} value per "
                             "record (the kind of the first records that have it).")
        value = values[0]
        if kind == "bytes":
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as error:
                raise StageError("validate", f"copied feature {name!r} is not UTF-8 text "
                                 f"(byte {error.start} is {value[error.start]:#04x}): the table "
                                 "copies bytes features as text.") from None
        copied.append(value)
    return tuple(copied)


def feature_kinds(records, names: Sequence[str], limit: int = 1000) -> Dict[str, str]:
    """The kind ("int64", "float" or "bytes") of each feature in `names`, from the first of
    `records` (serialized) that hold it, looking at `limit` records at most. The launcher
    learns the table's column types this way, before any work.

    Raises ValueError naming a feature none of those records holds, and the features they
    do hold.
    """
    kinds: Dict[str, str] = {}
    seen = set()
    for number, serialized in enumerate(records):
        if number >= limit or len(kinds) == len(names):
            break
        try:
            example = tf.train.Example.FromString(serialized)
        except Exception:  # noqa: BLE001 - a record the job will dead-letter
            continue
        seen.update(example.features.feature)
        for name in names:
            kind, values = _feature_values(example, name)
            if name not in kinds and kind is not None and len(values):
                kinds[name] = kind
    missing = [name for name in names if name not in kinds]
    if missing:
        raise ValueError(f"--copy_features {', '.join(missing)}: no feature of that name in the "
                         f"first {limit} input records (they hold {', '.join(sorted(seen))}).")
    return {name: kinds[name] for name in names}


def check_record(serialized: bytes, spec: RecordSpec) -> CheckedRecord:
    """Stages "parse" and "validate": everything that can be checked without decoding the
    image, parsing the record once. Raises StageError naming the stage that failed (and the
    id, once known)."""
    example = parse_example(serialized)
    id_ = read_id(example, serialized, spec)
    try:
        image_format, payload = image_payload(example, spec)
        units = read_units(example, spec)
        ground_truth = (read_boxes(example, spec) if spec.boxes_key
                        else read_mask(example, spec) if spec.mask_key else None)
        features = read_copied(example, spec) if spec.copy_features else ()
    except StageError as error:
        error.record_id = id_
        raise
    return CheckedRecord(id_, units, serialized, image_format, payload, ground_truth, features)
