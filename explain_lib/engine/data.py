"""The data adapter of `explain` and `evaluate`: whatever the user passes becomes an
ordered stream of batches, each a dict of per-sample arrays by name (`{"x": ..., "y": ...}`,
None where absent), and their number.

- Arrays and tensors are sliced into `batch_size` batches (default 32), `x` together with
  the arrays aligned with it (`explain`'s units `y`; `evaluate`'s `y`, `maps`, `boxes`,
  `masks`).
- A `tf.data.Dataset` yields batches; it is already batched.
- A Python generator or iterator yields the same; it is read ahead by one background thread,
  at most `max_queue_size` batches in advance.
- A `keras.utils.PyDataset` is read ahead by `workers` threads (or processes with
  `use_multiprocessing`), at most `max_queue_size` batches in advance, always returned in
  index order. When the reading arguments are left at their defaults, the dataset's own
  `workers`, `use_multiprocessing` and `max_queue_size` apply.

A stream's elements become batch dicts by the caller's `parse`: by default (`explain`'s) an
element is `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`, the weights ignored.

`steps` bounds the number of batches read from any source.

Usage:

    batches, count = adapt(images, {"y": labels}, batch_size=8)
    for batch in batches:
        batch["x"], batch["y"]   # (8, H, W, C), (8,); the last batch may be smaller
"""

import concurrent.futures
import inspect
import math
import multiprocessing
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

DEFAULT_BATCH_SIZE = 32
_READ_DEFAULTS = {"max_queue_size": 10, "workers": 1, "use_multiprocessing": False}
_END = object()

ROW_NAMES = {"y": "unit indices"}
"""What one row of an aligned array holds, where its name does not say it."""

Batch = Dict[str, Any]


def unpack(element) -> Tuple[Any, Any]:
    """`(x, y)` from a batch given as `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`."""
    if isinstance(element, (tuple, list)) and 1 <= len(element) <= 3:
        return element[0], element[1] if len(element) > 1 else None
    return element, None


def as_batch(element) -> Batch:
    """`{"x", "y"}` from a stream's element (see `unpack`): `explain`'s batches."""
    x, y = unpack(element)
    return {"x": x, "y": y}


def is_stream(x) -> bool:
    """Whether `x` yields batches (a dataset, a PyDataset, a generator) rather than being
    sliced into them."""
    return isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)) or _is_iterator(x)


def adapt(
    x,
    aligned: Optional[Dict[str, Any]] = None,
    batch_size: Optional[int] = None,
    steps: Optional[int] = None,
    max_queue_size: int = 10,
    workers: int = 1,
    use_multiprocessing: bool = False,
    parse: Callable[[Any], Batch] = as_batch,
    purpose: str = "explain",
) -> Tuple[Iterator[Batch], Optional[int]]:
    """The batches of `x` and their number (None when unknown).

    Args:
        x: arrays or tensors (N, ...), or a stream (see `is_stream`).
        aligned: arrays with one row per sample of `x`, by name, sliced with it (a None
            stays None in every batch); a stream carries them in its elements instead, so
            for a stream they must all be None (the caller says how to fix that first).
        parse: how a stream's element becomes a batch dict (`as_batch`).
        purpose: what the caller does with the batches, for error messages ("explain").
        The others: as for `explain`.
    """
    aligned = dict(aligned or {})
    given = [key for key, value in aligned.items() if value is not None]
    if is_stream(x) and given:
        raise ValueError(
            f"{', '.join(given)} must be None when x is a {type(x).__name__}: make it "
            "yield them with each batch instead."
        )
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be a positive number of batches, got {steps}.")

    if isinstance(x, tf.data.Dataset):
        batches, count = _from_dataset(x, steps)
    elif isinstance(x, keras.utils.PyDataset):
        batches, count = _from_py_dataset(x, steps, max_queue_size, workers,
                                          use_multiprocessing)
    elif _is_iterator(x):
        if workers != 1 or use_multiprocessing:
            raise ValueError(
                "A generator can only be read by one worker: wrap the data in a "
                "keras.utils.PyDataset (indexable batches) to read it with workers > 1 or "
                "use_multiprocessing=True."
            )
        batches, count = _prefetch(lambda _: next(x, _END), steps, 1, max_queue_size), steps
    else:
        return _from_arrays({"x": x, **aligned}, batch_size, steps, purpose)
    return map(parse, batches), count


def _is_iterator(x) -> bool:
    return inspect.isgenerator(x) or (hasattr(x, "__next__") and hasattr(x, "__iter__"))


def _from_arrays(arrays: Dict[str, Any], batch_size, steps, purpose):
    arrays = {key: value if value is None or isinstance(value, (np.ndarray, tf.Tensor))
              else np.asarray(value) for key, value in arrays.items()}
    x = arrays["x"]
    count = int(x.shape[0]) if len(x.shape) else 0
    if count == 0:
        raise ValueError(
            f"x is empty (shape {tuple(x.shape)}): there is nothing to {purpose}.")
    for key, value in arrays.items():
        if key != "x" and value is not None and int(value.shape[0]) != count:
            raise ValueError(
                f"x and {key} have different lengths: x has {count} samples, {key} has "
                f"{int(value.shape[0])}. Give one row of {ROW_NAMES.get(key, key)} per sample."
            )
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    num_batches = math.ceil(count / batch_size)
    if steps is not None:
        num_batches = min(num_batches, steps)

    def batches():
        if count <= batch_size:  # one batch: the arrays as given (slicing a tensor is an op)
            yield dict(arrays)
            return
        for start in range(0, num_batches * batch_size, batch_size):
            end = start + batch_size
            yield {key: None if value is None else value[start:end]
                   for key, value in arrays.items()}

    return batches(), num_batches


def _from_dataset(dataset: tf.data.Dataset, steps):
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY and steps is None:
        raise ValueError("x is an infinite tf.data.Dataset: pass steps, the number of batches.")
    if steps is not None:
        dataset = dataset.take(steps)
        cardinality = int(dataset.cardinality())
    num_batches = cardinality if cardinality >= 0 else None
    return iter(dataset), num_batches


def _from_py_dataset(dataset, steps, max_queue_size, workers, use_multiprocessing):
    reading = {"max_queue_size": max_queue_size, "workers": workers,
               "use_multiprocessing": use_multiprocessing}
    if reading == _READ_DEFAULTS:
        reading = {key: getattr(dataset, key, value) for key, value in reading.items()}
    num_batches = dataset.num_batches
    if num_batches is None and steps is None:
        raise ValueError("x is a PyDataset without num_batches: pass steps, the number of batches.")
    if steps is not None:
        num_batches = steps if num_batches is None else min(num_batches, steps)

    if reading["use_multiprocessing"]:
        executor = concurrent.futures.ProcessPoolExecutor(
            max(1, reading["workers"]),
            mp_context=multiprocessing.get_context("fork"),
            initializer=_set_worker_dataset,
            initargs=(dataset,),
        )
        fetch = _worker_item
    else:
        executor = concurrent.futures.ThreadPoolExecutor(max(1, reading["workers"]))
        fetch = dataset.__getitem__

    def batches():
        try:
            yield from _prefetch(fetch, num_batches, executor, reading["max_queue_size"])
        finally:
            dataset.on_epoch_end()

    return batches(), num_batches


_worker_dataset = None


def _set_worker_dataset(dataset) -> None:
    global _worker_dataset
    _worker_dataset = dataset


def _worker_item(index: int):
    return _worker_dataset[index]


def _prefetch(
    fetch: Callable[[int], Any],
    count: Optional[int],
    executor,
    max_queue_size: int,
) -> Iterator[Any]:
    """fetch(0), fetch(1), ... in order, computed ahead by `executor` (or a new pool of that
    many threads), stopping after `count` items or when fetch returns `_END`."""
    if isinstance(executor, int):
        executor = concurrent.futures.ThreadPoolExecutor(executor)
    pending = []
    index = 0
    with executor:
        try:
            while True:
                while len(pending) < max(1, max_queue_size) and (count is None or index < count):
                    pending.append(executor.submit(fetch, index))
                    index += 1
                if not pending:
                    return
                item = pending.pop(0).result()
                if item is _END:
                    return
                yield item
        finally:
            for future in pending:
                future.cancel()
