"""`python -m pipeline.compare`: two real runs of the job compared record by record, the numbers
against an independent numpy/scipy computation, on DirectRunner and the portable runner; the
records of one run only counted and listed; runs that cannot be compared refused in one line;
the page in a real browser; the join in several buckets giving what one gives, its bucket of
an id the same in every process, its files removed (theirs only) whether the comparison
succeeds or fails."""

import json
import math
import os
import re
import subprocess
import sys

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from explain_lib import io as explain_io
from pipeline import compare, demo
from pipeline.job import comparing
from pipeline.job.comparing import CompareSettings
from pipeline.results import comparison
from pipeline.settings import options_table
from tests.pipeline.conftest import run_job, write
from tests.pipeline import test_gcs
from tests.services import portable_services

gcs = test_gcs.gcs  # the fixture: a GCS emulator's bucket

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAW = ["--method_params", '{"postprocessing": null}']  # raw, signed Grad-CAM maps
DELETION = ["--metrics", "deletion", "--metric_params", '{"deletion": {"n_steps": 4}}']


# --- the numbers, without Beam --------------------------------------------------------------------


def test_spearman_equals_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 6, (7, 9)).astype(np.float32)  # many ties
        b = a + rng.normal(0, 2, a.shape).astype(np.float32)
        expected = stats.spearmanr(a.ravel(), b.ravel()).statistic
        assert comparison.spearman(a, b) == pytest.approx(expected, abs=1e-9)
    assert comparison.spearman(a, a) == pytest.approx(1.0)
    assert comparison.spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(comparison.spearman(np.zeros((3, 3)), a[:3, :3]))


def _top_set(values, fraction=0.1):
    """The top pixels the independent way: sorted by value, then position, in Python."""
    flat = [float(v) for v in np.ravel(values)]
    count = max(1, math.ceil(fraction * len(flat) - 1e-9))
    return set(sorted(range(len(flat)), key=lambda i: (-flat[i], i))[:count])


def _iou(a, b, fraction=0.1):
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    top_a, top_b = _top_set(a, fraction), _top_set(b, fraction)
    return len(top_a & top_b) / len(top_a | top_b)


def test_top_iou_is_the_overlap_of_the_top_tenth():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(10, 10))
    assert comparison.top_iou(a, a) == 1.0
    b = a.copy()
    b.ravel()[np.argsort(-a.ravel())[:10]] = -10  # the top 10 pixels of a: none in b's
    assert comparison.top_iou(a, b) == 0.0
    for _ in range(10):
        x, y = rng.integers(0, 4, (2, 8, 8)).astype(np.float32)
        assert comparison.top_iou(x, y) == pytest.approx(_iou(x, y))
    assert math.isnan(comparison.top_iou(np.ones((4, 4)), a[:4, :4]))


def test_area_resize_averages_the_pixels_each_cell_covers():
    rng = np.random.default_rng(2)
    maps = rng.normal(size=(32, 32, 2)).astype(np.float32)
    np.testing.assert_allclose(comparison.area_resize(maps, (8, 8)),
                               maps.reshape(8, 4, 8, 4, 2).mean(axis=(1, 3)), atol=1e-5)
    # 3 -> 2: each cell covers one and a half pixels.
    row = np.array([[[1.0], [2.0], [4.0]]], np.float32)
    np.testing.assert_allclose(comparison.area_resize(row, (1, 2))[0, :, 0],
                               [(1 + 0.5 * 2) / 1.5, (0.5 * 2 + 4) / 1.5], atol=1e-6)
    assert comparison.common_size((7, 7), (224, 224)) == (7, 7)


def test_the_options_table_is_in_the_docs():
    page = open(os.path.join(ROOT, "docs", "outputs.md"), encoding="utf-8").read()
    assert options_table(CompareSettings) in page, (
        "docs/outputs.md must hold pipeline.settings.options_table(CompareSettings):\n"
        + options_table(CompareSettings))


def test_a_prefix_that_is_not_a_job_output_is_one_line(tmp_path, capsys):
    (tmp_path / "not-a-run-00000-of-00001.tfrecord.gz").write_bytes(b"")
    code = compare.main([str(tmp_path / "not-a-run"), str(tmp_path / "nothing"),
                         "--output", str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("pipeline.compare: RUN_A ")
    assert "is not an output of the job: No run manifest at" in err
    assert not list(tmp_path.glob("cmp*"))
    assert compare.main(["a", "b", "--output", "c", "--top_fraction", "2"]) == 2
    assert "--top_fraction is a share of the pixels in (0, 1]" in capsys.readouterr().err
    assert compare.main(["a", "b", "--output", "c", "--methd", "x"]) == 2
    assert "unknown option --methd" in capsys.readouterr().err


# --- two real runs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_path, shapes):
    """Three real runs: A, Grad-CAM (raw maps, 8x8) of c0..c5 with their labels, scored by
    deletion; A2, the same job again; B, gradients (32x32) of c1..c6, unscored, explaining
    each record's `pair` of units: another unit first (B's only), then the label."""
    tmp_path = tmp_path_factory.mktemp("compare")
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(im, "png"), int(label), f"c{i}",
                                 pair=[(int(label) + 1) % 4, int(label)])
               for i, (im, label) in enumerate(zip(images[:7], labels[:7]))]
    first = write(tmp_path, "first", records[:6])
    second = write(tmp_path, "second", records[1:7])
    a = run_job(tmp_path, first, model_path, "--units_key", "label", *RAW, *DELETION, name="a")
    a2 = run_job(tmp_path, first, model_path, "--units_key", "label", *RAW, *DELETION,
                 name="a2")
    b = run_job(tmp_path, second, model_path, "--method", "gradients", "--units_key", "pair",
                name="b")
    return tmp_path, a, a2, b


def _table(pattern, order="id, unit"):
    return duckdb.sql(f"SELECT * FROM read_parquet('{pattern}') ORDER BY {order}").df()


def _one_sided(output):
    return _table(f"{output}.one_sided-*.parquet", order="id")


def _expected_rows(a, b):
    """The comparison's rows computed independently: maps decoded by the library's reader,
    the larger averaged down by blocks, scipy's Spearman, the top tenth in plain Python."""
    rows = {}
    for record_id in sorted(set(a.explanations) & set(b.explanations)):
        ra, rb = a.explanations[record_id], b.explanations[record_id]
        ma, mb = ra["maps"], rb["maps"]
        size = (min(ma.shape[0], mb.shape[0]), min(ma.shape[1], mb.shape[1]))

        def down(maps):
            fy, fx = maps.shape[0] // size[0], maps.shape[1] // size[1]
            # (in float64, which sums these float32 pixels exactly, so that ties between
            # block means stay ties, as the comparison's own float64 averaging keeps them)
            blocks = maps.astype(np.float64).reshape(size[0], fy, size[1], fx, -1)
            return blocks.mean(axis=(1, 3)).astype(np.float32)

        ma, mb = down(ma), down(mb)
        units_a, units_b = list(ra["units"]), list(rb["units"])
        for unit in units_a + [u for u in units_b if u not in units_a]:
            row = {"rank_a": units_a.index(unit) if unit in units_a else None,
                   "rank_b": units_b.index(unit) if unit in units_b else None}
            if row["rank_a"] is not None and row["rank_b"] is not None:
                x, y = ma[..., row["rank_a"]], mb[..., row["rank_b"]]
                row["spearman"] = stats.spearmanr(x.ravel(), y.ravel()).statistic
                row["top_iou"] = _iou(x, y)
                row["logit_change"] = (rb["logits"][row["rank_b"]]
                                       - ra["logits"][row["rank_a"]])
                row["probability_change"] = (rb["probabilities"][row["rank_b"]]
                                             - ra["probabilities"][row["rank_a"]])
            rows[(record_id, int(unit))] = row
    return rows


@pytest.fixture(scope="module")
def compared(runs):
    tmp_path, a, _, b = runs
    output = str(tmp_path / "cmp" / "ab")
    summary = compare.compare([a.output, b.output, "--output", output])
    return output, summary


@pytest.mark.slow
def test_gradcam_against_gradients_equals_an_independent_computation(runs, compared):
    _, a, _, b = runs
    output, summary = compared
    table = _table(f"{output}-*.parquet")
    expected = _expected_rows(a, b)
    assert sorted(zip(table["id"], table["unit"])) == sorted(expected)
    checked = 0
    for row in table.itertuples():
        want = expected[(row.id, row.unit)]
        for side in ("rank_a", "rank_b"):
            got = getattr(row, side)
            assert (None if pd.isna(got) else int(got)) == want[side]
        if "spearman" not in want:  # one run only explained the unit: nothing compared
            assert pd.isna(row.spearman) and pd.isna(row.logit_change)
            continue
        if math.isnan(want["spearman"]):
            assert pd.isna(row.spearman) and pd.isna(row.top_iou)
        else:
            assert row.spearman == pytest.approx(want["spearman"], abs=1e-5)
            assert row.top_iou == pytest.approx(want["top_iou"], abs=1e-6)
            checked += 1
        assert row.logit_change == pytest.approx(want["logit_change"], abs=1e-5)
        assert row.probability_change == pytest.approx(want["probability_change"], abs=1e-6)
    assert checked >= 4
    assert table["rank_a"].isna().sum() == 5 and (table["rank_b"] == 1).sum() == 5
    assert "deletion_change" not in table.columns  # B scored no metric
    # One run only: c0 in A, c6 in B; counted by Beam, in the summary, listed in the file.
    assert (summary.records, summary.only) == (5, {"a": 1, "b": 1})
    counters = summary.counters
    assert (counters["compared"], counters["only_in_a"], counters["only_in_b"]) == (5, 1, 1)
    assert (counters["records_a"], counters["records_b"]) == (6, 6)
    one_sided = _one_sided(output)
    assert list(zip(one_sided["id"], one_sided["run"], one_sided["records"])) == [
        ("c0", "a", 1), ("c6", "b", 1)]
    # The page's numbers: the summary, every compared map counted once per unit.
    page = open(output + ".html", encoding="utf-8").read()
    data = json.loads(re.search(r'id="compare-data">(.*?)</script>', page, re.S).group(1))
    assert data["records"] == 5 and data["only"] == {"a": 1, "b": 1}
    shared = [k for k, v in expected.items() if "spearman" in v]
    assert sum(u["maps"] for u in data["units"].values()) == len(shared)
    rhos = sorted((v["spearman"], k[0]) for k, v in expected.items()
                  if "spearman" in v and not math.isnan(v["spearman"]))
    worst = {}
    for rho, record_id in rhos:
        worst.setdefault(record_id, rho)
    assert [c["id"] for c in data["changed"]] == [i for i, _ in sorted(
        worst.items(), key=lambda item: (item[1], item[0]))][:comparison.CHANGED]
    assert len(re.findall(r'<figure class="changed"', page)) == len(data["changed"])


@pytest.mark.slow
def test_the_same_job_twice_agrees_everywhere(runs, tmp_path):
    _, a, a2, _ = runs
    output = str(tmp_path / "same")
    summary = compare.compare([a.output, a2.output, "--output", output])
    table = _table(f"{output}-*.parquet")
    assert len(table) == len(a.explanations) == 6
    assert (summary.only, summary.records) == ({"a": 0, "b": 0}, 6)
    defined = table[table["spearman"].notna()]
    assert len(defined) >= 4
    assert np.allclose(defined["spearman"], 1.0) and np.allclose(defined["top_iou"], 1.0)
    for name in ("logit_change", "probability_change", "deletion_change"):
        assert (table[name] == 0).all(), name
    assert list(_one_sided(output)["id"]) == []


@pytest.mark.slow
def test_the_portable_runner_writes_what_direct_runner_writes(runs, compared, tmp_path):
    _, a, _, b = runs
    output, summary = compared
    with portable_services() as flags:
        portable = compare.compare([a.output, b.output, "--output", str(tmp_path / "p"),
                                    *flags])
    mine, theirs = _table(f"{output}-*.parquet"), _table(f"{tmp_path / 'p'}-*.parquet")
    assert mine.equals(theirs)
    assert (portable.records, portable.only) == (summary.records, summary.only)
    assert _one_sided(str(tmp_path / "p")).equals(_one_sided(output))


@pytest.mark.slow
def test_runs_that_cannot_be_compared_are_refused(runs, capsys, tmp_path):
    tmp, a, _, b = runs
    assert compare.main([a.output, b.output, "--output", a.output]) == 2
    assert "is a run's prefix" in capsys.readouterr().err
    # A run whose shards are gone.
    lost = tmp_path / "lost"
    lost.mkdir()
    (lost / "expl.manifest.json").write_bytes(open(a.output + ".manifest.json", "rb").read())
    assert compare.main([str(lost / "expl"), b.output, "--output", str(tmp_path / "c")]) == 2
    assert "holds no explanation shards" in capsys.readouterr().err


@pytest.mark.slow
def test_the_page_loads_in_headless_chromium(compared, tmp_path):
    from tests.pipeline.browser import load_in_chromium

    output, _ = compared
    text = open(output + ".html", encoding="utf-8").read()
    attributes, _, _ = load_in_chromium(text, tmp_path)
    assert int(attributes["images"]) == len(re.findall(r"<img ", text)) > 2


def test_records_without_an_id_are_refused_by_the_key_stage():
    from pipeline.job.comparing import record_id

    record = explain_io.encode_explanation("x1", [0], [1.0], np.zeros((2, 2, 1)))
    assert record_id(record) == "x1"
    with pytest.raises(ValueError, match="not a tf.train.Example"):
        record_id(b"\x00junk")


@pytest.mark.slow
def test_runs_and_comparison_on_cloud_storage(runs, compared, gcs, tmp_path):
    """Both runs copied to gs:// (their manifests name the local files they were written
    as: the shards are found next to the manifest) and the comparison written there: the
    same table and one-sided ids as the local comparison."""
    from apache_beam.io.filesystems import FileSystems

    _, a, _, b = runs
    output, summary = compared
    for name, run in (("a", a), ("b", b)):
        shards = [m.path for m in FileSystems.match([run.output + "-*"])[0].metadata_list]
        for path in [run.output + ".manifest.json", *shards]:  # copied byte for byte
            with open(path, "rb") as source, FileSystems.create(
                    f"{gcs}/{name}/" + os.path.basename(path),
                    compression_type="uncompressed") as target:
                target.write(source.read())
    remote = compare.compare([f"{gcs}/a/expl", f"{gcs}/b/expl", "--output", f"{gcs}/cmp/ab"])
    assert (remote.records, remote.only) == (summary.records, summary.only)
    for pattern, local in ((f"{gcs}/cmp/ab-*.parquet", f"{output}-*.parquet"),
                           (f"{gcs}/cmp/ab.one_sided-*.parquet", f"{output}.one_sided-*.parquet")):
        (found,) = FileSystems.match([pattern])[0].metadata_list
        copy = tmp_path / os.path.basename(found.path)
        with FileSystems.open(found.path, compression_type="uncompressed") as source:
            copy.write_bytes(source.read())
        order = "id, unit" if "one_sided" not in pattern else "id"
        assert _table(str(copy), order).equals(_table(local, order))
    assert FileSystems.exists(f"{gcs}/cmp/ab.html")


@pytest.mark.slow
def test_options_reach_the_comparison_and_duplicates_are_counted(tmp_path):
    """`--top_fraction` reaches `top_iou`, `--num_shards` the table's writer; an id held by
    two records of a run is compared once and counted. The runs are written in the job's
    output format directly (as `benchmarks/compare.py` writes them: no model)."""
    import shutil

    from benchmarks.compare import synthesise

    run_a, run_b = str(tmp_path / "a" / "expl"), str(tmp_path / "b" / "expl")
    synthesise(run_a, 20, 8, seed=1, first=0)    # r0..r19, 8x8 maps
    synthesise(run_b, 20, 16, seed=2, first=10)  # r10..r29, 16x16 maps
    shutil.copy(f"{run_b}-00000-of-00004.tfrecord.gz", f"{run_b}-00000-of-00005.tfrecord.gz")
    output = str(tmp_path / "cmp")
    summary = compare.compare([run_a, run_b, "--output", output, "--top_fraction", "0.5",
                               "--num_shards", "2"])
    assert len(list(tmp_path.glob("cmp-*-of-00002.parquet"))) == 2
    assert (summary.records, summary.only, summary.duplicates) == (
        10, {"a": 10, "b": 10}, {"a": 0, "b": 5})
    assert summary.counters["duplicates_b"] == 5
    decoded = {run: {r["id"]: r for r in explain_io.iterate_decoded(f"{prefix}-*",
                                                                    explain_io.decode_explanation)}
               for run, prefix in (("a", run_a), ("b", run_b))}
    table = _table(f"{output}-*.parquet")
    assert len(table) == 10
    differs = 0  # (the default fraction would give other values)
    for row in table.itertuples():
        x = decoded["a"][row.id]["maps"][..., 0]
        y = decoded["b"][row.id]["maps"][..., 0].astype(np.float64).reshape(
            8, 2, 8, 2).mean(axis=(1, 3)).astype(np.float32)
        assert row.top_iou == pytest.approx(_iou(x, y, 0.5), abs=1e-6)
        differs += row.top_iou != pytest.approx(_iou(x, y, 0.1), abs=1e-6)
    assert differs >= 5
    one_sided = _one_sided(output)
    assert sorted(one_sided["records"]) == [1] * 20


# --- the join in buckets ----------------------------------------------------------------------


def _rounded(value):
    """A JSON value with its floats rounded (sums taken in another order differ in the last
    bits)."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


@pytest.mark.slow
def test_several_buckets_give_what_one_gives(runs, compared, tmp_path, monkeypatch):
    """Buckets of 2 records (3 for these 6 records a run, every one of them used) and a
    bucket file per list of records: the same table, one-sided ids and summary as the
    default comparison's single bucket."""
    _, a, _, b = runs
    output, summary = compared
    ids = [f"c{i}" for i in range(7)]
    assert {comparing.bucket_of(i, 1) for i in ids} == {0}
    monkeypatch.setattr(comparing, "RECORDS_PER_BUCKET", 2)
    monkeypatch.setattr(comparing, "BUCKET_BUFFER_BYTES", 1)
    assert len({comparing.bucket_of(i, 3) for i in ids}) == 3
    many = str(tmp_path / "many")
    bucketed = compare.compare([a.output, b.output, "--output", many])
    assert _table(f"{many}-*.parquet").equals(_table(f"{output}-*.parquet"))
    assert _one_sided(many).equals(_one_sided(output))
    assert _rounded(bucketed.to_json()) == _rounded(summary.to_json())
    assert bucketed.counters == summary.counters


@pytest.mark.slow
def test_the_bucket_of_an_id_is_the_same_in_every_process():
    """CRC-32 of the id's UTF-8, not Python's salted `hash`: known ids, known buckets, here
    and in a process of another hash seed."""
    ids = ["c0", "r12345", "\u00e9t\u00e9/7"]
    here = [comparing.bucket_of(i, 1000) for i in ids]
    assert here == [55, 936, 340]
    script = ("import sys\nfrom pipeline.job.comparing import bucket_of\n"
              "print([bucket_of(i, 1000) for i in sys.argv[1:]])")
    done = subprocess.run([sys.executable, "-c", script, *ids], cwd=ROOT, check=True,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert done.stdout.strip() == str(here)


@pytest.mark.slow
def test_the_join_files_are_removed_and_no_others(tmp_path, monkeypatch):
    """After a comparison that succeeds and one that fails (a damaged shard), its folder
    `OUTPUT.join` is gone, a bucket file a killed comparison left there too; files of other
    prefixes in the same folder, named alike, are untouched."""
    from benchmarks.compare import synthesise

    run_a, run_b = str(tmp_path / "a" / "expl"), str(tmp_path / "b" / "expl")
    synthesise(run_a, 20, 8, seed=1, first=0)
    synthesise(run_b, 20, 16, seed=2, first=10)
    output = tmp_path / "out" / "cmp"
    leftover = "a-00000-" + "0" * 32 + ".tfrecord"  # named as the join names its files
    others = [tmp_path / "out" / "cmp2.join" / leftover,
              tmp_path / "out" / "cmp.joined" / leftover,
              tmp_path / "out" / "cmp-other.join" / leftover,
              tmp_path / "out" / f"cmp.join-{leftover}"]
    for path in others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"theirs")
    removed = []
    monkeypatch.setattr(compare, "remove_join_folder",
                        lambda prefix: removed.append(comparing.remove_join_folder(prefix)))
    for damaged in (False, True):
        (output.parent / "cmp.join").mkdir(exist_ok=True)
        (output.parent / "cmp.join" / leftover).write_bytes(b"a killed comparison's")
        if damaged:
            with open(f"{run_b}-00001-of-00004.tfrecord.gz", "r+b") as shard:
                shard.seek(30)
                shard.write(b"\xff" * 40)
        code = compare.main([run_a, run_b, "--output", str(output)])
        assert code == (1 if damaged else 0)
        assert not (output.parent / "cmp.join").exists()
        assert all(path.read_bytes() == b"theirs" for path in others)
        assert [os.path.basename(path) for path in removed[-2]] == [leftover]  # before
        if not damaged:  # after: the bucket files of both runs
            assert {os.path.basename(path)[0] for path in removed[-1]} == {"a", "b"}
