"""Analysis helpers: map statistics on maps with known answers, the table of stored
explanations, and the join back to the input records by the pipeline's ids."""

import math

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from explain_lib import analysis
from explain_lib import io as explain_io


def _write(path, records, compression=None):
    with tf.io.TFRecordWriter(str(path), compression) as writer:
        for record in records:
            writer.write(record)
    return str(path)


def _example(**features) -> bytes:
    def feature(value):
        values = value if isinstance(value, list) else [value]
        if isinstance(values[0], bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if isinstance(values[0], int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    return tf.train.Example(features=tf.train.Features(
        feature={name: feature(value) for name, value in features.items()}
    )).SerializeToString()


def test_statistics_of_maps_with_known_answers():
    point = np.zeros((8, 10, 1), np.float32)
    point[2, 5] = 3.0
    uniform = np.ones((8, 10, 1), np.float32)
    negative = -np.ones((8, 10, 1), np.float32)
    halves = np.zeros((8, 10, 1), np.float32)
    halves[:, :5] = 1.0  # mass on the left half
    maps = np.concatenate([point, uniform, negative, halves], axis=-1)  # (8, 10, 4)
    stats = analysis.map_statistics(maps)
    assert set(stats) == {"peak_y", "peak_x", "peak_value", "mean", "centre_y", "centre_x",
                          "top10_mass", "entropy"}
    assert all(value.shape == (4,) for value in stats.values())
    # The point: peak and centre at its pixel centre; all the mass in the top 10%.
    assert (stats["peak_y"][0], stats["peak_x"][0]) == (2.5 / 8, 5.5 / 10)
    np.testing.assert_allclose([stats["centre_y"][0], stats["centre_x"][0]], [2.5 / 8, 0.55])
    assert stats["top10_mass"][0] == 1.0 and stats["peak_value"][0] == 3.0
    # Uniform: centre in the middle, the top 10% of pixels hold 10% of the mass.
    np.testing.assert_allclose([stats["centre_y"][1], stats["centre_x"][1]], [0.5, 0.5])
    np.testing.assert_allclose(stats["top10_mass"][1], 0.1)
    # No positive evidence: no centre, no concentration.
    assert math.isnan(stats["centre_y"][2]) and math.isnan(stats["top10_mass"][2])
    assert stats["mean"][2] == -1.0
    # Left half: centre at a quarter of the width; 8 of 40 mass pixels in the top 8 pixels.
    np.testing.assert_allclose([stats["centre_y"][3], stats["centre_x"][3]], [0.5, 0.25])
    np.testing.assert_allclose(stats["top10_mass"][3], 8 / 40)
    # Entropy over log(H·W): 0 for the point, 1 for uniform, half the pixels evenly:
    # log(40) / log(80); none without positive mass.
    np.testing.assert_allclose(stats["entropy"][[0, 1, 3]], [0.0, 1.0, math.log(40) / math.log(80)],
                               atol=1e-6)
    assert math.isnan(stats["entropy"][2])
    # Against an independent computation, on a random map.
    random = np.random.default_rng(3).uniform(-0.5, 1, (6, 5, 1)).astype(np.float32)
    p = np.maximum(random.ravel(), 0) / np.maximum(random.ravel(), 0).sum()
    expected = -sum(v * math.log(v) for v in p if v > 0) / math.log(30)
    np.testing.assert_allclose(analysis.map_statistics(random)["entropy"][0], expected, rtol=1e-5)
    assert analysis.map_statistics(np.ones((1, 1, 1)))["entropy"][0] == 0.0
    # Other fractions, and batches of maps.
    assert "top25_mass" in analysis.map_statistics(maps, top_fraction=0.25)
    batched = analysis.map_statistics(np.stack([maps, maps[..., ::-1]]))
    assert batched["peak_y"].shape == (2, 4)
    np.testing.assert_array_equal(batched["centre_x"][1], stats["centre_x"][::-1])


def test_positions_are_fractions_so_resolutions_compare():
    y, x = np.mgrid[0:7, 0:7]
    blob = np.exp(-((y - 2) ** 2 + (x - 4) ** 2) / 2.0).astype(np.float32)[..., None]
    large = tf.image.resize(blob, (224, 224)).numpy()
    small_stats, large_stats = analysis.map_statistics(blob), analysis.map_statistics(large)
    for name in ("centre_y", "centre_x", "peak_y", "peak_x"):
        assert abs(small_stats[name][0] - large_stats[name][0]) < 1 / 14, name
    np.testing.assert_allclose(small_stats["peak_y"], 2.5 / 7)


def test_statistics_reject_bad_arguments():
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, K\)"):
        analysis.map_statistics(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="top_fraction"):
        analysis.map_statistics(np.zeros((4, 4, 1)), top_fraction=0)


@pytest.fixture
def stored(tmp_path):
    """Three explanations of two units each, maps stored at 7x7 for 28x28 inputs."""
    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 1, (3, 7, 7, 2)).astype(np.float32)
    maps[0, 1, 3, 0] = 5.0  # a clear peak for record a's first unit
    ids = ["a", "b", "c"]
    records = [explain_io.encode_explanation(record_id, [i, 3], [float(i), -1.0], maps[i],
                                             input_size=(28, 28))
               for i, record_id in enumerate(ids)]
    return _write(tmp_path / "expl-00000-of-00001.tfrecord.gz", records, "GZIP"), maps


def test_iterate_explanations_yields_numpy_rows(stored):
    pattern, maps = stored
    rows = list(analysis.iterate_explanations(pattern))
    assert [row["id"] for row in rows] == ["a", "b", "c"]
    assert isinstance(rows[0]["maps"], np.ndarray) and rows[0]["maps"].shape == (7, 7, 2)
    assert np.abs(rows[2]["maps"] - maps[2]).max() <= np.ptp(maps[2]) / 255
    assert next(analysis.iterate_explanations(pattern, size="input"))["maps"].shape == (28, 28, 2)


def test_explanations_frame_has_a_row_per_explained_unit(stored):
    pattern, maps = stored
    frame = analysis.explanations_frame(pattern)
    assert len(frame) == 6
    assert list(frame.columns[:7]) == ["id", "rank", "unit", "logit", "probability", "height",
                                       "width"]
    assert frame.probability.isna().all()  # written without probabilities
    assert frame.id.tolist() == ["a", "a", "b", "b", "c", "c"]
    assert frame["rank"].tolist() == [0, 1] * 3 and frame.unit.tolist() == [0, 3, 1, 3, 2, 3]
    assert frame.logit.tolist() == [0.0, -1.0, 1.0, -1.0, 2.0, -1.0]
    assert (frame.height == 7).all() and frame.unit.dtype == np.int64
    first = frame.iloc[0]
    assert (first.peak_y, first.peak_x) == (1.5 / 7, 3.5 / 7)
    expected = analysis.map_statistics(maps[1])
    np.testing.assert_allclose(frame.iloc[2:4].top10_mass, expected["top10_mass"], atol=0.01)
    # At the input's size, measured on the resized maps; same rows.
    at_input = analysis.explanations_frame(pattern, size="input")
    assert (at_input.height == 28).all() and at_input.id.tolist() == frame.id.tolist()
    # Rows from anywhere, for instance in-process results.
    rows = [{"id": "x", "units": np.array([4]), "logits": np.array([0.5]),
             "maps": np.ones((3, 3, 1))}]
    assert analysis.explanations_frame(rows).iloc[0].top10_mass == pytest.approx(1 / 9)
    assert analysis.explanations_frame([]).empty


def test_join_inputs_by_the_pipelines_ids(tmp_path, stored):
    pattern, _ = stored
    no_id = _example(image=b"\xff\xd8\xff" + bytes(range(256)) * 4, label=7, path=b"c.jpg")
    inputs = [
        _example(image=b"\x89PNG\r\n\x1a\n....", id=b"a", label=0, weight=0.5, path=b"a.jpg",
                 tags=[1, 2]),
        _example(image=b"\x89PNG\r\n\x1a\n....", id=b"b", label=1, weight=1.5, path=b"b.jpg",
                 tags=[3]),
        no_id,
        b"not a record",
    ]
    input_pattern = _write(tmp_path / "inputs.tfrecord", inputs)
    table = analysis.read_inputs(input_pattern)
    hashed = explain_io.record_id(no_id)
    assert table.id.tolist() == ["a", "b", hashed]
    # Scalars and short text by default; not the image, not multi-valued features.
    assert set(table.columns) == {"id", "label", "weight", "path"}
    assert table.label.tolist() == [0, 1, 7] and table.path.tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    chosen = analysis.read_inputs(input_pattern, features=["tags", "weight"])
    assert chosen.tags.iloc[0] == [1, 2] and chosen.tags.iloc[1] == 3
    assert math.isnan(chosen.tags.iloc[2])  # chosen, but absent from that record
    assert chosen.weight.iloc[:2].tolist() == [0.5, 1.5] and math.isnan(chosen.weight.iloc[2])

    # The explanations of "a" and "b" find their inputs; "c" was explained from a record
    # that is not in this input set.
    frame = analysis.join_inputs(analysis.explanations_frame(pattern), input_pattern,
                                 features=["label", "path"])
    assert len(frame) == 6
    assert frame.label.iloc[:4].tolist() == [0, 0, 1, 1] and frame.label.iloc[4:].isna().all()
    correct = frame[(frame["rank"] == 0) & (frame.unit == frame.label)]
    assert correct.id.tolist() == ["a", "b"]
    # With a hashed id: an explanation stored under the hash joins to that record.
    record = explain_io.encode_explanation(hashed, [7], [1.0], np.ones((2, 2, 1)))
    other = _write(tmp_path / "hashed.tfrecord", [record])
    joined = analysis.join_inputs(analysis.explanations_frame(other), input_pattern)
    assert joined.path.tolist() == ["c.jpg"] and joined.label.tolist() == [7]
    assert isinstance(joined, pd.DataFrame)


def test_explanations_frame_reads_probabilities_and_metrics_of_schema_v2(tmp_path):
    maps = np.random.default_rng(4).uniform(0, 1, (2, 4, 4, 2)).astype(np.float32)
    records = [explain_io.encode_explanation(
        f"r{i}", [i, 2], [1.0, 0.5], maps[i], probabilities=[0.5 + i / 8, 0.25],
        metrics={"insertion": [0.75, i / 4], "deletion": [0.125, 0.5 + i / 4]})
        for i in range(2)]
    pattern = _write(tmp_path / "v2.tfrecord", records)
    assert analysis.metric_names(pattern) == ["deletion", "insertion"]
    frame = analysis.explanations_frame(pattern)
    assert frame.probability.tolist() == [0.5, 0.25, 0.625, 0.25]
    assert frame.deletion.tolist() == [0.125, 0.5, 0.125, 0.75]
    assert frame.insertion.tolist() == [0.75, 0.0, 0.75, 0.25]
    np.testing.assert_allclose(frame.entropy, analysis.map_statistics(maps)["entropy"].ravel(),
                               atol=0.01)  # of the decoded png8 maps
