"""Explanations on disk: one codec and one record schema for the writer and every reader.

Separation of concerns (imports run down this list, never up; `ids` stands apart):

- `readers`: *files* of records. Listing them (`list_files`), their compression from their
  names (`compression_of`), the `tf.data` reader (`read_explanations`, maps at the size
  the caller asks for), the Python iterators (`iterate_records`, `iterate_decoded`) and
  errors that name the file (`file_error`).
- `schema`: *one record*, one `tf.train.Example` per explained input: its features
  (`FEATURES`, `metric_features`; the table of schema v2 is in its docstring), the writer
  (`encode_explanations`, a batch at a time, as the Beam pipeline writes;
  `encode_explanation` for one input) and the decoders, in numpy (`decode_explanation`)
  and in TensorFlow ops (`parse_explanation`). Readers read every version they know
  (`READABLE_VERSIONS`): v1 records have no probabilities or metrics.
- `codecs`: *maps*. An encoding (`ENCODINGS`) turns a stack of maps `(H, W, K)` float32 into
  bytes plus the few numbers needed to read them back, and decodes them in numpy
  (`decode_maps`) and in TensorFlow ops, the same layout twice so that they agree
  exactly; the size maps are read at (`Size`, `check_size`, `resize_maps`): resizing on
  read is what lets a 7x7 Grad-CAM map be stored at 7x7.
- `png` and `wire`: *bytes*. The grayscale PNG files of png8 and png16, and the protobuf
  wire format of a `tf.train.Example` (`serialize_example`), written directly.
- `ids`: *input ids* (`input_id`, `record_id`, `text_id`): how an input record is named, so
  that explanations join back to their inputs; the pipeline and the analysis helpers
  share it.

The Beam pipeline writes through `encode_explanations`; everything downstream reads through
this package, so a new encoding is added in one place (an entry in `ENCODINGS`). The names
below are this package's interface: import them from `explain_lib.io`, not from its modules.

Usage:

    from explain_lib import io as explain_io

    record = explain_io.encode_explanation("img-1", units=[3], logits=[7.2], maps=maps)
    decoded = explain_io.decode_explanation(record)    # dict of numpy arrays
    for row in explain_io.read_explanations("out/expl-*.tfrecord.gz", size="input"):
        row["maps"]                                    # tf.Tensor (H, W, K) float32
"""

from explain_lib.io.codecs import (
    DEFAULT_ENCODING,
    ENCODINGS,
    EncodedMaps,
    MapEncoding,
    Size,
    check_size,
    decode_maps,
    encode_maps,
    get_encoding,
    max_decode_error,
    resize_maps,
)
from explain_lib.io.ids import BYTES_ID_PREFIX, id_bytes, input_id, record_id, text_id
from explain_lib.io.png import SMALL_PNG_BYTES
from explain_lib.io.readers import (
    ITERATE_BATCH,
    check_explanation_files,
    compression_of,
    compression_type,
    file_error,
    iterate_decoded,
    iterate_records,
    list_files,
    read_explanations,
)
from explain_lib.io.schema import (
    FEATURES,
    METRIC_PREFIX,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    decode_explanation,
    encode_explanation,
    encode_explanations,
    metric_features,
    parse_explanation,
)
from explain_lib.io.wire import serialize_example

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
    "encode_explanations",
    "Size",
    "compression_type",
    "ITERATE_BATCH",
]
