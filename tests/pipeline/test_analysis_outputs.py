"""The job's analysis outputs: metrics per record (`--metrics`, `--metric_params`, ground
truth from `--boxes_key` or `--mask_key`), their aggregates in the manifest and
`python -m pipeline.summary`, and the Parquet table (`--table`, `--copy_features`) read with
DuckDB and pandas.

One small job (a handful of records, the tiny session model) serves most tests: its records
are checked against in-process `explain_lib.evaluate` on the same images and maps, its table
against those records and an independent numpy computation of the map statistics, its
aggregates against numpy over the records. Maps are stored as `raw32`, so that what a reader
decodes is exactly what the worker scored and measured.
"""

import glob
import json
import math
import os

import apache_beam as beam
import duckdb
import keras
import numpy as np
import pandas as pd
import pytest

import explain_lib
from explain_lib import analysis
from pipeline import demo, summary
from pipeline.io.dead_letters import StageError
from pipeline.job.launcher import main
from pipeline.results import manifest
from pipeline.results.aggregates import (
    QUANTILE_EPSILON,
    QUANTILE_LEVELS,
    AggregateMetrics,
    read_aggregates,
)
from pipeline.results.table import AnalysisRow
from pipeline.settings import Settings
from pipeline.worker.decoding import decode_masks
from pipeline.worker.explaining import Worker
from pipeline.worker.parsing import RecordSpec, check_record
from tests.pipeline.conftest import SIZE, UNITS, run_job, write

METRICS = ("deletion", "insertion", "pointing_game", "energy_pointing_game")
METRIC_PARAMS = {"deletion": {"n_steps": 8}, "insertion": {"n_steps": 8},
                 "pointing_game": {"tolerance": 0}}
TOP_K = 2
GOOD = 6  # records with boxes, label and filename


@pytest.fixture(scope="module")
def data():
    images, labels, masks = demo.make_shapes(GOOD + 1, seed=11, size=SIZE, return_masks=True)
    return images, labels, masks, demo.shape_boxes(masks)  # boxes (N, 1, 4)


def _record(image, label, id_, **features):
    return demo.make_example(demo.encode_image(image, "png"), int(label), id_, **features)


BAD_RECORDS = {
    # id: (the record's boxes feature and more, what the dead letter says)
    "short-box": ({demo.BOX_KEY: [0.1, 0.1, 0.5]}, "holds 3 values, not a multiple of 4"),
    "inverted-box": ({demo.BOX_KEY: [0.6, 0.1, 0.2, 0.5]},
                     f"box 0 of {demo.BOX_KEY!r} is inverted (ymin 0.6, xmin 0.1, ymax 0.2"),
    "outside-box": ({demo.BOX_KEY: [0.1, 0.1, 1.5, 0.5]}, "has ymax 1.5, outside [0, 1]"),
    "int-box": ({demo.BOX_KEY: [0, 0, 1, 1]}, "must be a float list"),
    # The metrics read a zero-area box as padding: kept, it would score NaN silently.
    "flat-box": ({demo.BOX_KEY: [0.1, 0.1, 0.5, 0.5, 0.2, 0.1, 0.2, 0.5]},
                 f"box 1 of {demo.BOX_KEY!r} has zero area (ymin 0.2, xmin 0.1, ymax 0.2"),
    # A copied text feature whose bytes are not UTF-8 is not replaced by U+FFFD.
    "latin-1-name": ({demo.BOX_KEY: [0.1, 0.1, 0.5, 0.5], "filename": b"caf\xe9.png"},
                     "copied feature 'filename' is not UTF-8 text (byte 3 is 0xe9)"),
}


@pytest.fixture(scope="module")
def job(tmp_path_factory, model_path, data):
    images, labels, _, boxes = data
    directory = tmp_path_factory.mktemp("analysis")
    records = [_record(images[i], labels[i], f"r{i}", **{demo.BOX_KEY: boxes[i].ravel().tolist(),
                                                         "filename": f"img-{i}.png"})
               for i in range(GOOD)]
    # A record without boxes (its localisation metrics are NaN) and without a filename.
    records.append(_record(images[GOOD], labels[GOOD], "nobox"))
    bad = [_record(images[0], labels[0], id_, **features)
           for id_, (features, _) in BAD_RECORDS.items()]
    pattern = write(directory, "in", records[:3] + bad + records[3:])
    table = os.path.join(str(directory), "out", "table")
    ran = run_job(directory, pattern, model_path, "--method", "gradcam", "--top_k", str(TOP_K),
                  "--map_encoding", "raw32", "--metrics", ",".join(METRICS),
                  "--metric_params", json.dumps(METRIC_PARAMS), "--boxes_key", demo.BOX_KEY,
                  "--table", table, "--copy_features", "label,filename", "--num_shards", "2")
    return ran, table


EXPLAINED = [f"r{i}" for i in range(GOOD)] + ["nobox"]
"""The ids of the explained records, in the order of `data`'s images."""


# --- the records -------------------------------------------------------------------------------


@pytest.mark.slow
def test_counts_add_up_and_malformed_ground_truth_is_a_validate_dead_letter(job):
    ran, _ = job
    assert (ran.summary.read, ran.summary.explained, ran.summary.dead_lettered) == (
        GOOD + 1 + len(BAD_RECORDS), GOOD + 1, len(BAD_RECORDS))
    assert ran.summary.balanced
    assert sorted(ran.explanations) == sorted(EXPLAINED)
    letters = {letter.id: letter for letter in ran.dead_letters}
    assert sorted(letters) == sorted(BAD_RECORDS)
    for id_, (_, message) in BAD_RECORDS.items():
        assert letters[id_].stage == "validate"
        assert message in letters[id_].error, letters[id_].error
        assert "\n" not in letters[id_].error and len(letters[id_].error) < 300
    counts = manifest.read_manifest(ran.output)["counts"]
    assert counts["read"] == counts["explained"] + counts["dead_lettered"]
    assert {stage: n for stage, n in counts["dead_letters"].items() if n} == {
        "validate": len(BAD_RECORDS)}


def test_records_hold_probabilities_and_metrics_equal_to_in_process_evaluate(job, model, data):
    ran, _ = job
    images, _, _, boxes = data
    x = images.astype(np.float32)  # PNG is lossless, and 32x32 needs no resizing
    decoded = [ran.explanations[id_] for id_ in EXPLAINED]
    units = np.stack([d["units"] for d in decoded])
    maps = np.stack([d["maps"] for d in decoded])  # raw32: exactly what the worker scored
    assert units.shape == (GOOD + 1, TOP_K) and maps.shape == (GOOD + 1, SIZE // 4, SIZE // 4,
                                                                TOP_K)
    for d in decoded:
        assert sorted(d["metrics"]) == sorted(METRICS)
        assert all(d["metrics"][name].shape == (TOP_K,) for name in METRICS)

    # Probabilities: the softmax of the model's logits at the input, for the units explained.
    logits = model.predict(x, verbose=0)
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    np.testing.assert_allclose([d["probabilities"] for d in decoded],
                               np.take_along_axis(expected, units, axis=1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([d["logits"] for d in decoded],
                               np.take_along_axis(logits, units, axis=1), rtol=1e-4, atol=1e-5)

    ground_truth = [b for b in boxes[:GOOD]] + [np.zeros((0, 4), np.float32)]
    for name in METRICS:
        metric = explain_lib.metrics.get(name)
        scores = explain_lib.evaluate(
            name, model if metric.needs_model else None, x, units, maps, verbose=0,
            **({"boxes": ground_truth} if metric.ground_truth else {}),
            **METRIC_PARAMS.get(name, {}))
        stored = np.stack([d["metrics"][name] for d in decoded])
        if metric.ground_truth:
            # The record without boxes is not scored; the others are.
            assert np.isnan(stored[-1]).all() and np.isfinite(stored[:-1]).all(), name
            # Hits are 0 or 1 exactly; energy shares lie in [0, 1].
            np.testing.assert_allclose(stored, scores, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            # Areas under probability curves, in [0, 1]: batching differently moves the
            # model's float arithmetic in the last bits only.
            assert np.isfinite(stored).all() and ((0 <= stored) & (stored <= 1)).all(), name
            np.testing.assert_allclose(stored, scores, atol=1e-5, err_msg=name)
    hits = np.stack([d["metrics"]["pointing_game"] for d in decoded])[:-1]
    assert set(np.unique(hits)) <= {0.0, 1.0}


# --- the table ---------------------------------------------------------------------------------


def _independent_statistics(maps2d):
    """The table's map statistics of one (H, W) map, computed directly from their
    definitions (`pipeline.results.table.STATISTICS`)."""
    height, width = maps2d.shape
    peak = np.unravel_index(np.argmax(maps2d), maps2d.shape)  # the first maximum, row-major
    mass = np.maximum(maps2d.astype(np.float64), 0)
    total = mass.sum()
    ys, xs = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width,
                         indexing="ij")
    if total == 0:
        return dict(peak_y=(peak[0] + 0.5) / height, peak_x=(peak[1] + 0.5) / width,
                    centre_y=np.nan, centre_x=np.nan, top10_mass=np.nan, entropy=np.nan)
    top = np.sort(mass.ravel())[::-1][:math.ceil(0.1 * height * width)]
    share = mass.ravel() / total
    share = share[share > 0]
    return dict(peak_y=(peak[0] + 0.5) / height, peak_x=(peak[1] + 0.5) / width,
                centre_y=(mass * ys).sum() / total, centre_x=(mass * xs).sum() / total,
                top10_mass=top.sum() / total,
                entropy=-(share * np.log(share)).sum() / math.log(height * width))


def _duckdb_table(table):
    return duckdb.sql(f"SELECT * FROM read_parquet('{table}-*.parquet') ORDER BY id, rank").df()


def test_table_files_and_column_types(job):
    ran, table = job
    files = sorted(glob.glob(table + "-*"))
    assert [os.path.basename(f) for f in files] == [
        "table-00000-of-00002.parquet", "table-00001-of-00002.parquet"]
    described = manifest.read_manifest(ran.output)
    assert described["output"]["table"] == table + "-*.parquet"
    assert [entry["path"] for entry in described["output"]["files"]["table"]] == files
    assert described["input"]["copy_features"] == ["label", "filename"]
    types = {row[0]: row[1] for row in duckdb.sql(
        f"DESCRIBE SELECT * FROM read_parquet('{table}-*.parquet')").fetchall()}
    assert types == {
        "id": "VARCHAR", "unit": "BIGINT", "rank": "INTEGER", "logit": "FLOAT",
        "probability": "FLOAT", "peak_y": "FLOAT", "peak_x": "FLOAT", "centre_y": "FLOAT",
        "centre_x": "FLOAT", "top10_mass": "FLOAT", "entropy": "FLOAT", "deletion": "FLOAT",
        "insertion": "FLOAT", "pointing_game": "FLOAT", "energy_pointing_game": "FLOAT",
        "label": "BIGINT", "filename": "VARCHAR"}


def test_table_rows_equal_the_records(job, data):
    ran, table = job
    _, labels, _, _ = data
    rows = _duckdb_table(table)
    # pandas reads the same files to the same values.
    frame = pd.concat([pd.read_parquet(f) for f in sorted(glob.glob(table + "-*"))])
    frame = frame.sort_values(["id", "rank"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, frame, check_dtype=False)

    assert len(rows) == len(ran.explanations) * TOP_K  # one row per explained unit
    assert rows.groupby("id").size().to_dict() == {id_: TOP_K for id_ in ran.explanations}
    labels_by_id = {**{f"r{i}": labels[i] for i in range(GOOD)}, "nobox": labels[GOOD]}
    for id_, decoded in ran.explanations.items():
        mine = rows[rows.id == id_].sort_values("rank")
        assert mine["rank"].tolist() == list(range(TOP_K))
        np.testing.assert_array_equal(mine.unit, decoded["units"])
        np.testing.assert_array_equal(mine.logit, decoded["logits"])  # float32 both
        np.testing.assert_array_equal(mine.probability, decoded["probabilities"])
        for name in METRICS:
            # NaN scores are nulls in the table (NaN in pandas again).
            np.testing.assert_array_equal(mine[name].to_numpy(np.float32),
                                          decoded["metrics"][name], err_msg=name)
        for k in range(TOP_K):
            expected = _independent_statistics(decoded["maps"][..., k])
            for name, value in expected.items():
                np.testing.assert_allclose(mine[name].iloc[k], value, rtol=2e-6, atol=1e-7,
                                           err_msg=f"{id_} rank {k} {name}")
        # Copied features, repeated on every row of the record; missing ones are null.
        assert (mine.label == labels_by_id[id_]).all()
        if id_ == "nobox":
            assert mine.filename.isna().all()
        else:
            assert mine.filename.tolist() == [f"img-{id_[1:]}.png"] * TOP_K
    # Nulls, not NaN, in SQL: COUNT and AVG skip the record without boxes (and its filename).
    counted = duckdb.sql(f"SELECT count(pointing_game), count(filename), count(*) FROM "
                         f"read_parquet('{table}-*.parquet')").fetchall()[0]
    assert counted == (GOOD * TOP_K, GOOD * TOP_K, (GOOD + 1) * TOP_K)


def test_table_equals_the_analysis_frame(job):
    """`explain_lib.analysis.explanations_frame` over the records gives the table's values."""
    ran, table = job
    rows = _duckdb_table(table)
    frame = analysis.explanations_frame(ran.output + "-*").sort_values(["id", "rank"])
    frame = frame.reset_index(drop=True)
    assert rows.id.tolist() == frame.id.tolist()
    shared = [column for column in rows.columns if column in frame.columns and column != "id"]
    assert len(shared) == 14  # every column but the id and the copied features
    np.testing.assert_allclose(rows[shared].to_numpy(np.float64),
                               frame[shared].to_numpy(np.float64), rtol=2e-6, atol=1e-7)


OUTPUTS_PAGE = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "outputs.md")


def test_the_docs_duckdb_queries_run_on_the_table(job, capsys):
    """The DuckDB example of docs/outputs.md, taken from the page and run on this job's
    table."""
    _, table = job
    text = open(OUTPUTS_PAGE, encoding="utf-8").read()
    block = text.split("With DuckDB", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "'out/expl.table-*.parquet'" in block
    namespace = {}
    exec(block.replace("out/expl.table", table), namespace)  # noqa: S102 - the page's code
    printed = capsys.readouterr().out
    assert "deletion" in printed and "hits" in printed
    rows = _duckdb_table(table)
    wanted = rows[(rows["rank"] == 0) & (rows.unit == rows.label)]
    worst = namespace["worst"]
    assert list(worst.columns) == ["id", "unit", "probability", "deletion", "filename"]
    assert worst.deletion.tolist() == sorted(wanted.deletion, reverse=True)[:10]
    # The per-unit means it prints, against pandas.
    per_unit = duckdb.sql(
        f"SELECT unit, count(*) AS n, avg(deletion) AS deletion, avg(pointing_game) AS hits "
        f"FROM read_parquet('{table}-*.parquet') GROUP BY unit ORDER BY unit").df()
    expected = rows.groupby("unit").agg(n=("id", "size"), deletion=("deletion", "mean"),
                                        hits=("pointing_game", "mean")).reset_index()
    np.testing.assert_allclose(per_unit[["unit", "n", "deletion", "hits"]].to_numpy(float),
                               expected[["unit", "n", "deletion", "hits"]].to_numpy(float),
                               rtol=1e-6)


# --- the aggregates ----------------------------------------------------------------------------


def test_manifest_aggregates_equal_numpy_over_the_records(job):
    ran, _ = job
    described = manifest.read_manifest(ran.output)["metrics"]
    assert described["names"] == list(METRICS)
    assert described["params"] == METRIC_PARAMS
    assert described["received"]["deletion"]["n_steps"] == 8
    assert described["received"]["pointing_game"]["tolerance"] == 0
    assert described["boxes_key"] == demo.BOX_KEY and described["mask_key"] is None
    aggregates = described["aggregates"]
    assert aggregates["quantile_levels"] == list(QUANTILE_LEVELS) == [0, 0.25, 0.5, 0.75, 1]
    assert not os.path.exists(ran.output + ".aggregates.json")  # moved into the manifest
    units = np.concatenate([d["units"] for d in ran.explanations.values()])
    for name in METRICS:
        scores = np.concatenate([d["metrics"][name] for d in ran.explanations.values()])
        groups = {"all": (aggregates[name]["all"], scores)}
        assert sorted(aggregates[name]["per_unit"], key=int) == [
            str(u) for u in np.unique(units)]
        for unit, summary_ in aggregates[name]["per_unit"].items():
            groups[unit] = (summary_, scores[units == int(unit)])
        for key, (summary_, values) in groups.items():
            finite = np.sort(values[np.isfinite(values)].astype(np.float64))
            assert summary_["count"] == len(finite), (name, key)
            assert summary_["missing"] == len(values) - len(finite), (name, key)
            if not len(finite):
                assert summary_["mean"] is None and summary_["quantiles"] == []
                continue
            np.testing.assert_allclose(summary_["mean"], finite.mean(), rtol=1e-6)
            quantiles = np.asarray(summary_["quantiles"])
            # Exact for a few scores (`test_quantiles_of_many_scores_within_their_rank_error`
            # takes many): the minimum, the maximum, and values of the data in between, at
            # ranks within one of the levels'.
            assert len(quantiles) == len(QUANTILE_LEVELS)
            assert quantiles[0] == pytest.approx(finite[0], rel=1e-6)
            assert quantiles[-1] == pytest.approx(finite[-1], rel=1e-6)
            assert np.all(np.diff(quantiles) >= 0)
            for level, value in zip(QUANTILE_LEVELS, quantiles):
                ranks = np.flatnonzero(np.isclose(finite, value, rtol=1e-6, atol=0))
                assert len(ranks), (name, key, value)
                assert np.abs(ranks - level * (len(finite) - 1)).min() <= 1, (name, key, level)
    missing = aggregates["pointing_game"]["all"]["missing"]
    assert missing == TOP_K  # the record without boxes


@pytest.mark.slow
def test_quantiles_of_many_scores_within_their_rank_error(tmp_path):
    """`AggregateMetrics` alone on 3,000 rows: means exact, quantiles within
    `QUANTILE_EPSILON` of their level's rank (Beam's default would allow 20%), NaN scores
    counted as missing."""
    rng = np.random.default_rng(3)
    count = 3000
    units = rng.integers(0, 2, count)
    scores = rng.gamma(2.0, 0.1, count).astype(np.float32)
    scores[::50] = np.nan
    rows = [AnalysisRow(f"r{i}", units[i:i + 1], None, None, None, scores[None, i:i + 1])
            for i in range(count)]
    prefix = str(tmp_path / "aggregates")
    with beam.Pipeline() as pipeline:
        pipeline | beam.Create(rows) | AggregateMetrics(["score"], prefix)
    document = read_aggregates(prefix)["score"]
    for key, chosen in [("all", np.ones(count, bool)), ("0", units == 0), ("1", units == 1)]:
        summary_ = document["all"] if key == "all" else document["per_unit"][key]
        values = scores[chosen]
        finite = np.sort(values[np.isfinite(values)].astype(np.float64))
        assert (summary_["count"], summary_["missing"]) == (len(finite), len(values) - len(finite))
        assert summary_["mean"] == pytest.approx(finite.mean(), rel=1e-9)
        for level, value in zip(QUANTILE_LEVELS, summary_["quantiles"]):
            rank = np.searchsorted(finite, np.float32(value))
            assert abs(rank - level * (len(finite) - 1)) <= QUANTILE_EPSILON * len(finite) + 1, (
                key, level)


def test_summary_prints_the_metric_aggregates(job, capsys):
    ran, _ = job
    assert summary.main([ran.output]) == 0
    text = capsys.readouterr().out
    aggregates = manifest.read_manifest(ran.output)["metrics"]["aggregates"]
    assert "table:" in text and "2 table shards" in text
    assert "metrics (boxes from objects/bbox):" in text
    for name in METRICS:
        line = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        assert f"{aggregates[name]['all']['mean']:.4f}" in line, line
        assert str(aggregates[name]["all"]["count"]) in line
    assert summary.main([ran.output, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["aggregates"] == aggregates


# --- masks -------------------------------------------------------------------------------------


def test_masks_are_validated_decoded_and_resized():
    spec = RecordSpec((SIZE, SIZE), 3, UNITS, mask_key="mask")
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    with pytest.raises(StageError, match="mask feature 'mask' must hold one PNG or JPEG") as error:
        check_record(demo.make_example(demo.encode_image(image, "png"), 1, "x",
                                       mask=b"not an image"), spec)
    assert error.value.stage == "validate" and error.value.record_id == "x"
    # A mask at half the image's size is resized to it; a broken PNG fails alone.
    half = np.zeros((SIZE // 2, SIZE // 2, 1), np.uint8)
    half[2:6, 4:12] = 255
    good = demo.encode_image(half, "png")
    broken = good[:40]
    records = [check_record(demo.make_example(demo.encode_image(image, "png"), 1, id_,
                                              **({"mask": m} if m else {})), spec)
               for id_, m in (("a", good), ("b", broken), ("c", None))]
    masks, errors = decode_masks(records, spec)
    expected = np.zeros((SIZE, SIZE), np.float32)
    expected[4:12, 8:24] = 1
    np.testing.assert_array_equal(masks[0], expected)
    assert errors[0] is None and errors[2] is None and not masks[2].any()
    assert errors[1].stage == "decode" and "cannot decode the png mask of 'mask'" in str(errors[1])


@pytest.mark.slow
def test_a_mask_that_does_not_decode_is_a_one_line_dead_letter(tmp_path, model_path, data):
    """The decoder's own words, never the compiled decoder's node stack (56 lines once)."""
    images, labels, masks, _ = data
    encoded = [demo.encode_image((masks[i][..., None] * 255).astype(np.uint8), "png")
               for i in range(3)]
    records = [_record(images[i], labels[i], f"m{i}", mask=encoded[i]) for i in range(3)]
    records.append(_record(images[3], labels[3], "cut-mask", mask=encoded[3 % 3][:45]))
    records.append(_record(images[4], labels[4], "jpeg-mask",
                           mask=b"\xff\xd8\xff" + b"\x00" * 40))
    ran = run_job(tmp_path, write(tmp_path, "masks", records), model_path, "--units_key",
                  "label", "--metrics", "pointing_game", "--mask_key", "mask")
    assert sorted(ran.explanations) == ["m0", "m1", "m2"]
    letters = {letter.id: letter for letter in ran.dead_letters}
    assert sorted(letters) == ["cut-mask", "jpeg-mask"]
    for id_, kind in (("cut-mask", "png"), ("jpeg-mask", "jpeg")):
        error = letters[id_].error
        assert letters[id_].stage == "decode"
        assert error.startswith(f"cannot decode the {kind} mask of 'mask': "), error
        assert "\n" not in error and len(error) < 300 and "node" not in error, error


def test_metrics_with_masks_equal_in_process_evaluate(model_path, model, data):
    images, labels, masks, _ = data
    metrics = {"pointing_game": {"tolerance": 0}, "energy_pointing_game": {}}
    explainer = Worker.load(Settings(model=model_path, top_k=TOP_K, metrics=list(metrics),
                                     metric_params=metrics, mask_key="mask", map_size="input"))
    truth = masks.astype(np.float32)
    truth[-1] = 0  # an empty mask: not scored
    explained = explainer.explain(images, [None] * len(images), {"masks": truth})
    units = np.stack([e.units for e in explained])
    maps = np.stack([e.maps for e in explained])
    for name, params in metrics.items():
        expected = explain_lib.evaluate(name, None, images.astype(np.float32), units, maps,
                                        masks=truth, verbose=0, **params)
        np.testing.assert_array_equal(np.stack([e.metrics[name] for e in explained]), expected)
        assert np.isnan(expected[-1]).all() and np.isfinite(expected[:-1]).all()


# --- options refused before any work -----------------------------------------------------------


def test_help_lists_the_analysis_options(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--metrics", "--metric_params", "--boxes_key", "--mask_key", "--table",
                   "--copy_features"):
        assert option in text


@pytest.mark.parametrize("flags, message", [
    (["--metrics", "unknown"], "Unknown metric 'unknown' in --metrics; the job computes "
     "deletion, insertion, mufidelity, pointing_game, energy_pointing_game."),
    (["--metrics", "delation"], "(did you mean deletion?)"),
    (["--metrics", "deletion,deletion"], "--metrics names deletion more than once."),
    (["--metrics", "model_randomization"], "model_randomization is not computed per record"),
    (["--metrics", "pointing_game"], "--metrics pointing_game needs ground truth"),
    (["--metrics", "pointing_game", "--boxes_key", "b", "--mask_key", "m"],
     "Give the ground truth as --boxes_key or as --mask_key, not both."),
    (["--boxes_key", "objects/bbox"], "--boxes_key is used by the localisation metrics only"),
    (["--metrics", "deletion", "--metric_params", '{"deletion": {"steps": 3}}'],
     "Unknown parameter(s) steps for deletion"),
    (["--metrics", "deletion", "--metric_params", '{"insertion": {"n_steps": 3}}'],
     "--metric_params sets parameters of insertion, which --metrics does not compute"),
    (["--metrics", "deletion", "--metric_params", "{bad"], "--metric_params is not valid JSON"),
    (["--metrics", "deletion", "--metric_params", '{"n_steps": 3}'],
     "--metric_params is a JSON object of each metric's parameters, keyed by metric name"),
    (["--metrics", "deletion", "--metric_params", '{"deletion": {"n_steps": 0}}'],
     "deletion needs n_steps >= 1"),  # a value the metric refuses, found by tracing it
    (["--metrics", "deletion", "--metric_params", '{"deletion": {"n_steps": "many"}}'],
     "--metric_params: deletion's parameter n_steps takes an integer, not 'many'."),
    (["--metrics", "pointing_game", "--boxes_key", "b", "--metric_params",
      '{"pointing_game": {"tolerance": [15]}}'],
     "--metric_params: pointing_game's parameter tolerance takes a number or null, not [15]."),
    (["--copy_features", "label"], "--copy_features copies input features into the table"),
    (["--table", "TMP/t", "--copy_features", "label,shoe_size"],
     "--copy_features shoe_size: no feature of that name in the first 1000 input records "
     "(they hold id, image, label)."),
    (["--table", "TMP/t", "--copy_features", "id"], "--copy_features id would shadow"),
    (["--table", "TMP/o"], "--table TMP/o would mix its files with the explanations'"),
])
def test_bad_analysis_options_exit_2_before_any_work(tmp_path, model_path, shapes, capsys,
                                                     flags, message):
    images, labels = shapes
    path = write(tmp_path, "in", [demo.make_example(demo.encode_image(images[0]), 1, "x")])
    flags = [flag.replace("TMP", str(tmp_path)) for flag in flags]
    message = message.replace("TMP", str(tmp_path))
    assert main(["--input", path, "--output", str(tmp_path / "o"), "--model", model_path,
                 *flags]) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("explain-pipeline:")]
    assert len(said) == 1 and message in said[0], err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["in.tfrecord"]  # nothing written
