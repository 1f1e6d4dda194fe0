"""Batches in flight on a worker: one batch's host work overlapping another's explaining.

A worker's CPU work on a batch (parsing, decoding, encoding) and its explaining (on the
accelerator, or TensorFlow's threads) can run at once on different batches. `in_flight`
takes items a batch at a time: the calling thread prepares each batch (decodes it), and a
thread of the process's pool finishes it (explains and encodes it), with at most `depth`
batches prepared and not yet finished. While a batch is finished, the next one is taken
and prepared. `model_lock` is what a batch holds while the model explains it: one batch at
a time on the model's devices, whose memory then holds one batch's work, so that
`--batch_size` stays the knob that sizes it, while the other batches in flight are decoded
and encoded. The bundles a runner runs at once on its threads (Dataflow's harness threads,
DirectRunner's multi_threading mode) bring their own batches and share the lock.

The pools and locks are the process's, made on first use (never pickled with a handler).

Usage:

    results = in_flight(records, 32, 2, prepare=decode, finish=explain_and_encode)
    with model_lock(worker):
        ...
"""

import collections
import concurrent.futures
import itertools
import threading
import time
import weakref
from typing import Any, Callable, Deque, Dict, Iterable, List, Sequence

STEP_THREADS = 64
"""The most threads finishing batches in flight in a process (made as needed; every bundle
the runner runs at once brings its own batches)."""

_pools: Dict[str, concurrent.futures.ThreadPoolExecutor] = {}
_locks: "weakref.WeakKeyDictionary[Any, threading.Lock]" = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()  # guards both


def model_lock(model: Any) -> threading.Lock:
    """The lock a batch holds while `model` explains it (one per model, kept as long as the
    model is)."""
    with _registry_lock:
        return _locks.setdefault(model, threading.Lock())


def pool(name: str, threads: int) -> concurrent.futures.ThreadPoolExecutor:
    """The process's pool of `threads` threads called `name`, made on first use:
    "encode_explanations" for large maps, "explain_batches" for batches in flight."""
    with _registry_lock:
        if name not in _pools:
            _pools[name] = concurrent.futures.ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix=name)
        return _pools[name]


def in_flight(items: Iterable[Any], batch_size: int, depth: int,
              prepare: Callable[[Sequence[Any]], tuple],
              finish: Callable[..., List[Any]]) -> List[Any]:
    """`finish(batch, *prepare(batch))` for each batch of `batch_size` items, in order, all
    results concatenated. `prepare` runs on the calling thread, `finish` on the pool's
    threads, at most `depth` batches prepared and not yet finished: the calling thread
    waits for the oldest before it prepares another. Items are taken as batches are
    prepared, so an iterator's own work (parsing records) overlaps the finishing of the
    batch before."""
    threads = pool("explain_batches", STEP_THREADS)
    items = iter(items)
    pending: Deque[concurrent.futures.Future] = collections.deque()
    results: List[Any] = []
    while True:
        batch = list(itertools.islice(items, batch_size))
        if not batch:
            break
        if len(pending) == depth:
            results += pending.popleft().result()
        pending.append(threads.submit(finish, batch, *prepare(batch)))
        time.sleep(0)  # yields the GIL, so the thread taking the batch starts at once
    for future in pending:
        results += future.result()
    return results


__all__ = ["STEP_THREADS", "in_flight", "model_lock", "pool"]
