"""The job's strategies (`--strategies`, SpRAy): the Clever Hans demo's marked images found
as a cluster of their own, the table's `cluster` column against the overview's centroids
(an independent nearest-centroid in numpy over the stored maps), the manifest, the
per-batch sample's uniformity, and the spilled rows' way back to the table."""

import glob
import os
import re

import keras
import numpy as np
import pandas as pd
import pytest

from pipeline import demo
from pipeline.results.manifest import read_manifest
from pipeline.results.overview import read_overview
from tests.pipeline.conftest import run_job, write

SIZE = 32
PURITY_FLOOR = 0.9
RECALL_FLOOR = 0.8


@pytest.fixture(scope="module")
def clever_hans(tmp_path_factory):
    """The Clever Hans demo, small: a CNN trained on 32x32 shapes where half the circles
    carry a mark in the corner; 240 test records marked the same way."""
    directory = tmp_path_factory.mktemp("clever_hans")
    images, labels = demo.make_shapes(1200, seed=0, size=SIZE)
    images, _ = demo.plant_mark(images, labels, 0.5, seed=0)
    keras.utils.set_random_seed(0)
    model = demo.make_model((SIZE, SIZE, 3), 4, width=8)
    demo.train_model(model, images, labels, epochs=5)
    model_path = str(directory / "model.keras")
    keras.saving.save_model(model, model_path)
    test, test_labels = demo.make_shapes(240, seed=1, size=SIZE)
    test, marked = demo.plant_mark(test, test_labels, 0.5, seed=1)
    records = [demo.make_example(demo.encode_image(image, "png"), int(label), f"r{i:03d}")
               for i, (image, label) in enumerate(zip(test, test_labels))]
    write(directory, "records-0", records[:120])
    write(directory, "records-1", records[120:])
    job = run_job(directory, str(directory / "records-*"), model_path, "--method", "gradcam",
                  "--units_key", "label", "--map_encoding", "raw32", "--strategies",
                  "--strategies_size", "16", "--table", str(directory / "out" / "table"))
    marked_ids = {f"r{i:03d}" for i in np.flatnonzero(marked)}
    return job, marked_ids, str(directory / "out" / "table")


@pytest.mark.slow
def test_clever_hans_marked_images_make_their_own_cluster(clever_hans):
    job, marked_ids, table = clever_hans
    rows = pd.concat([pd.read_parquet(path) for path in glob.glob(table + "-*.parquet")])
    assert len(rows) == 240 and rows.cluster.notna().all()
    circles = rows[rows.unit == demo.MARK_CLASS]
    is_marked = circles.id.isin(marked_ids)
    # The cluster holding most marked circles: how pure, how complete.
    chosen = circles[is_marked].cluster.mode()[0]
    members = circles.cluster == chosen
    purity = (members & is_marked).sum() / members.sum()
    recall = (members & is_marked).sum() / is_marked.sum()
    print(f"Clever Hans: purity {purity:.3f}, recall {recall:.3f}")
    assert purity >= PURITY_FLOOR and recall >= RECALL_FLOOR
    # Its mean map sits on the mark (top-left corner), the others' do not.
    unit = read_overview(job.output).strategies[demo.MARK_CLASS]
    size = unit.mean_maps.shape[1]
    corner = slice(0, size // 4)
    mass = unit.mean_maps[:, corner, corner].sum(axis=(1, 2))
    assert np.unravel_index(unit.mean_maps[chosen].argmax(), (size, size))[0] < size // 4
    assert mass[chosen] > 0.3 and all(mass[c] < mass[chosen] / 3
                                      for c in range(unit.k) if c != chosen)


@pytest.mark.slow
def test_cluster_column_is_the_nearest_centroid_of_each_stored_map(clever_hans):
    job, _, table = clever_hans
    overview = read_overview(job.output)
    rows = pd.concat([pd.read_parquet(path) for path in glob.glob(table + "-*.parquet")])
    clusters = dict(zip(zip(rows.id, rows.unit), rows.cluster))
    checked = 0
    for record_id, decoded in job.explanations.items():
        unit = int(decoded["units"][0])
        fitted = overview.strategies[unit]
        stored = decoded["maps"][..., 0]                        # raw32: the worker's map
        s = fitted.mean_maps.shape[1]
        h = stored.shape[0]
        if h >= s:   # block means
            block = np.abs(stored).reshape(s, h // s, s, h // s).mean(axis=(1, 3))
        else:        # Grad-CAM stored at its own 8x8: each pixel repeated
            block = np.abs(stored).repeat(s // h, 0).repeat(s // h, 1)
        block = block.reshape(-1)
        block = block / block.sum() if block.sum() > 0 else block
        block = block.astype(np.float16).astype(np.float32)   # as the job keeps it
        distances = ((fitted.mean_maps.reshape(fitted.k, -1) - block) ** 2).sum(axis=1)
        assert clusters[(record_id, unit)] == int(np.argmin(distances)), record_id
        checked += 1
    assert checked == 240
    # Each cluster's size counts every record, its share of the unit's records.
    for unit, fitted in overview.strategies.items():
        per_cluster = rows[rows.unit == unit].cluster.value_counts()
        assert fitted.records == [int(per_cluster.get(c, 0)) for c in range(fitted.k)]
        assert sum(fitted.shares()) == pytest.approx(1.0)
        assert fitted.sample == min(500, (rows.unit == unit).sum())
        assert fitted.prototype_images.dtype == np.uint8
    manifest = read_manifest(job.output)
    assert manifest["strategies"]["per_unit"][str(demo.MARK_CLASS)]["records"] == \
        overview.strategies[demo.MARK_CLASS].records
    assert not os.path.exists(job.output + ".strategies-rows")   # the spilled rows removed


@pytest.mark.slow
def test_the_report_shows_the_strategies_in_headless_chromium(clever_hans, tmp_path):
    """The report's strategies section: per unit its clusters with the records and shares
    the overview holds, a mean map and prototypes per cluster, the embedding plot; the page
    loads in Chromium without a broken image or an error (the probe of test_report)."""
    from pipeline import report
    from tests.pipeline.browser import load_in_chromium

    job, _, _ = clever_hans
    page = report.build(job.output, out=str(tmp_path / "report.html"),
                        labels=list(demo.CLASSES))
    text = open(page, encoding="utf-8").read()
    overview = read_overview(job.output)
    for unit, fitted in overview.strategies.items():
        assert f'class="unit-strategies" data-unit="{unit}" data-k="{fitted.k}"' in text
        assert f'<img class="embedding" data-unit="{unit}"' in text
        for c in range(fitted.k):
            assert (f'data-unit="{unit}" data-cluster="{c}" data-records="{fitted.records[c]}" '
                    f'data-share="{fitted.shares()[c]!r}"') in text
            for record_id in fitted.prototypes[c]:
                assert f'class="prototype" data-id="{record_id}"' in text
    attributes, dumped, _ = load_in_chromium(text, tmp_path)
    assert int(attributes["images"]) == len(re.findall(r"<img ", text)) > 0
    assert dumped.stdout.count('class="cluster"') == sum(
        f.k for f in overview.strategies.values())


def test_the_sample_is_uniform_bounded_and_copied_out_of_its_chunks():
    """`SampleMaps` over chunks (as `sample_chunks` makes them, partly merged): every map
    when there are fewer than the size, else exactly `size`, each map in the sample with
    probability size / n (a uniform sample without replacement), the kept arrays copies."""
    from pipeline.results.strategies import SampleMaps

    n, size, trials = 20, 5, 2000
    reduced = np.arange(n, dtype=np.float16)[:, None] * np.ones((1, 4), np.float16)
    thumbnails = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1),
                                                                              np.uint8)
    chunks = [([f"m{i}" for i in range(a, min(a + 3, n))], reduced[a:a + 3],
               thumbnails[a:a + 3]) for a in range(0, n, 3)]
    everything = SampleMaps(50)
    heap = everything.create_accumulator()
    for chunk in chunks:
        heap = everything.add_input(heap, chunk)
    entries = everything.extract_output(heap)
    assert sorted(e[0] for e in entries) == sorted(f"m{i}" for i in range(n))
    for record_id, kept, thumbnail in entries:
        i = int(record_id[1:])
        assert np.array_equal(kept, reduced[i]) and np.array_equal(thumbnail, thumbnails[i])
        assert not np.shares_memory(kept, reduced) and not np.shares_memory(thumbnail,
                                                                            thumbnails)
    counts = np.zeros(n)
    sample = SampleMaps(size)
    for _ in range(trials):
        halves = [sample.create_accumulator(), sample.create_accumulator()]
        for j, chunk in enumerate(chunks):
            halves[j % 2] = sample.add_input(halves[j % 2], chunk)
        entries = sample.extract_output(sample.merge_accumulators(halves))
        assert len(entries) == size and len({e[0] for e in entries}) == size
        for record_id, _, _ in entries:
            counts[int(record_id[1:])] += 1
    # Each map's share: binomial around 1/4, sd 0.0097 in 2000 trials; 5 sd of slack.
    np.testing.assert_allclose(counts / trials, size / n, atol=0.05)


def test_spilled_rows_come_back_as_the_tables_rows_with_each_nearest_centroid(tmp_path):
    """A batch through `with_strategies`, the spill and the assignment: the table the job
    writes is `to_arrow` of the rows with the cluster column inserted before the copied
    features, each cluster the nearest centroid by a brute-force numpy distance (-1, null,
    for a unit without clusters), and the counts those of the column."""
    import pyarrow as pa

    from pipeline.results import strategies as job
    from pipeline.results.clusters import UnitStrategies
    from pipeline.results.table import AnalysisRow, table_schema, to_arrow
    from pipeline.worker.encoding import Encoded, with_strategies

    class Maps:
        def __init__(self, maps):
            self.maps = maps

    rng = np.random.default_rng(0)
    outcomes = [Maps(rng.uniform(size=(4, 4, 2)).astype(np.float32)) for _ in range(6)]
    rows = [AnalysisRow(f"r{i}", np.array([i % 3, 3]), rng.normal(size=2).astype(np.float32),
                        rng.uniform(size=2).astype(np.float32),
                        rng.normal(size=(6, 2)).astype(np.float32),
                        np.zeros((0, 2), np.float32), (i,)) for i in range(6)]
    encoded = [Encoded(b"x", row) for row in rows]
    encoded[2] = b"no row"
    images = rng.integers(0, 255, (6, 16, 16, 3), np.uint8)
    batch = with_strategies(outcomes, encoded, images, 8)[5].strategies
    kept = [0, 1, 3, 4, 5]
    assert [row.id for row in batch.rows] == [f"r{i}" for i in kept]
    assert np.array_equal(batch.thumbnails, images[kept][:, ::2, ::2])
    assert batch.reduced.dtype == np.float16 and batch.reduced.shape == (10, 64)
    schema = table_schema(features={"n": "int64"}, strategies=True)
    centroids = {u: rng.uniform(size=(2, 64)).astype(np.float32) for u in range(3)}
    fitted = [UnitStrategies(u, 2, 1, np.zeros(2), [1, 1], c.reshape(2, 8, 8), [[], []],
                             np.zeros((2, 0, 8, 8)), np.zeros((2, 0, 2, 2, 3), np.uint8),
                             np.zeros((0, 2)), np.zeros(0, np.int32), 1.0)
              for u, c in centroids.items()]
    path = next(job._Spill(str(tmp_path), schema).process([batch]))
    outputs = list(job._read_and_assign(path, fitted, schema))
    counts = outputs[0].value
    table = outputs[1]
    units = np.array([u for i in kept for u in rows[i].units])
    expected = np.array([
        int(np.argmin(((centroids[u] - r.astype(np.float32)) ** 2).sum(axis=1)))
        if u in centroids else -1 for u, r in zip(units, batch.reduced)], np.int32)
    plain = to_arrow(batch.rows, schema.remove(schema.get_field_index("cluster")))
    assert table.schema == schema
    assert table.drop_columns(["cluster"]).equals(plain)
    assert table.column("cluster").to_pylist() == [None if c < 0 else int(c)
                                                   for c in expected]
    assert schema.names[-2:] == ["cluster", "n"]
    assert counts == {(int(u), int(c)): int(((units == u) & (expected == c)).sum())
                      for u, c in set(zip(units.tolist(), expected.tolist()))}
    assert isinstance(table, pa.Table)



def test_the_pages_embedding_lays_out_the_fitted_clusters_apart():
    """`UnitStrategies.embedding` (t-SNE of the spectral coordinates the fit keeps, drawn by
    the report): three strategies' maps land in three separate groups (each point's nearest
    other point in 2-D is of its own cluster), the same layout twice; points without
    spread stay at the origin rather than reaching t-SNE (whose Barnes-Hut tree crashed on
    them)."""
    from explain_lib import strategies as spray
    from pipeline.results.strategies import fit_unit
    from tests.explain_lib.test_strategies import blob_maps

    maps, _ = blob_maps(60, np.random.default_rng(1))
    reduced = spray.reduce_maps(maps, size=12)
    entries = [(f"m{i:03d}", reduced[i], np.zeros((2, 2, 3), np.uint8))
               for i in range(len(reduced))]
    unit = fit_unit(7, entries)
    assert unit.k == 3 and unit.features.shape == (180, 3)
    embedding = unit.embedding()
    assert embedding.shape == (180, 2) and np.isfinite(embedding).all()
    d = ((embedding[:, None] - embedding[None]) ** 2).sum(-1) + np.diag(np.full(180, np.inf))
    assert np.mean(unit.feature_clusters[d.argmin(1)] == unit.feature_clusters) == 1.0
    np.testing.assert_array_equal(unit.embedding(), embedding)
    unit.features = np.ones((20, 2), np.float32)
    assert not unit.embedding().any() and unit.embedding().shape == (20, 2)


def test_a_spill_folder_loses_only_the_files_its_command_named(tmp_path):
    """`remove_spill_files` (the strategies' spill folder, compare's join folder): the files
    whose names the command gives go, any other file stays, and so does the folder while it
    holds one; an empty folder goes; a folder that is not there is no error."""
    from pipeline.io.writing import remove_spill_files
    from pipeline.results.strategies import SPILL_NAME

    folder = tmp_path / "out.strategies-rows"
    folder.mkdir()
    ours = [folder / f"{i:032x}.pkl" for i in range(3)]
    theirs = [folder / "notes.txt", folder / f"{0:032x}.pkl.bak"]
    for path in ours + theirs:
        path.write_bytes(b"x")
    assert sorted(remove_spill_files(str(folder), SPILL_NAME)) == sorted(map(str, ours))
    assert sorted(os.listdir(folder)) == sorted(path.name for path in theirs)
    for path in theirs:
        path.unlink()
    assert remove_spill_files(str(folder), SPILL_NAME) == [] and not folder.exists()
    assert remove_spill_files(str(folder), SPILL_NAME) == []
