"""Data adaptation for `explain`: whatever the user passes becomes an ordered stream of
`(x, y)` batches, `y` being the units to explain or None.

- Arrays and tensors are sliced into `batch_size` batches (default 32).
- A `tf.data.Dataset` yields batches of `x` or `(x, y)` (or `(x, y, sample_weight)`, the
  weights ignored); it is already batched.
- A Python generator or iterator yields the same; it is read ahead by one background thread,
  at most `max_queue_size` batches in advance.
- A `keras.utils.PyDataset` is read ahead by `workers` threads (or processes with
  `use_multiprocessing`), at most `max_queue_size` batches in advance, always returned in
  index order. When `explain`'s reading arguments are left at their defaults, the
  dataset's own `workers`, `use_multiprocessing` and `max_queue_size` apply.

`steps` bounds the number of batches read from any source.
"""

import concurrent.futures
import inspect
import math
import multiprocessing
from typing import Any, Callable, Iterator, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

DEFAULT_BATCH_SIZE = 32
_READ_DEFAULTS = {"max_queue_size": 10, "workers": 1, "use_multiprocessing": False}
_END = object()


def unpack(element) -> Tuple[Any, Any]:
    """`(x, y)` from a batch given as `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`."""
    if isinstance(element, (tuple, list)) and 1 <= len(element) <= 3:
        return element[0], element[1] if len(element) > 1 else None
    return element, None


def adapt(
    x,
    y=None,
    batch_size: Optional[int] = None,
    steps: Optional[int] = None,
    max_queue_size: int = 10,
    workers: int = 1,
    use_multiprocessing: bool = False,
) -> Tuple[Iterator[Tuple[Any, Any]], Optional[int]]:
    """The batches of `(x, y)` and their number (None when unknown)."""
    streaming = isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)) or _is_iterator(x)
    if streaming and y is not None:
        raise ValueError(
            f"y must be None when x is a {type(x).__name__}: make it yield (x, y) batches instead."
        )
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be a positive number of batches, got {steps}.")

    if isinstance(x, tf.data.Dataset):
        return _from_dataset(x, steps)
    if isinstance(x, keras.utils.PyDataset):
        return _from_py_dataset(x, steps, max_queue_size, workers, use_multiprocessing)
    if _is_iterator(x):
        if workers != 1 or use_multiprocessing:
            raise ValueError(
                "A generator can only be read by one worker: wrap the data in a "
                "keras.utils.PyDataset (indexable batches) to read it with workers > 1 or "
                "use_multiprocessing=True."
            )
        return _prefetch(lambda _: next(x, _END), steps, 1, max_queue_size), steps
    return _from_arrays(x, y, batch_size, steps)


def _is_iterator(x) -> bool:
    return inspect.isgenerator(x) or (hasattr(x, "__next__") and hasattr(x, "__iter__"))


def _from_arrays(x, y, batch_size, steps):
    if not isinstance(x, (np.ndarray, tf.Tensor)):
        x = np.asarray(x)
    if y is not None and not isinstance(y, (np.ndarray, tf.Tensor)):
        y = np.asarray(y)
    count = int(x.shape[0]) if len(x.shape) else 0
    if count == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)}): there is nothing to explain.")
    if y is not None and int(y.shape[0]) != count:
        raise ValueError(
            f"x and y have different lengths: x has {count} samples, y has {int(y.shape[0])}. "
            "Give one row of unit indices per sample."
        )
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    num_batches = math.ceil(count / batch_size)
    if steps is not None:
        num_batches = min(num_batches, steps)

    def batches():
        for start in range(0, num_batches * batch_size, batch_size):
            end = start + batch_size
            yield x[start:end], None if y is None else y[start:end]

    return batches(), num_batches


def _from_dataset(dataset: tf.data.Dataset, steps):
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY and steps is None:
        raise ValueError("x is an infinite tf.data.Dataset: pass steps, the number of batches.")
    if steps is not None:
        dataset = dataset.take(steps)
        cardinality = int(dataset.cardinality())
    num_batches = cardinality if cardinality >= 0 else None
    return (unpack(element) for element in dataset), num_batches


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
            for batch in _prefetch(fetch, num_batches, executor, reading["max_queue_size"]):
                yield unpack(batch)
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
