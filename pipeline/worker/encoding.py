"""Stage "encode", and what the analysis makes of a batch: explained records as schema-v2
records, with their analysis rows and the batch's overview.

- `encode_batch`: the batch's explanations as serialized schema-v2 records at once
  (`explain_lib.io.encode_explanations`: ranges and quantisation in one numpy pass, only
  each record's own bytes made per record), large maps in chunks on a pool of threads
  (PNG's zlib releases the GIL). A chunk that fails is encoded again one record at a time,
  so that only the records that cannot be stored fail (stage "encode").
- `with_rows`: each encoded record with its `pipeline.results.table.AnalysisRow` (map
  statistics computed for the whole batch at once), for the table and the metric
  aggregates.
- `with_strategies`: with `--strategies`, the batch's rows with their maps reduced for SpRAy
  and their images' thumbnails (`pipeline.results.strategies.StrategiesBatch`), carried by
  its last record with a row.
- `with_overview`: the batch's `pipeline.results.overview.Overview` (what the report shows:
  per-unit counts and map sums, score samples, the best and worst records with their
  images), made from the batch's arrays at once and carried by its last encoded record;
  `with_one_overview` merges a call's batches' overviews into one.

A record that failed an earlier stage passes through as its `StageError`.

Usage:

    encoded = encode_batch(records, outcomes, "png8", (224, 224))
    encoded = with_rows(records, outcomes, encoded, ["deletion"])
"""

import os
from typing import (
    Any,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np
import tensorflow as tf

from explain_lib import io as explain_io
from explain_lib.strategies import reduce_maps
from pipeline.io.dead_letters import StageError
from pipeline.results.overview import Overview, batch_overview, summed_size
from pipeline.results.strategies import StrategiesBatch
from pipeline.results.table import AnalysisRow, analysis_rows
from pipeline.worker.concurrency import pool
from pipeline.worker.explaining import RecordMaps
from pipeline.worker.parsing import CheckedRecord

PARALLEL_ENCODING_VALUES = 16384
"""Maps of at least this many values per record are encoded in chunks on the thread pool;
smaller ones (a CAM stored at its own 7x7 resolution) cost less to encode than to hand to a
thread."""

ENCODING_THREADS = os.cpu_count() or 2
"""Threads encoding large maps: one per core."""


class Encoded(NamedTuple):
    """An encoded record, when its analysis row or the batch's overview goes with it: the
    serialized schema-v2 record, its `pipeline.results.table.AnalysisRow` (None without
    analysis) and, on one record of each batch, the batch's
    `pipeline.results.overview.Overview` (None on the others), and with `--strategies` the
    batch's `pipeline.results.strategies.StrategiesBatch` (on one record of each batch)."""

    record: bytes
    row: Optional[AnalysisRow]
    overview: Optional[Overview] = None
    strategies: Optional[StrategiesBatch] = None


def encode_batch(records: Sequence[CheckedRecord], outcomes: Sequence[Any],
                 map_encoding: str, input_size: Tuple[int, int]
                 ) -> List[Union[bytes, StageError]]:
    """Each `RecordMaps` of `outcomes` as a serialized schema-v2 record (maps stored with
    `map_encoding`, readers resizing them to `input_size`); other outcomes pass through."""
    encoded: List[Any] = list(outcomes)
    groups: Dict[Any, List[int]] = {}
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, RecordMaps):
            key = (outcome.maps.shape, outcome.probabilities is None,
                   tuple(outcome.metrics or ()))
            groups.setdefault(key, []).append(i)

    def encode(indices: Sequence[int]) -> List[Union[bytes, StageError]]:
        chosen = [outcomes[i] for i in indices]
        first = chosen[0]
        try:
            return explain_io.encode_explanations(
                [records[i].id for i in indices], np.stack([o.units for o in chosen]),
                np.stack([o.logits for o in chosen]), np.stack([o.maps for o in chosen]),
                map_encoding, input_size=input_size,
                probabilities=(None if first.probabilities is None
                               else np.stack([o.probabilities for o in chosen])),
                metrics={name: np.stack([o.metrics[name] for o in chosen])
                         for name in first.metrics or ()})
        except Exception as error:  # noqa: BLE001 - retried one by one below
            if len(indices) == 1:
                return [StageError("encode", str(error), records[indices[0]].id)]
            return [one for i in indices for one in encode([i])]

    for (shape, _, _), indices in groups.items():
        chunks = [indices]
        if int(np.prod(shape)) >= PARALLEL_ENCODING_VALUES and len(indices) > 1:
            chunks = [chunk.tolist() for chunk in np.array_split(
                indices, min(len(indices), ENCODING_THREADS))]
            results = list(pool("encode_explanations", ENCODING_THREADS).map(encode, chunks))
        else:
            results = [encode(indices)]
        for chunk, result in zip(chunks, results):
            for i, record in zip(chunk, result):
                encoded[i] = record
    return encoded


def with_rows(records: Sequence[CheckedRecord], outcomes: Sequence[Any],
              encoded: Sequence[Union[bytes, StageError]], metrics: Sequence[str]
              ) -> List[Any]:
    """Each encoded record with its `AnalysisRow` (an `Encoded`), the rows of the whole
    batch made at once (`pipeline.results.table.analysis_rows`, with `metrics`' scores)."""
    kept = [i for i, record in enumerate(encoded) if isinstance(record, bytes)]
    rows = analysis_rows([records[i].id for i in kept], [outcomes[i] for i in kept],
                         list(metrics), [records[i].features for i in kept])
    encoded = list(encoded)
    for i, row in zip(kept, rows):
        encoded[i] = Encoded(encoded[i], row)
    return encoded


def with_strategies(outcomes: Sequence[Any], encoded: Sequence[Any], images: np.ndarray,
                    size: int) -> List[Any]:
    """The encoded records, the last with an analysis row carrying the batch's
    `pipeline.results.strategies.StrategiesBatch`: the batch's rows, their maps reduced for
    SpRAy (`explain_lib.strategies.reduce_maps` to `size` x `size`, float16) and their
    images as thumbnails of at most `size` pixels a side, each made for the whole batch at
    once."""
    kept = [i for i, record in enumerate(encoded)
            if isinstance(record, Encoded) and record.row is not None]
    if not kept:
        return list(encoded)
    maps = [outcomes[i].maps for i in kept]  # (h, w, K) each
    if len({m.shape for m in maps}) == 1:
        flat = np.moveaxis(np.stack(maps), -1, 1)  # (B, K, h, w)
        flat = flat.reshape(-1, *flat.shape[2:])
    else:
        flat = np.concatenate([np.moveaxis(m, -1, 0) for m in maps])  # (sum K, h, w)
    reduced = reduce_maps(flat, size, np.float16)
    height, width = images.shape[1:3]
    step = max(1, int(np.ceil(max(height, width) / size)))
    # Decimated (a picture, not data), a copy: the sample copies out the few it keeps.
    thumbnails = np.asarray(images)[:, ::step, ::step][kept]
    batch = StrategiesBatch([encoded[i].row for i in kept], reduced, thumbnails)
    encoded = list(encoded)
    encoded[kept[-1]] = encoded[kept[-1]]._replace(strategies=batch)
    return encoded


def with_overview(records: Sequence[CheckedRecord], outcomes: Sequence[Any],
                  encoded: Sequence[Any], images: np.ndarray,
                  directions: Mapping[str, bool]) -> List[Any]:
    """The encoded records, the last one carrying the batch's `Overview` (one
    `batch_overview` per group of maps of one shape, with each metric's direction in
    `directions`; maps stored larger than `pipeline.results.overview.MEAN_MAP_SIZE` scaled
    down for the sums in one resize call)."""
    kept = [i for i, record in enumerate(encoded) if isinstance(record, (bytes, Encoded))]
    if not kept:
        return list(encoded)
    names = list(directions)
    overview: Optional[Overview] = None
    groups: Dict[Any, List[int]] = {}
    for i in kept:
        groups.setdefault((outcomes[i].maps.shape, outcomes[i].probabilities is None),
                          []).append(i)
    for (shape, no_probabilities), indices in groups.items():
        chosen = [outcomes[i] for i in indices]
        maps = np.stack([o.maps for o in chosen])
        size = summed_size(shape[:2])
        small = maps if size == tuple(shape[:2]) else tf.image.resize(maps, size).numpy()
        part = batch_overview(
            [records[i].id for i in indices], np.stack([o.units for o in chosen]),
            np.stack([o.logits for o in chosen]),
            None if no_probabilities else np.stack([o.probabilities for o in chosen]),
            {name: np.stack([o.metrics[name] for o in chosen]) for name in names},
            maps, small, images, directions, image_rows=indices)
        overview = part if overview is None else overview.merge(part)
    encoded = list(encoded)
    last = encoded[kept[-1]]
    encoded[kept[-1]] = (last._replace(overview=overview) if isinstance(last, Encoded)
                         else Encoded(last, None, overview))
    return encoded


def with_one_overview(encoded: Sequence[Any]) -> List[Any]:
    """The encoded records of several batches (`with_overview`'s), their overviews merged
    into one, carried by the last record that carried one. A batch's overview holds views
    of its decoded images, which keep the whole batch alive; the merged one holds copies of
    the examples it keeps, as uint8 pixels, so that a handler's call (16 batches of 32 by
    default) hands Beam one overview of a few examples, not 16 batches of images (which
    Beam would also pickle to size the first elements it passes on)."""
    encoded = list(encoded)
    carriers = [i for i, record in enumerate(encoded)
                if isinstance(record, Encoded) and record.overview is not None]
    if not carriers:
        return encoded
    first = encoded[carriers[0]].overview
    merged = Overview(first.names, first.higher_is_better)
    for i in carriers:
        merged.merge(encoded[i].overview)
        encoded[i] = encoded[i]._replace(overview=None)
    encoded[carriers[-1]] = encoded[carriers[-1]]._replace(overview=merged)
    return encoded


__all__ = ["ENCODING_THREADS", "Encoded", "PARALLEL_ENCODING_VALUES", "encode_batch",
           "with_one_overview", "with_overview", "with_rows", "with_strategies"]
