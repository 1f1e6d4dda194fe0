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
  then the size of the halves that were retried; never raised again (memory taken by other
  processes on the device may not come back). One per loaded model (`limit_for`), so the
  threads of a worker process that share the model share what they learn.
- `explain_fitting` explains a batch in chunks within the limit, halving the chunk and
  lowering the limit on each out-of-memory failure. Only a single record that still runs
  out of memory fails, with the error; other errors are handed to the caller's fallback
  (the handler retries those records one by one).

Usage, in `ExplainModelHandler.run_inference`:

    outcomes = explain_fitting(batch, explain, limit_for(model), fallback)
"""

import logging
import re
import threading
import weakref
from typing import Callable, List, Optional, Sequence

import tensorflow as tf

from pipeline.records import StageError

_OUT_OF_MEMORY = re.compile(r"\bOOM\b|resource[ _]exhausted|out of memory", re.IGNORECASE)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` says the device ran out of memory."""
    return isinstance(error, tf.errors.ResourceExhaustedError) or bool(
        _OUT_OF_MEMORY.search(str(error)))


class BatchLimit:
    """The largest batch known to fit on this worker (None: no limit found yet)."""

    def __init__(self):
        self._size: Optional[int] = None
        self._lock = threading.Lock()

    @property
    def size(self) -> Optional[int]:
        return self._size

    def lower(self, size: int, failed: int) -> None:
        """A batch of `failed` records ran out of memory: from now on at most `size`."""
        with self._lock:
            if self._size is not None and self._size <= size:
                return
            self._size = size
        logging.warning("Explaining %d records at once ran out of memory; this worker now "
                        "explains at most %d records per batch.", failed, size)


_LIMITS: "weakref.WeakKeyDictionary[object, BatchLimit]" = weakref.WeakKeyDictionary()
_LIMITS_LOCK = threading.Lock()


def limit_for(model) -> BatchLimit:
    """The `BatchLimit` of a loaded model (an `Explainer`), kept as long as the model is."""
    with _LIMITS_LOCK:
        limit = _LIMITS.get(model)
        if limit is None:
            limit = _LIMITS[model] = BatchLimit()
        return limit


def explain_fitting(
    records: Sequence,
    explain: Callable[[Sequence], List],
    limit: BatchLimit,
    fallback: Callable[[Sequence, Exception], List],
) -> List:
    """`explain(chunk)`'s outcomes for every record, in order, explaining chunks of at most
    `limit.size` records. A chunk that runs out of memory is retried in halves (lowering
    the limit); a single record that runs out of memory gets a `StageError("explain")` with
    the error; a chunk failing otherwise gets `fallback(chunk, error)`."""
    outcomes: List = []
    start = 0
    while start < len(records):
        chunk = records[start:start + (limit.size or len(records))]
        try:
            outcomes += explain(chunk)
        except Exception as error:  # noqa: BLE001: out of memory, or the fallback's to handle
            if not is_out_of_memory(error):
                outcomes += fallback(chunk, error)
            elif len(chunk) > 1:
                limit.lower((len(chunk) + 1) // 2, len(chunk))
                continue  # the same records again, in smaller chunks
            else:
                outcomes.append(StageError(
                    "explain", f"out of memory even alone: {type(error).__name__}: {error}",
                    getattr(chunk[0], "id", "")))
        start += len(chunk)
    return outcomes


__all__ = ["BatchLimit", "explain_fitting", "is_out_of_memory", "limit_for"]
