"""Batches that fit in memory: a batch that runs out of accelerator memory is split in halves
and retried, down to single records, and the size that fits is kept for the worker's next
batches.

`--batch_size` is a guess at what fits on a worker's accelerator; another model, image size
or method (Score-CAM's masks, SmoothGrad's copies) may need more memory than that guess
allows. Failing those records, or the job, would be wrong: they fit in smaller batches.

Separation of concerns:

- `is_out_of_memory` recognises the failure: TensorFlow's `ResourceExhaustedError`, or an
  error whose message says OOM / resource exhausted / out of memory (XLA and other
  runtimes say it in text).
- `BatchLimit` is the size that fits on this worker: None until a batch runs out of memory,
  then half of it, halved again as long as chunks run out of memory; never raised again
  (memory other processes took on the device may not come back). A chunk no larger than
  one that fitted before is split without lowering the limit: its records are the heavy
  ones (more units to explain), not the size. One per loaded model (`limit_for`), so the
  threads of a worker process that share the model share what they learn.
- `explain_fitting` explains a batch in chunks within the limit, splitting a chunk that
  runs out of memory down to single records. Only a single record that still runs out of
  memory fails, with the error; other errors are handed to the caller's fallback (the
  handler retries those records one by one).

Usage, in `pipeline.worker.explaining.explain_decoded`:

    outcomes = explain_fitting(records, explain, limit_for(model), fallback)
"""

import logging
import re
import threading
import weakref
from typing import Callable, List, Optional, Sequence

import tensorflow as tf

from pipeline.io.dead_letters import StageError

_OUT_OF_MEMORY = re.compile(r"\bOOM\b|resource[ _]exhausted|out of memory", re.IGNORECASE)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` says the device ran out of memory."""
    return isinstance(error, tf.errors.ResourceExhaustedError) or bool(
        _OUT_OF_MEMORY.search(str(error)))


class BatchLimit:
    """What a worker has learnt of batch sizes: `size`, the most records it explains at once
    (None: no limit found yet), and the largest chunk that has fitted under that limit."""

    def __init__(self):
        self.size: Optional[int] = None
        self._fitted = 0
        self._lock = threading.Lock()

    def fitted(self, count: int) -> None:
        """`count` records were explained at once."""
        with self._lock:
            self._fitted = max(self._fitted, count)

    def ran_out(self, count: int) -> bool:
        """`count` records at once ran out of memory: halve the limit, unless as many have
        fitted before (then these records are heavier than most, and only they are split).
        Returns whether the limit was lowered."""
        with self._lock:
            if count <= self._fitted:
                return False
            self.size = min(self.size or count, (count + 1) // 2)
            self._fitted = min(self._fitted, self.size)
        logging.warning("Explaining %d records at once ran out of memory; this worker now "
                        "explains at most %d records per batch.", count, self.size)
        return True


_LIMITS: "weakref.WeakKeyDictionary[object, BatchLimit]" = weakref.WeakKeyDictionary()
_LIMITS_LOCK = threading.Lock()


def limit_for(model) -> BatchLimit:
    """The `BatchLimit` of a loaded model (a `Worker`), kept as long as the model is."""
    with _LIMITS_LOCK:
        limit = _LIMITS.get(model)
        if limit is None:
            limit = _LIMITS[model] = BatchLimit()
        return limit


def explain_fitting(
    records: Sequence,
    explain: Callable[[slice], List],
    limit: BatchLimit,
    fallback: Callable[[slice, Exception], List],
) -> List:
    """The outcomes of explaining `records` (objects with an `id`), in order, in chunks of at
    most `limit.size` records: `explain(chunk)` explains `records[chunk]` (a slice, which
    the caller applies to its images too). A chunk that runs out of memory is explained
    again in smaller chunks (see `BatchLimit.ran_out`); a single record that runs out of
    memory gets a `StageError("explain")` with the error; a chunk failing otherwise gets
    `fallback(chunk, error)`."""
    return _explain_range(records, 0, len(records), explain, limit, fallback)


def _explain_range(records, start: int, stop: int, explain, limit: BatchLimit,
                   fallback) -> List:
    """`explain_fitting` of `records[start:stop]`."""
    outcomes: List = []
    while start < stop:
        chunk = slice(start, min(stop, start + (limit.size or stop - start)))
        outcomes += _explain_chunk(records, chunk, explain, limit, fallback)
        start = chunk.stop
    return outcomes


def _explain_chunk(records, chunk: slice, explain, limit: BatchLimit, fallback) -> List:
    try:
        outcomes = explain(chunk)
    except Exception as error:  # noqa: BLE001 - out of memory, or the fallback's to handle
        if not is_out_of_memory(error):
            return fallback(chunk, error)
        count = chunk.stop - chunk.start
        if count == 1:
            return [StageError("explain", "out of memory even alone: "
                               f"{type(error).__name__}: {error}", records[chunk.start].id)]
        if limit.ran_out(count):
            return _explain_range(records, chunk.start, chunk.stop, explain, limit, fallback)
        middle = chunk.start + (count + 1) // 2
        return (_explain_chunk(records, slice(chunk.start, middle), explain, limit, fallback)
                + _explain_chunk(records, slice(middle, chunk.stop), explain, limit, fallback))
    limit.fitted(chunk.stop - chunk.start)
    return outcomes


__all__ = ["BatchLimit", "explain_fitting", "is_out_of_memory", "limit_for"]
