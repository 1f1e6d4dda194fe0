"""`pipeline.results.overview`: what the job keeps for the report equals the same numbers computed
from all the records at once, however the records are split into batches and merged; the
score samples stay bounded and uniform; the file round-trips; the handler makes one per
batch, with large maps scaled down for the sums, and hands Beam one per call."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from pipeline.results import overview as overview_module
from pipeline.results.overview import Overview, Sample, batch_overview
from pipeline.worker.encoding import Encoded
from pipeline.worker.explaining import RecordMaps
from pipeline.worker.parsing import CheckedRecord, RecordSpec, check_record
from tests.pipeline.conftest import make_handler, raw_record

DIRECTIONS = {"deletion": False, "pointing_game": True}


def _records(n=40, k=2, seed=0):
    """n records explaining k units each (units 0..4), maps 6x5, two metrics with NaNs."""
    rng = np.random.default_rng(seed)
    ids = [f"r{i:03d}" for i in rng.permutation(n)]
    units = np.stack([rng.choice(5, k, replace=False) for _ in range(n)])
    logits = rng.normal(size=(n, k)).astype(np.float32)
    probabilities = rng.random((n, k)).astype(np.float32)
    deletion = rng.random((n, k)).astype(np.float32)
    deletion[3, 0] = deletion[7, 1] = np.nan
    deletion[1, 0] = deletion[2, 0] = 0.0  # a tie for the best: the smaller id goes first
    pointing = rng.integers(0, 2, (n, k)).astype(np.float32)
    pointing[:5] = np.nan  # not scored: no ground truth
    maps = rng.random((n, 6, 5, k)).astype(np.float32)
    images = rng.uniform(0, 255, (n, 4, 4, 3)).astype(np.float32)
    return dict(ids=ids, units=units, logits=logits, probabilities=probabilities,
                scores={"deletion": deletion, "pointing_game": pointing}, maps=maps,
                images=images)


def _overview(data, rows):
    return batch_overview([data["ids"][i] for i in rows], data["units"][rows],
                          data["logits"][rows], data["probabilities"][rows],
                          {name: s[rows] for name, s in data["scores"].items()},
                          data["maps"][rows], data["maps"][rows], data["images"][rows],
                          DIRECTIONS)


def test_merged_batches_equal_the_numbers_of_all_records():
    data = _records()
    n = len(data["ids"])
    parts = [_overview(data, rows) for rows in np.array_split(np.arange(n), 5)]
    forward = Overview(list(DIRECTIONS), DIRECTIONS)
    for part in parts:
        forward.merge(part)
    backward = Overview(list(DIRECTIONS), DIRECTIONS)
    for part in reversed([_overview(data, rows)
                          for rows in np.array_split(np.arange(n), 3)]):
        backward.merge(part)

    # The references, computed from all the records at once.
    units, maps = data["units"], data["maps"]
    counts = collections.Counter(units.ravel().tolist())
    first = collections.Counter(units[:, 0].tolist())
    means = {u: np.mean([maps[i, ..., j] for i in range(n) for j in range(2)
                         if units[i, j] == u], axis=0, dtype=np.float64) for u in counts}

    def ranked(key, lower_first):
        score = (data["scores"][key][:, 0] if key in data["scores"]
                 else data[{"probability": "probabilities", "logit": "logits"}[key]][:, 0])
        rows = [i for i in range(n) if np.isfinite(score[i])]
        return [data["ids"][i] for i in sorted(
            rows, key=lambda i: (score[i] if lower_first else -score[i], data["ids"][i]))]

    for merged in (forward, backward):
        assert merged.records == n
        assert merged.unit_counts == counts and merged.first_unit_counts == first
        assert merged.size == (6, 5)
        for unit, mean in means.items():
            np.testing.assert_allclose(merged.mean_maps()[unit], mean, rtol=1e-12)
        for name, scores in data["scores"].items():
            finite = scores[np.isfinite(scores)]
            np.testing.assert_array_equal(np.sort(merged.samples[name].values), np.sort(finite))
            assert merged.samples[name].scored == len(finite)
            assert merged.samples[name].missing == scores.size - len(finite)
        np.testing.assert_array_equal(np.sort(merged.samples["probability"].values),
                                      np.sort(data["probabilities"][:, 0]))
        # Best and worst: deletion is better low, the rest high; ties to the smaller id.
        kept = overview_module.EXAMPLES
        assert [e.id for e in merged.best("deletion")] == ranked("deletion", True)[:kept]
        assert [e.id for e in merged.worst("deletion")] == ranked("deletion", False)[:kept]
        for key in ("pointing_game", "probability", "logit"):
            assert [e.id for e in merged.best(key)] == ranked(key, False)[:kept]
            assert [e.id for e in merged.worst(key)] == ranked(key, True)[:kept]
        example = merged.best("deletion")[0]
        i = data["ids"].index(example.id)
        np.testing.assert_array_equal(example.map, maps[i, ..., 0])
        np.testing.assert_array_equal(example.image,
                                      np.rint(data["images"][i]).astype(np.uint8))
        assert (example.unit, example.logit) == (units[i, 0], pytest.approx(data["logits"][i, 0]))


def test_a_batch_overview_holds_each_records_image_once():
    """Every record of a batch of 8 is among the best and the worst by each of the four
    ranking keys that scores it (up to 8 examples a record), yet its image and map are one
    view each, shared,
    so a pickled overview (Beam pickles some of the elements it passes on to size them)
    holds each image once: within a copy of the batch's images and maps, plus 10%."""
    import pickle

    data = _records(n=8)
    data["images"] = np.random.default_rng(1).uniform(0, 255, (8, 64, 64, 3)).astype(
        np.float32)
    overview = _overview(data, np.arange(8))
    examples = [e for key in overview.keys for side in overview.examples[key] for e in side]
    # Both sides of: probability and logit (8 each), deletion (7: one NaN), pointing (3).
    assert len(examples) == 2 * (8 + 8 + 7 + 3)
    assert len({id(e.image) for e in examples}) == 8 and len({id(e.map) for e in examples}) == 8
    for example in examples:
        np.testing.assert_array_equal(example.image,
                                      data["images"][data["ids"].index(example.id)])
    batch = data["images"].nbytes + data["maps"][..., 0].nbytes
    assert len(pickle.dumps(overview, pickle.HIGHEST_PROTOCOL)) <= 1.1 * batch


def test_the_file_round_trips_without_pickle():
    data = _records(n=12)
    kept = Overview(list(DIRECTIONS), DIRECTIONS).merge(_overview(data, np.arange(12)))
    kept.count_dead_letter("decode", "cannot decode").count_dead_letter("decode",
                                                                        "cannot decode")
    back = Overview.from_bytes(kept.to_bytes())
    assert back.to_bytes() == kept.to_bytes()
    assert back.records == 12 and back.dead_letters == {"decode": {"cannot decode": 2}}
    assert back.higher_is_better == DIRECTIONS and back.size == (6, 5)
    for key in kept.keys:
        assert [(e.id, e.score) for e in back.best(key)] == [
            (e.id, e.score) for e in kept.best(key)]
        for mine, theirs in zip(kept.best(key), back.best(key)):
            np.testing.assert_array_equal(theirs.map, mine.map)
            np.testing.assert_array_equal(theirs.image, mine.image)
    with pytest.raises(ValueError, match="different metrics"):
        Overview().merge(kept)
    empty = Overview.from_bytes(Overview(["deletion"], {"deletion": False}).to_bytes())
    assert empty.records == 0 and empty.mean_maps() == {} and empty.best("deletion") == []


def test_score_samples_stay_bounded_and_uniform(monkeypatch):
    monkeypatch.setattr(overview_module, "SAMPLE", 1000)
    sample = Sample()
    for part in range(20):  # 20 parts of 500 scores; part i's scores are all i
        sample = sample.merge(Sample.of(np.full(500, part, np.float32)))
    assert len(sample.values) == 1000 and sample.scored == 10_000 and sample.missing == 0
    shares = np.bincount(sample.values.astype(int), minlength=20)
    # A uniform sample holds about 50 of each part (binomial sd ~7): within 4 sd.
    assert np.all(np.abs(shares - 50) <= 28), shares
    merged = Sample.of(np.array([1.0, np.nan], np.float32)).merge(sample)
    assert merged.scored == 10_001 and merged.missing == 1 and len(merged.values) == 1000


def test_dead_letter_messages_are_bounded_per_stage(monkeypatch):
    monkeypatch.setattr(overview_module, "MESSAGES", 2)
    one, two = Overview(), Overview()
    for message in ("a", "b", "a", "c"):
        one.count_dead_letter("decode", message)
    for message in ("d", "b"):
        two.count_dead_letter("decode", message)
    two.count_dead_letter("parse", "x")
    one.merge(two)
    assert one.dead_letters == {"decode": {"a": 2, "b": 2}, "parse": {"x": 1}}
    assert one.other_messages == {"decode": 2}  # "c", then "d": beyond the two counted


def test_the_handler_keeps_one_overview_per_batch_with_large_maps_scaled_down():
    made = []

    class Large:
        def explain(self, images, units):
            rng = np.random.default_rng(len(made))
            made.extend(RecordMaps(np.array([2, 0]), np.array([0.5, 0.1], np.float32),
                                    rng.random((80, 96, 2)).astype(np.float32)
                                    / (image.mean() != 20),  # record 2: infinite maps
                                    np.array([0.7, 0.2], np.float32), {})
                        for image in images)
            return made[-len(images):]

    spec = RecordSpec(image_size=(4, 4), channels=3, num_units=5, image_shape=(4, 4, 3))
    records = [CheckedRecord(f"r{i}", None, b"rec%d" % i, "raw",
                             np.full((4, 4, 3), 10.0 * i, np.float32)) for i in range(5)]
    handler = make_handler(spec, method="gradients", batch_size=5, overview=True)
    results = handler.explain_checked(records, Large())
    carried = [r.inference for r in results if isinstance(r.inference, Encoded)]
    assert len(carried) == 1 and results[-1].inference is carried[0]
    assert [type(r.inference).__name__ for r in results[:-1]] == [
        "bytes", "bytes", "StageError", "bytes"]  # record 2 failed: not in the overview
    kept = carried[0].overview
    assert kept.records == 4 and kept.size == (53, 64)  # 80x96 within 64 on a side
    maps = np.stack([e.maps for i, e in enumerate(made) if i != 2])
    for k, unit in enumerate((2, 0)):
        expected = tf.image.resize(maps[..., k:k + 1].mean(axis=0), (53, 64)).numpy()[..., 0]
        np.testing.assert_allclose(kept.mean_maps()[unit], expected, rtol=1e-5, atol=1e-6)
    best = kept.best("probability")
    assert [e.id for e in best] == ["r0", "r1", "r3", "r4"]  # all tie: smallest id first
    assert best[0].map.shape == (80, 96)
    for example in best:  # each its own record's image, past the failed one
        np.testing.assert_array_equal(
            example.image, np.full((4, 4, 3), 10 * int(example.id[1:]), np.uint8))


def test_the_batches_overviews_are_combined_where_they_are_made(tmp_path, model_path):
    """Beam merges each batch's overview into its accumulator as it comes only when the
    combine reads them straight from the stage that makes them (combiner lifting). Behind a
    Flatten, DirectRunner buffered every one (a batch of images each) until the end: memory
    grew by the batch's images per batch."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.job.options import job_settings
    from pipeline.job.transforms import build_pipeline

    data = tmp_path / "in.tfrecord"
    data.write_bytes(b"")
    options = PipelineOptions(["--input", str(data), "--output", str(tmp_path / "out" / "expl"),
                               "--model", model_path])
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, job_settings(options))
    producers = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            self.visit_transform(node)

        def visit_transform(self, node):
            producers[node.full_label] = [getattr(p.producer, "full_label", None)
                                          for p in node.inputs]

    pipeline.visit(Visitor())
    assert producers["KeepOverview/Merge"] == ["Explain/RouteResults/ParDo(RouteResults)"]


def test_a_call_hands_on_one_overview_of_its_batches_holding_copies_of_its_examples():
    """A batch's overview holds views of its decoded images (the whole batch kept alive);
    a handler's call merges its batches' overviews into one whose examples are uint8 copies,
    so that Beam gets one small overview per call, not a batch of images per batch."""

    class Maps:
        def explain(self, images, units):
            return [RecordMaps(np.array([int(image.mean()) % 3]), np.array([image.mean()],
                                                                            np.float32),
                               np.full((3, 3, 1), image.mean(), np.float32),
                               np.array([image.mean() / 100], np.float32), {})
                    for image in np.asarray(images)]

    spec = RecordSpec(image_size=(4, 4), channels=3, num_units=5, image_shape=(4, 4, 3))
    values = [12.4, 3.6, 40.5, 7.2, 25.0, 18.8, 33.3]  # decoded as float32: copied rounded
    serialized = [raw_record(i, value) for i, value in enumerate(values)]
    handler = make_handler(spec, method="gradients", batch_size=2, overview=True)
    results = handler.run_inference([serialized[:4], serialized[4:]], Maps())

    outcomes = [o for r in results for o in r.outcomes]
    carried = [i for i, o in enumerate(outcomes)
               if isinstance(o, Encoded) and o.overview is not None]
    assert carried == [6]  # one for the call, on the last record that carried one
    kept = outcomes[6].overview
    # The same as the four batches' overviews merged as Beam's combiner merges them.
    checked = [check_record(record, spec) for record in serialized]
    merged = Overview([], {})
    for result in handler.explain_checked(checked, Maps()):
        if isinstance(result.inference, Encoded) and result.inference.overview is not None:
            merged.merge(result.inference.overview)
    assert kept.records == merged.records == 7
    assert kept.unit_counts == merged.unit_counts
    for unit, total in merged.sums.items():
        np.testing.assert_allclose(kept.sums[unit], total, rtol=1e-12)
    for key in ("probability", "logit"):
        np.testing.assert_array_equal(kept.samples[key].values, merged.samples[key].values)
        for mine, theirs in zip(kept.examples[key], merged.examples[key]):
            assert [e.id for e in mine] == [e.id for e in theirs]
            for example in mine:
                assert example.image.dtype == np.uint8 and example.image.base is None
                value = values[int(example.id[1:])]
                np.testing.assert_array_equal(example.image,
                                              np.full((4, 4, 3), round(value), np.uint8))
