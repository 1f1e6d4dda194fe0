"""Dead letters: the records the job could not explain, with the stage they failed at and
why, written beside its results; below every stage that makes them (the read's, the
worker's).

- `STAGES`: where a record can fail, in the job's order; a `StageError` says which, with
  its reason in one line (`one_line`: the first line, no TensorFlow node stack, at most
  `MESSAGE_LIMIT` characters).
- `DeadLetter`, `encode_dead_letter`, `decode_dead_letter`, `read_dead_letters`: the
  record format (a `tf.train.Example` of bytes features `record`, `stage`, `error`, `id`).
- `CountedStage`: a Beam stage whose dead letters are counted per stage
  (`pipeline.counters`), so that read = explained + dead-lettered can be checked.

Usage:

    for letter in read_dead_letters("out/expl.dead_letters-*"):
        print(letter.stage, letter.id, letter.error)
"""

import re
from typing import List, NamedTuple

import apache_beam as beam
import tensorflow as tf
from apache_beam.metrics import Metrics

from explain_lib.io import iterate_decoded
from pipeline.counters import METRICS_NAMESPACE, dead_letter_counter

DEAD_LETTERS = "dead_letters"
"""Tag of every stage's dead-letter output."""

STAGES = ("read", "parse", "validate", "decode", "explain", "encode")
"""Where a record can fail, in pipeline order; the dead letters' `stage` is one of these."""


MESSAGE_LIMIT = 300
"""Characters of a dead letter's error at most: it is one line, for a table or a log."""


def one_line(message: str) -> str:
    """`message` as a dead letter's error: its first non-empty line, without the op's
    location and node stack TensorFlow adds to its errors, at most `MESSAGE_LIMIT`
    characters."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", lines[0] if lines else "")
    text = re.sub(r"\s*(\[\[.*|\[Op:.*)$", "", text)  # a graph's node, an op's name
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT - 3] + "..."


class StageError(Exception):
    """A record failed at `stage` (one of `STAGES`) for the reason in the message (made one
    line, `one_line`)."""

    def __init__(self, stage: str, message: str, record_id: str = ""):
        super().__init__(one_line(message))
        self.stage = stage
        self.record_id = record_id


class DeadLetter(NamedTuple):
    """A record that could not be explained: its original bytes, the stage it failed at, the
    error message, and its id when it was known."""

    record: bytes
    stage: str
    error: str
    id: str = ""


DEAD_LETTER_FEATURES = {
    "record": tf.io.FixedLenFeature([], tf.string),
    "stage": tf.io.FixedLenFeature([], tf.string),
    "error": tf.io.FixedLenFeature([], tf.string),
    "id": tf.io.FixedLenFeature([], tf.string, default_value=""),
}
"""Feature spec of a dead-letter record, for `tf.io.parse_single_example`."""


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """A dead letter as a serialized `tf.train.Example` with bytes features `record` (the
    original input record), `stage`, `error` and `id`; the same bytes on every run."""

    def feature(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "record": feature(bytes(letter.record)),
                "stage": feature(letter.stage.encode()),
                "error": feature(letter.error.encode("utf-8", errors="replace")),
                "id": feature(letter.id.encode("utf-8", errors="replace")),
            }
        )
    ).SerializeToString(deterministic=True)  # (a map's order is otherwise arbitrary)


def decode_dead_letter(serialized: bytes) -> DeadLetter:
    """A serialized dead letter back as a `DeadLetter`; ValueError for bytes that are not
    one (not a `tf.train.Example`, or without a known `stage`)."""
    try:
        feature = tf.train.Example.FromString(serialized).features.feature
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError
        raise ValueError(f"Not a tf.train.Example ({type(error).__name__}).") from None

    def value(key: str) -> bytes:
        values = feature[key].bytes_list.value if key in feature else []
        return values[0] if values else b""

    stage = value("stage").decode("utf-8", errors="replace")
    if stage not in STAGES:
        raise ValueError(f"Not a dead letter: its stage is {stage!r} (its features: "
                         f"{', '.join(sorted(feature)) or 'none'}).")
    return DeadLetter(
        record=value("record"),
        stage=stage,
        error=value("error").decode("utf-8", errors="replace"),
        id=value("id").decode("utf-8", errors="replace"),
    )


def read_dead_letters(file_pattern) -> List[DeadLetter]:
    """Every dead letter in the TFRecord files matching `file_pattern`, as `DeadLetter`s.
    Raises ValueError, one line naming the file, for a file that cannot be read or holds
    something else.

    Usage:

        for letter in read_dead_letters("out/expl.dead_letters-*"):
            print(letter.stage, letter.error)
    """
    return list(iterate_decoded(file_pattern, decode_dead_letter))


class CountedStage(beam.DoFn):
    """A stage: a main output, and dead letters counted per stage."""

    def setup(self):
        self._dead_letters = {
            stage: Metrics.counter(METRICS_NAMESPACE, dead_letter_counter(stage))
            for stage in STAGES
        }

    def dead_letter(self, record: bytes, error: StageError) -> bytes:
        """`record`'s serialized dead letter, counted under its stage."""
        self._dead_letters[error.stage].inc()
        return encode_dead_letter(DeadLetter(record, error.stage, str(error), error.record_id))


__all__ = [
    "DEAD_LETTERS",
    "DEAD_LETTER_FEATURES",
    "MESSAGE_LIMIT",
    "STAGES",
    "CountedStage",
    "DeadLetter",
    "StageError",
    "decode_dead_letter",
    "encode_dead_letter",
    "one_line",
    "read_dead_letters",
]
