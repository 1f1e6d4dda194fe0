"""Bounded-memory building blocks for methods that multiply the work.

SmoothGrad's noisy copies, Integrated Gradients' steps, Score-CAM's channels, occlusion's
windows and RISE's masks all evaluate the model on many variants of each input. Stacking
every variant into one batch is what makes such methods run out of memory; here the
variants are processed a chunk at a time and the results reduced as they come:

- `chunked_reduce` runs a step over the chunks of `range(total)` in a `tf.while_loop` with
  `parallel_iterations=1`: the graph holds one copy of the step (two with a smaller last
  chunk), and a chunk starts only when the previous one is done, so one chunk's tensors
  are alive at a time.
- `merge_copies` / `split_copies` move between `(copies, B, ...)` and the `(copies * B, ...)`
  batch a model takes; `tile_indices` repeats the explained units to match.

Variants are laid out copy-major (all B samples of copy 0, then of copy 1, ...), so a
sample's variants never depend on where the sample sits in the batch: the maps are the same
whichever batch (or replica) an input lands in.

Usage:

    def step(start, count):                     # chunk [start, start + count), count static
        ...                                     # evaluate `count` variants of each input
        return partial_sum                      # any structure of tensors
    total = chunked_reduce(steps, chunk_size, step, initial=zeros)
"""

from typing import Any, Callable, Optional

import tensorflow as tf

from explain_lib.utils import ExplainError


def chunked_reduce(
    total: int,
    chunk_size: int,
    step: Callable[[tf.Tensor, int], Any],
    combine: Optional[Callable[[Any, Any], Any]] = None,
    initial: Any = None,
) -> Any:
    """Reduce `step(start, count)` over the chunks `[start, start + count)` of `range(total)`.

    The full chunks run in a `tf.while_loop`, one at a time; a last, smaller chunk (when
    `chunk_size` does not divide `total`) runs after it. Every chunk has a static size
    (`count` is a Python int), which XLA needs.

    Args:
        total: how many variants there are (static).
        chunk_size: variants per chunk (static).
        step: maps a chunk (`start` an int32 scalar tensor, `count` an int) to a structure
            of tensors whose shapes do not depend on the chunk.
        combine: merges two such structures (default: element-wise sum).
        initial: the reduction's starting value. When None, the first chunk is computed
            before the loop and starts it (so `step`'s output shapes need not be known in
            advance, at the price of tracing `step` once more).

    Returns:
        The reduced structure.
    """
    total, chunk_size = int(total), int(chunk_size)
    if total < 1 or chunk_size < 1:
        raise ExplainError(
            f"Need at least one variant and a positive chunk size, got total={total} and "
            f"chunk_size={chunk_size}."
        )
    if combine is None:
        combine = lambda a, b: tf.nest.map_structure(tf.add, a, b)  # noqa: E731
    full, rest = divmod(total, chunk_size)
    first = 0
    if initial is None:
        if not full:
            return step(tf.constant(0), rest)
        initial, first = step(tf.constant(0), chunk_size), 1
    reduced = initial
    if first < full:

        def body(chunk, reduced):
            return chunk + 1, combine(reduced, step(chunk * chunk_size, chunk_size))

        # The loop's counter waits for `initial`: a step depends on the counter, not on the
        # running reduction, and would otherwise start beside the chunk computing `initial`.
        with tf.control_dependencies(tf.nest.flatten(initial)):
            counter = tf.identity(first)
        _, reduced = tf.while_loop(
            lambda chunk, _: chunk < full,
            body,
            (counter, reduced),
            parallel_iterations=1,
        )
    if rest:
        # Only once the loop is done, so that two chunks are never alive together.
        with tf.control_dependencies(tf.nest.flatten(reduced)):
            reduced = combine(reduced, step(tf.constant(full * chunk_size), rest))
    return reduced


def merge_copies(tensor: tf.Tensor) -> tf.Tensor:
    """(copies, B, ...) -> (copies * B, ...), copy-major: a batch the model can take."""
    shape = tf.shape(tensor)
    return tf.reshape(tensor, tf.concat([[-1], shape[2:]], axis=0))


def split_copies(tensor: tf.Tensor, copies) -> tf.Tensor:
    """(copies * B, ...) -> (copies, B, ...): undoes `merge_copies`."""
    return tf.reshape(tensor, tf.concat([[copies, -1], tf.shape(tensor)[1:]], axis=0))


def tile_indices(indices: Optional[tf.Tensor], copies) -> Optional[tf.Tensor]:
    """The explained units (B, K) repeated for `copies` copy-major copies of the batch."""
    if indices is None:
        return None
    return tf.tile(indices, tf.stack([copies, 1]))


__all__ = ["chunked_reduce", "merge_copies", "split_copies", "tile_indices"]
