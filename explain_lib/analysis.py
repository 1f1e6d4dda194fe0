"""Analysis of stored explanations: records as numpy, a table of per-map scalars, and the
join back to the input records.

Separation of concerns:

- `explain_lib.io` owns the record schema and the codec; this module reads through it and
  knows nothing of how maps are encoded.
- `map_statistics` turns maps into scalars: pure numpy over any batch of maps `(..., H, W,
  K)`, usable on in-process `explain` outputs as well as on stored ones.
- `iterate_explanations` yields stored records as dicts of numpy arrays;
  `explanations_frame` tabulates them, one row per explained unit.
- `read_inputs` / `join_inputs` read the input records' own features (labels, metadata)
  into a table keyed by the same id the pipeline gave each record (`explain_lib.io.input_id`),
  so that explanations join back to their inputs.

Usage:

    from explain_lib import analysis

    frame = analysis.explanations_frame("out/expl-*.tfrecord.gz")
    frame = analysis.join_inputs(frame, "data/*.tfrecord", features=["label"])
    frame.groupby("label").top10_mass.mean()          # how focused the maps are, per class
    wrong = frame[frame.unit != frame.label]          # explanations of misclassified inputs
"""

import math
from typing import Dict, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import pandas as pd
import tensorflow as tf

from explain_lib import io as explain_io

Pattern = Union[str, Sequence[str]]


def iterate_explanations(file_pattern: Pattern, size: explain_io.Size = "stored"
                         ) -> Iterator[Dict[str, object]]:
    """The explanation records in the files matching `file_pattern` as dicts of numpy values:
    `id` (str), `units` int64 (K,), `logits` float32 (K,), `probabilities` float32 (K,) (NaN
    in schema-v1 records), `maps` float32 (H, W, K) at `size` ("stored", "input" or (H, W),
    see `explain_lib.io.read_explanations`), and `metrics`, a dict of each metric's float32
    (K,) scores (the metrics of the first record: a run computes the same for every record).
    Records are decoded in parallel by `tf.data`, in file order.

    Usage:

        for row in iterate_explanations("out/expl-*", size="input"):
            row["id"], row["units"], row["maps"].shape, row["metrics"].get("deletion")
    """
    metrics = metric_names(file_pattern)
    for row in explain_io.read_explanations(file_pattern, size=size,
                                            metrics=metrics).as_numpy_iterator():
        row["id"] = row["id"].decode("utf-8", errors="replace")
        row.setdefault("metrics", {})
        yield row


def metric_names(file_pattern: Pattern) -> list:
    """The metrics the explanation records matching `file_pattern` hold (`metrics/NAME`
    features), read from the first record; [] when there is none."""
    for record in explain_io.iterate_records(file_pattern):
        features = tf.train.Example.FromString(record).features.feature
        return sorted(name[len(explain_io.METRIC_PREFIX):] for name in features
                      if name.startswith(explain_io.METRIC_PREFIX))
    return []


def map_statistics(maps: np.ndarray, top_fraction: float = 0.1) -> Dict[str, np.ndarray]:
    """Scalars describing each map of `maps` `(..., H, W, K)`; each value has shape `(..., K)`.

    Positions are fractions of the map's height and width, measured at pixel centres
    ((row + 0.5) / H), so that maps stored at different resolutions (a 7x7 Grad-CAM map, a
    224x224 gradient map) compare directly; multiply by the image's size for pixels.

    - `peak_y`, `peak_x`: where the map is largest (the first such pixel, row-major);
    - `peak_value`, `mean`: the map's maximum and mean;
    - `centre_y`, `centre_x`: the centre of mass of the map's positive part (the evidence
      for the unit); NaN for a map with no positive value;
    - `top{P}_mass` (`top10_mass` by default): the fraction of that positive mass held by the
      `top_fraction` of pixels with the most of it: 0.1 for mass spread evenly, near 1 for a
      map concentrated on a small region; NaN for a map with no positive value;
    - `entropy`: the Shannon entropy of that positive mass as a distribution over the pixels,
      divided by its largest possible value, log(H·W), so that it lies in [0, 1] at any
      resolution: 1 for mass spread evenly, 0 for all of it on one pixel (0 for a one-pixel
      map); NaN for a map with no positive value. Where `top10_mass` looks at the peak
      region only, entropy sees how the whole map spreads.

    Usage:

        stats = map_statistics(maps)               # maps (N, 224, 224, K)
        stats["top10_mass"].shape                  # (N, K)
    """
    maps = np.asarray(maps, np.float32)
    if maps.ndim < 3:
        raise ValueError(f"maps must be (..., H, W, K), got shape {maps.shape}.")
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], not {top_fraction}.")
    height, width = maps.shape[-3:-1]
    # (..., K, H * W): one row of pixels per map.
    flat = np.moveaxis(maps, -1, -3).reshape(*maps.shape[:-3], maps.shape[-1], height * width)
    peak = np.argmax(flat, axis=-1)
    mass = np.maximum(flat, 0.0).astype(np.float64)
    total = mass.sum(axis=-1)
    rows = (np.arange(height * width) // width + 0.5) / height
    cols = (np.arange(height * width) % width + 0.5) / width
    with np.errstate(invalid="ignore", divide="ignore"):
        centre_y = np.where(total > 0, (mass * rows).sum(axis=-1) / total, np.nan)
        centre_x = np.where(total > 0, (mass * cols).sum(axis=-1) / total, np.nan)
        count = max(1, math.ceil(top_fraction * height * width))
        top = -np.partition(-mass, count - 1, axis=-1)[..., :count]
        top_mass = np.where(total > 0, top.sum(axis=-1) / total, np.nan)
        share = mass / total[..., None]
        surprise = np.where(share > 0, -share * np.log(np.where(share > 0, share, 1.0)), 0.0)
        spread = math.log(height * width) if height * width > 1 else 1.0
        entropy = np.where(total > 0, surprise.sum(axis=-1) / spread, np.nan)
    return {
        "peak_y": ((peak // width + 0.5) / height).astype(np.float32),
        "peak_x": ((peak % width + 0.5) / width).astype(np.float32),
        "peak_value": flat.max(axis=-1),
        "mean": flat.mean(axis=-1),
        "centre_y": centre_y.astype(np.float32),
        "centre_x": centre_x.astype(np.float32),
        _top_name(top_fraction): top_mass.astype(np.float32),
        "entropy": entropy.astype(np.float32),
    }


def _top_name(top_fraction: float) -> str:
    return f"top{round(100 * top_fraction):g}_mass"


def explanations_frame(
    source: Union[Pattern, Iterable[Dict[str, object]]],
    size: explain_io.Size = "stored",
    top_fraction: float = 0.1,
) -> pd.DataFrame:
    """A table of the explanations: one row per explained unit of every record.

    Columns: `id`, `rank` (the unit's position in the record: 0 for its first unit, which is
    the top prediction when the job explained the top-K), `unit`, `logit`, `probability`
    (NaN for schema-v1 records), `height` and `width` of the maps the statistics were
    computed on, the `map_statistics` (`peak_y`, `peak_x`, `peak_value`, `mean`, `centre_y`,
    `centre_x`, `top10_mass`, `entropy`), and one column per metric the records hold
    (`deletion`, `pointing_game`, ...: `metrics/NAME` in schema v2).

    `source` is a file pattern of the pipeline's outputs, or rows as
    `iterate_explanations` yields them. Statistics are computed at `size`: maps stored at
    their native resolution are measured there unless `size` is "input" or (H, W).

    Usage:

        frame = explanations_frame("out/expl-*")
        frame.groupby("unit").size()              # how many records explain each unit
        frame.sort_values("top10_mass").head()    # the most diffuse explanations
    """
    rows = iterate_explanations(source, size) if _is_pattern(source) else source
    columns: Dict[str, list] = {}
    for group in _same_shape_groups(rows):
        # One vectorised pass over a group of records whose maps share a shape.
        maps = np.stack([np.asarray(row["maps"], np.float32) for row in group])
        stats = map_statistics(maps, top_fraction)  # each (N, K)
        count, (height, width, units) = len(group), maps.shape[1:]
        values = {
            "id": np.repeat([_text_id(row["id"]) for row in group], units),
            "rank": np.tile(np.arange(units), count),
            "unit": np.concatenate([np.asarray(row["units"], np.int64) for row in group]),
            "logit": np.concatenate([np.asarray(row["logits"], np.float32) for row in group]),
            "probability": np.concatenate([_per_unit(row.get("probabilities"), units)
                                           for row in group]),
            "height": np.full(count * units, height),
            "width": np.full(count * units, width),
            **{name: value.reshape(-1) for name, value in stats.items()},
            **{name: np.concatenate([_per_unit(row["metrics"].get(name), units)
                                     for row in group])
               for name in sorted(group[0].get("metrics") or {})},
        }
        for name, value in values.items():
            columns.setdefault(name, []).append(value)
    if not columns:
        names = ["id", "rank", "unit", "logit", "probability", "height", "width"]
        names += list(map_statistics(np.zeros((1, 1, 1)), top_fraction))
        return pd.DataFrame({name: [] for name in names})
    frame = pd.DataFrame({name: np.concatenate(parts) for name, parts in columns.items()})
    return frame.astype({"id": str, "rank": "int64", "unit": "int64", "height": "int64",
                         "width": "int64"})


def _per_unit(values, units: int) -> np.ndarray:
    """A record's (K,) float32 values, NaN when it has none (a schema-v1 record)."""
    if values is None or len(values) == 0:
        return np.full(units, np.nan, np.float32)
    return np.asarray(values, np.float32)


def _same_shape_groups(rows, limit: int = 256):
    """Consecutive rows in lists of at most `limit` whose maps have one shape."""
    group, shape = [], None
    for row in rows:
        row_shape = np.shape(row["maps"])
        if group and (row_shape != shape or len(group) == limit):
            yield group
            group = []
        group.append(row)
        shape = row_shape
    if group:
        yield group


def _text_id(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _is_pattern(source) -> bool:
    return isinstance(source, str) or (
        isinstance(source, (list, tuple)) and len(source) > 0
        and all(isinstance(s, str) for s in source)
    )


def read_inputs(
    file_pattern: Pattern,
    id_key: Optional[str] = "id",
    features: Optional[Sequence[str]] = None,
) -> pd.DataFrame:
    """The input records' features as a table with an `id` column, the id each record got in
    the pipeline (its `id_key` feature, else the hash of its bytes: `explain_lib.io.input_id`).

    By default the table holds the features that are labels or metadata: those that hold,
    in every record that has them, one int64 or float value, or one bytes value of at most
    256 bytes that is UTF-8 text (so not the images). Name `features` to choose them: a
    feature with one value becomes a scalar, with several a list, with none (or missing)
    NaN; UTF-8 bytes become str. Records that do not parse (the job dead-lettered them) are
    skipped.

    Usage:

        inputs = read_inputs("data/*.tfrecord", features=["label", "path"])
    """
    rows, not_labels = [], set()
    for serialized in explain_io.iterate_records(file_pattern):
        try:
            example = tf.train.Example.FromString(serialized)
            row = {"id": explain_io.input_id(example, serialized, id_key)}
        except Exception:  # noqa: BLE001 - not a record the pipeline could have explained
            continue
        if features is not None:
            row.update({name: _feature_value(example, name) for name in features})
        else:
            for name in example.features.feature:
                value = _feature_value(example, name, max_bytes=256)
                if _is_label(value):
                    row[name] = value
                else:
                    not_labels.add(name)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "id" not in frame:
        frame["id"] = pd.Series(dtype=str)
    return frame.drop(columns=sorted(not_labels & set(frame.columns)))


def _feature_value(example: tf.train.Example, name: str, max_bytes: Optional[int] = None):
    """A feature's value for the table: a scalar, a list, or NaN when absent or empty.
    Bytes are decoded as UTF-8 where they are text; with `max_bytes`, longer bytes are not
    even tried, and come back as `bytes`."""
    if name not in example.features.feature:
        return np.nan
    feature = example.features.feature[name]
    kind = feature.WhichOneof("kind")
    values = list(getattr(feature, kind).value) if kind else []
    if kind == "bytes_list":
        values = [_utf8(value) if max_bytes is None or len(value) <= max_bytes else value
                  for value in values]
    if not values:
        return np.nan
    return values[0] if len(values) == 1 else values


def _utf8(value: bytes):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def _is_label(value) -> bool:
    """One number or one short text (NaN, an empty feature, counts)."""
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def join_inputs(
    frame: pd.DataFrame,
    file_pattern: Pattern,
    id_key: Optional[str] = "id",
    features: Optional[Sequence[str]] = None,
    how: str = "left",
) -> pd.DataFrame:
    """`frame` (any table with an `id` column, such as `explanations_frame`) joined with the
    input records' features (`read_inputs`) by id. Input columns whose names clash with the
    frame's get the suffix `_input`.

    Usage:

        frame = join_inputs(explanations_frame("out/expl-*"), "data/*", features=["label"])
        accuracy = (frame[frame["rank"] == 0].unit == frame.label).mean()
    """
    inputs = read_inputs(file_pattern, id_key, features)
    return frame.merge(inputs, on="id", how=how, suffixes=("", "_input"))


__all__ = [
    "iterate_explanations",
    "metric_names",
    "map_statistics",
    "explanations_frame",
    "read_inputs",
    "join_inputs",
]
