"""Files of explanation records: which files, and reading them with `tf.data` or in Python.

This module owns files and nothing inside a record:

- *Listing* (`list_files`, one or several glob patterns on any filesystem `tf.io.gfile`
  knows) and *compression* from a file's name (`compression_of`; `compression_type` in
  TensorFlow ops).
- The *`tf.data` reader* (`read_explanations`): the records of the files as a
  `tf.data.Dataset` of dicts, with the maps at the size the caller asks for; the first
  record of each file is checked at once (`check_explanation_files`).
- *Python iterators*: `iterate_records` (raw bytes) and `iterate_decoded` (each record
  through a decoder, such as `decode_explanation`).
- *Errors that name the file* (`file_error`): TensorFlow's do not.

What one record holds, and how it is parsed, is `explain_lib.io.schema`'s.

Usage:

    for row in read_explanations("out/expl-*.tfrecord.gz", size="input"):
        row["maps"]                                # tf.Tensor (H, W, K) float32
    for row in iterate_decoded("out/expl-*", decode_explanation):
        row["id"], row["maps"]                     # str, numpy (H, W, K) float32
"""

import re
from typing import Any, Callable, Optional, Sequence, Union

import tensorflow as tf

from explain_lib.io.codecs import Size, check_size
from explain_lib.io.schema import check_version, parse_example, parse_explanation, record_version


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
            check_version(record_version(parse_example(record, "A record")))
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
