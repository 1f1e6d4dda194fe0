"""Stage "decode": checked records' images (and ground-truth masks) as pixels at the
model's input size, a batch at a time.

`decode_batch` decodes and resizes a whole batch in compiled calls of up to `DECODE_CHUNK`
images, in parallel outside the GIL, on the worker that explains them, falling back to one
record at a time (`decode_payload`) only to find which records of a failed batch are bad.
A JPEG two or more times the model's input size in both dimensions is decoded at a reduced
scale (`decode_jpeg_at`: libjpeg's 1/2, 1/4 or 1/8, in the DCT, the largest that keeps the
image at least the model's size), then resized as any other: most of its decoding, and of
its resizing, is never done. `decode_masks` decodes the masks of the localisation metrics
the same way, a batch at a time (at full scale: a mask is thresholded after resizing).
Everything here is numpy with TensorFlow ops for decoding and resizing only, so the same
functions serve the job, the tests and the rendering tools (`decode_record`,
`parse_record`: one record).

Usage:

    images, errors = decode_batch(checked_records, spec)   # (N, H, W, C), None or StageError
    record = parse_record(serialized, spec)    # ImageRecord, or raises StageError
"""

import functools
import threading
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from pipeline.io.dead_letters import StageError, one_line
from pipeline.worker.parsing import (
    CheckedRecord,
    RecordSpec,
    check_record,
    detect_format,
    image_payload,
)


Pixels = Union[tf.Tensor, np.ndarray]
"""A batch of decoded images: the compiled decoding's own tensor, or a numpy array."""


class ImageRecord(NamedTuple):
    """A record ready to explain: `image` (H, W, C) pixels in [0, 255] (uint8 or float32) at
    the model's input size, `units` (K,) int64 or None (explain the top-K predictions), and
    the original serialized `record` (kept for the dead letters of later stages)."""

    id: str
    image: np.ndarray
    units: Optional[np.ndarray]
    record: bytes


def _reason(error: Exception) -> str:
    """An error's message (TensorFlow's own, without the op's location it prefixes)."""
    return one_line(getattr(error, "message", None) or str(error))


JPEG_RATIOS = (1, 2, 4, 8)
"""The scales libjpeg decodes a JPEG at, as `tf.io.decode_jpeg`'s `ratio`: 1/ratio of each
side, computed in the DCT (most of the decoding work is skipped)."""


def jpeg_ratio_index(shape, size) -> tf.Tensor:
    """The index in `JPEG_RATIOS` of the ratio a JPEG of `shape` (height and width first, as
    `tf.io.extract_jpeg_shape` gives it) is decoded at for a model input of `size` (H, W):
    the largest ratio r of 2, 4 and 8 with the image at least r times `size` in both
    dimensions (so that the decoded image, ceil(side / r), is at least `size`), 0 (full
    size) when the image is less than twice `size` in either dimension. TF ops, int32."""
    height, width = shape[0], shape[1]
    return tf.add_n([tf.cast((height >= ratio * size[0]) & (width >= ratio * size[1]),
                             tf.int32) for ratio in JPEG_RATIOS[1:]])


def decode_jpeg_at(data, channels: int, size) -> tf.Tensor:
    """A JPEG image decoded for a model input of `size` (H, W): at the reduced scale
    `jpeg_ratio_index` chooses from its header (`tf.io.extract_jpeg_shape`, which reads no
    pixels), at full size when it is less than twice `size`; (h, w, channels) uint8, at
    least `size` unless the image is smaller. TF ops (a switch over the four ratios, each a
    `tf.io.decode_jpeg` of its own): eager, or in a graph.

    Usage:

        image = decode_jpeg_at(jpeg_bytes, 3, (224, 224))   # 1024x768: 512x384 (ratio 2)
    """
    index = jpeg_ratio_index(tf.io.extract_jpeg_shape(data), size)
    return tf.switch_case(index, [functools.partial(tf.io.decode_jpeg, data, channels=channels,
                                                    ratio=ratio) for ratio in JPEG_RATIOS])


def decode_payload(image_format: str, payload, spec: RecordSpec, resize: bool = True
                   ) -> np.ndarray:
    """Stage "decode" for one image: (H, W, C) pixels in [0, 255] at the model's input size
    (at its stored size with `resize=False`); uint8 when decoding gave exact 8-bit pixels,
    float32 otherwise (after resizing, or for float raw tensors). A JPEG two or more times
    the model's size is decoded at a reduced scale first (`decode_jpeg_at`), unless
    `resize=False`. `decode_batch` does the same for a batch at once."""
    if image_format == "raw":
        image = payload
    else:
        try:
            if image_format == "jpeg" and resize:
                image = decode_jpeg_at(payload, spec.channels, spec.image_size).numpy()
            else:
                decoder = tf.io.decode_jpeg if image_format == "jpeg" else tf.io.decode_png
                image = decoder(payload, channels=spec.channels).numpy()
        except Exception as error:
            raise StageError("decode",
                             f"cannot decode {image_format} image: {_reason(error)}") from None
    if min(image.shape[:2]) == 0:
        raise StageError("validate", f"image is empty (shape {image.shape}).")
    if resize and tuple(image.shape[:2]) != tuple(spec.image_size):
        try:
            image = tf.image.resize(image, spec.image_size).numpy()
        except Exception as error:
            raise StageError(
                "decode", f"cannot resize image of shape {image.shape}: {error}"
            ) from None
    return image


def decode_image(
    example: tf.train.Example, spec: RecordSpec, resize: bool = True
) -> np.ndarray:
    """Stages "validate" and "decode" for the image of a parsed record (see
    `decode_payload`)."""
    return decode_payload(*image_payload(example, spec), spec, resize=resize)


DECODE_CHUNK = 32
"""Images one compiled decoding call takes at most: a batch decodes in chunks of this many
(a shorter one padded to the next power of two), each chunk one call whose graph decodes
(and, where needed, resizes) its images side by side."""


_batch_decoders: Dict[Tuple, Callable] = {}
_batch_decoders_lock = threading.Lock()


def _batch_decoder(image_format: str, spec: RecordSpec, chunk: int) -> Callable:
    """A compiled function decoding exactly `chunk` `image_format` strings at the model's
    size, one per format, size, channel count and chunk, built once per process. It returns
    `(pixels, resized)`, one of them empty (0, H, W, C): `pixels` (chunk, H, W, C) uint8
    when every image decodes at the model's size (nothing to resize: exact pixels, a
    quarter of float32's bytes), else `resized` (chunk, H, W, C) float32, every image
    resized bilinearly (an image already at the model's size comes out as its own pixels).
    Each image is `decode_payload`'s result for it (a large JPEG decoded at a reduced scale:
    `decode_jpeg_at`). The graph holds one decoding (and resizing) per image, with no loop,
    so TensorFlow runs them in parallel on its threads, outside the GIL. The function is
    the traced (concrete) one, whose calls skip `tf.function`'s matching of arguments."""
    key = (image_format, tuple(spec.image_size), spec.channels, chunk)
    with _batch_decoders_lock:
        if key not in _batch_decoders:
            if image_format == "jpeg":
                decoder = functools.partial(decode_jpeg_at, channels=spec.channels,
                                            size=spec.image_size)
            else:
                decoder = functools.partial(tf.io.decode_png, channels=spec.channels)
            size = tf.constant(spec.image_size, tf.int32)
            empty = (0, *spec.image_size, spec.channels)

            @tf.function(input_signature=[tf.TensorSpec([chunk], tf.string)])
            def decode(strings):
                images = [decoder(data) for data in tf.unstack(strings, chunk)]
                at_size = tf.reduce_all(
                    [tf.reduce_all(tf.shape(image)[:2] == size) for image in images])
                pixels = tf.cond(at_size, lambda: tf.stack(images),
                                 lambda: tf.zeros(empty, tf.uint8))
                resized = tf.cond(
                    at_size, lambda: tf.zeros(empty, tf.float32),
                    lambda: tf.stack([tf.image.resize(image, size) for image in images]))
                return pixels, resized

            _batch_decoders[key] = decode.get_concrete_function()
    return _batch_decoders[key]


_fillers: Dict[Tuple, bytes] = {}


def _filler(image_format: str, spec: RecordSpec) -> bytes:
    """A black image at the model's size in `image_format`: what pads a chunk of compressed
    images (at the model's size, so that it keeps a chunk of such images in uint8)."""
    key = (image_format, tuple(spec.image_size), spec.channels)
    if key not in _fillers:
        encode = tf.io.encode_jpeg if image_format == "jpeg" else tf.io.encode_png
        channels = min(spec.channels, 3) if image_format == "jpeg" else spec.channels
        _fillers[key] = encode(tf.zeros((*spec.image_size, channels), tf.uint8)).numpy()
    return _fillers[key]


def _decode_compressed(image_format: str, payloads: Sequence[bytes], spec: RecordSpec
                       ) -> Pixels:
    """(N, H, W, C): JPEG or PNG images decoded at the model's size by compiled calls of
    `DECODE_CHUNK` images (`_batch_decoder`): uint8 when every image was at that size,
    float32 when any was resized; the call's own tensor when they took one call, else a
    numpy array. The last chunk is padded with `_filler` images to the next power of two,
    so that a process traces a handful of chunk sizes. Raises TensorFlow's error when one
    image cannot be decoded."""
    parts = []
    for start in range(0, len(payloads), DECODE_CHUNK):
        part = list(payloads[start:start + DECODE_CHUNK])
        chunk = min(DECODE_CHUNK, 1 << (len(part) - 1).bit_length())
        strings = tf.constant(part + [_filler(image_format, spec)] * (chunk - len(part)),
                              tf.string)
        pixels, resized = _batch_decoder(image_format, spec, chunk)(strings)
        images = pixels if pixels.shape[0] else resized
        parts.append(images if len(part) == chunk else images[:len(part)])
    if len(parts) == 1:
        return parts[0]
    # Read-only views of the calls' outputs (`.numpy()` would copy each); uint8 and float32
    # chunks concatenate to float32, exactly.
    return np.concatenate([np.asarray(part) for part in parts])


def decode_batch(records: Sequence["CheckedRecord"], spec: RecordSpec
                 ) -> Tuple[Pixels, List[Optional[StageError]]]:
    """Stage "decode" for a batch: `images` (N, H, W, C) at the model's size, uint8 when the
    batch is JPEG or PNG images all stored at that size (exact pixels), float32 otherwise;
    and per record None or the `StageError` that record failed with (its image is then
    zeros). `images` is a numpy array, or the compiled call's own tensor for the usual
    batch (below), which reaches the engine without a copy (`np.asarray` views it).

    JPEG and PNG images are decoded by compiled calls per format (`_decode_compressed`); raw
    tensors are stacked. When a batched call fails (one corrupt image fails the whole op),
    its records are decoded one by one (`decode_payload`), so that only the bad ones fail,
    each with its own message. A batch of one format that decodes in one chunk is returned
    as the compiled call made it: its tensor.
    """
    errors: List[Optional[StageError]] = [None] * len(records)
    groups: Dict[str, List[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(record.image_format, []).append(i)
    if len(groups) == 1 and "raw" not in groups:  # the usual batch: one compressed format
        try:
            return _decode_compressed(records[0].image_format,
                                      [record.payload for record in records], spec), errors
        except (tf.errors.OpError, ValueError):
            pass  # find the bad ones below
    images = np.zeros((len(records), *spec.image_size, spec.channels), np.float32)
    for image_format, indices in groups.items():
        if image_format != "raw" and len(groups) > 1:  # (one format: tried above)
            try:
                images[indices] = _decode_compressed(
                    image_format, [records[i].payload for i in indices], spec)
                continue
            except (tf.errors.OpError, ValueError):
                pass  # find the bad ones below
        for i in indices:
            try:
                images[i] = decode_payload(image_format, records[i].payload, spec)
            except StageError as error:
                error.record_id = records[i].id
                errors[i] = error
            except Exception as error:  # noqa: BLE001 - becomes this record's dead letter
                errors[i] = StageError("decode", f"{type(error).__name__}: {error}",
                                       records[i].id)
    return images, errors


_mask_decoders: Dict[Tuple, Callable] = {}


def _mask_decoder(image_format: str, size: Tuple[int, int]) -> Callable:
    """A compiled function decoding a batch of `image_format` masks to (N, H, W) float32 of
    0 and 1 at the model's size: nonzero pixels are the object; a mask of another size is
    resized bilinearly and thresholded at one half (nearest-like, without its shift)."""
    key = (image_format, tuple(size))
    with _batch_decoders_lock:
        if key not in _mask_decoders:
            decoder = tf.io.decode_jpeg if image_format == "jpeg" else tf.io.decode_png
            target = tf.constant(size, tf.int32)

            def one(data):
                mask = tf.cast(decoder(data, channels=1) > 0, tf.float32)
                return tf.cast(tf.image.resize(mask, target)[..., 0] >= 0.5, tf.float32)

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            def decode(strings):
                return tf.map_fn(one, strings, parallel_iterations=16,
                                 fn_output_signature=tf.TensorSpec(size, tf.float32))

            _mask_decoders[key] = decode
    return _mask_decoders[key]


def decode_masks(records: Sequence["CheckedRecord"], spec: RecordSpec
                 ) -> Tuple[np.ndarray, List[Optional[StageError]]]:
    """Stage "decode" for the ground-truth masks of a batch (`spec.mask_key`): (N, H, W)
    float32 masks of 0 and 1 at the model's size (zeros for a record without a mask, which
    the localisation metrics score NaN), and per record None or its `StageError`: one
    compiled call per format, and one record at a time to find a broken one."""
    masks = np.zeros((len(records), *spec.image_size), np.float32)
    errors: List[Optional[StageError]] = [None] * len(records)
    groups: Dict[str, List[int]] = {}
    for i, record in enumerate(records):
        if record.ground_truth is not None:
            groups.setdefault(detect_format(record.ground_truth), []).append(i)
    for image_format, indices in groups.items():
        decoder = _mask_decoder(image_format, spec.image_size)
        try:
            encoded = tf.constant([records[i].ground_truth for i in indices])
            masks[indices] = decoder(encoded).numpy()
            continue
        except (tf.errors.OpError, ValueError):
            pass  # find the bad ones below
        for i in indices:
            try:
                masks[i] = decoder(tf.constant([records[i].ground_truth])).numpy()[0]
            except (tf.errors.OpError, ValueError):
                # The compiled decoder's error is its graph's: decoding the mask alone, op by
                # op, says what is wrong with it in the decoder's own words.
                reason = _mask_reason(records[i].ground_truth, image_format)
                errors[i] = StageError("decode", f"cannot decode the {image_format} mask of "
                                       f"{spec.mask_key!r}: {reason}", records[i].id)
    return masks, errors


def _mask_reason(data: bytes, image_format: str) -> str:
    """Why the `image_format` mask `data` does not decode, as the decoding op says it."""
    decoder = tf.io.decode_jpeg if image_format == "jpeg" else tf.io.decode_png
    try:
        decoder(data, channels=1)
    except Exception as error:  # noqa: BLE001 - its message is the reason
        return _reason(error)
    return "it decodes alone, but not with the batch's decoder"


def decode_record(checked: CheckedRecord, spec: RecordSpec) -> ImageRecord:
    """Stage "decode" for one record: a checked record with its image decoded and resized.
    Raises StageError; an unforeseen error of the decoding ops is attributed to "decode"."""
    try:
        image = decode_payload(checked.image_format, checked.payload, spec)
    except StageError as error:
        error.record_id = checked.id
        raise
    except Exception as error:  # noqa: BLE001 - becomes this record's dead letter
        raise StageError("decode", f"{type(error).__name__}: {error}", checked.id) from None
    return ImageRecord(checked.id, image, checked.units, checked.record)


def parse_record(serialized: bytes, spec: RecordSpec) -> ImageRecord:
    """One serialized record through every input stage: `decode_record(check_record(...))`.

    Usage:

        record = parse_record(serialized, RecordSpec((224, 224), 3, 1000))
        record.id, record.image.shape, record.units
    """
    return decode_record(check_record(serialized, spec), spec)
