"""RecordsHandler and Worker: batching options, per-record attribution of explain
failures, top-K units, grouping by unit count, method / preprocessing resolution, and
model files on any Beam filesystem."""

import os
import tempfile
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import explain_lib
from explain_lib import io as explain_io
from explain_lib import methods
from explain_lib.engine import explaining
from pipeline import demo
from pipeline.io import reading
from pipeline.io.dead_letters import StageError
from pipeline.settings import Settings, resolve_method_params
from pipeline.worker import handler as handler_module
from pipeline.worker.decoding import decode_record
from pipeline.worker.encoding import PARALLEL_ENCODING_VALUES
from pipeline.worker.explaining import RecordMaps, Worker, resolve_preprocess
from pipeline.worker.handler import RecordsHandler
from pipeline.worker.models import load_keras_model, shared_model
from pipeline.worker.parsing import CheckedRecord, RecordSpec, check_record
from tests import zoo
from tests.pipeline.conftest import expected_explanations, make_handler, raw_record

SPEC = RecordSpec(image_size=(4, 4), channels=3, num_units=5, image_shape=(4, 4, 3))


def _record(i, value=1.0, units=None):
    """A checked record whose image is a raw 4x4x3 tensor of `value`."""
    pixels = np.full((4, 4, 3), value, np.float32)
    return CheckedRecord(f"r{i}", units, b"rec%d" % i, "raw", pixels)


class FailingExplainer:
    """Explains anything except images holding the value 13 (a whole batch holding one
    fails, like a real step would); images holding 7 come back with NaN maps."""

    def __init__(self):
        self.calls = []

    def explain(self, images, units):
        self.calls.append(len(images))
        if np.any(images == 13):
            raise RuntimeError("step failed")
        return [
            RecordMaps(np.array([0]), np.array([image.mean()], np.float32),
                        np.full((4, 4, 1), np.nan if image.mean() == 7 else image.mean(),
                                np.float32))
            for image in images
        ]


def test_a_failing_batch_is_retried_record_by_record():
    handler = make_handler(SPEC, batch_size=8)
    batch = [_record(0, 1.0), _record(1, 13.0), _record(2, 2.0), _record(3, 7.0), _record(4, 13.0)]
    explainer = FailingExplainer()
    results = list(handler.explain_checked(batch, explainer))

    assert [r.example.id for r in results] == ["r0", "r1", "r2", "r3", "r4"]
    assert explainer.calls == [5, 1, 1, 1, 1, 1]  # the batch, then each record alone
    good = {r.example.id: explain_io.decode_explanation(r.inference) for r in results
            if isinstance(r.inference, bytes)}
    assert sorted(good) == ["r0", "r2"]
    assert good["r2"]["logits"][0] == 2.0 and good["r2"]["id"] == "r2"
    failures = {r.example.id: r.inference for r in results if isinstance(r.inference, StageError)}
    assert sorted(failures) == ["r1", "r3", "r4"]
    assert all(f.stage == "explain" for f in failures.values())
    assert "step failed" in str(failures["r1"]) and failures["r1"].record_id == "r1"
    assert "non-finite maps" in str(failures["r3"])


class NonFiniteExplainer:
    """Explains each record's units (one or two of them), with NaN logits for images
    holding 5 and infinite maps for images holding 6."""

    def explain(self, images, units):
        return [
            RecordMaps(np.asarray(u), np.full(len(u), np.nan if image.mean() == 5 else 1.0,
                                               np.float32),
                        np.full((4, 4, len(u)), np.inf if image.mean() == 6 else 0.5,
                                np.float32))
            for image, u in zip(images, units)
        ]


@pytest.mark.parametrize("unit_counts", [[1, 1, 1, 1], [1, 2, 1, 2]])
def test_non_finite_logits_or_maps_fail_only_their_records(unit_counts):
    """Checked for the batch at once when its explanations share a shape, one by one when
    they explain different numbers of units: the same records fail either way."""
    handler = make_handler(SPEC, batch_size=8)
    values = [1.0, 5.0, 6.0, 2.0]
    batch = [_record(i, value, np.arange(k)) for i, (value, k)
             in enumerate(zip(values, unit_counts))]
    results = list(handler.explain_checked(batch, NonFiniteExplainer()))
    assert [r.example.id for r in results] == ["r0", "r1", "r2", "r3"]
    assert [isinstance(r.inference, bytes) for r in results] == [True, False, False, True]
    assert "non-finite logits" in str(results[1].inference)
    assert "non-finite maps" in str(results[2].inference)
    assert all(r.inference.stage == "explain" for r in results[1:3])
    np.testing.assert_array_equal(
        explain_io.decode_explanation(results[3].inference)["units"], np.arange(unit_counts[3]))


def test_a_good_batch_is_explained_in_one_call_and_encoded():
    handler = make_handler(SPEC, map_encoding="raw32", batch_size=3)
    explainer = FailingExplainer()
    results = list(handler.explain_checked([_record(i, 1.0 + i) for i in range(3)], explainer))
    assert explainer.calls == [3]
    decoded = [explain_io.decode_explanation(r.inference) for r in results]
    assert [float(d["logits"][0]) for d in decoded] == [1.0, 2.0, 3.0]
    np.testing.assert_array_equal(decoded[1]["maps"], np.full((4, 4, 1), 2.0, np.float32))
    assert tuple(decoded[0]["input_size"]) == (4, 4)


def test_an_undecodable_image_fails_alone_at_decode(shapes):
    spec = RecordSpec(image_size=(32, 32), channels=3, num_units=4)
    images = shapes[0][:3]
    good = [check_record(demo.make_example(demo.encode_image(image, "jpeg"), None, f"j{i}"), spec)
            for i, image in enumerate(images)]
    broken = good[1]._replace(payload=good[1].payload[:40])  # a JPEG cut after its header

    class Recording:
        calls = []

        def explain(self, images, units):
            self.calls.append(images.copy())
            return [RecordMaps(np.array([0]), np.array([1.0], np.float32),
                                np.ones((32, 32, 1), np.float32)) for _ in images]

    explainer = Recording()
    results = make_handler(spec, batch_size=3).explain_checked(
        [good[0], broken, good[2]], explainer)
    assert len(explainer.calls) == 1  # the two good images, in one call, decoded exactly
    np.testing.assert_array_equal(explainer.calls[0], np.stack(
        [decode_record(good[i], spec).image.astype(np.float32) for i in (0, 2)]))
    assert isinstance(results[0].inference, bytes) and isinstance(results[2].inference, bytes)
    error = results[1].inference
    assert error.stage == "decode" and error.record_id == "j1"
    assert "cannot decode jpeg image" in str(error)


def test_a_decoded_batch_reaches_the_explainer_as_the_decodings_own_tensor(shapes,
                                                                          monkeypatch):
    """The usual batch (one format, decoded whole) is explained as the tensor the compiled
    decoding made, which the engine takes as it is: no copy of its pixels on the host."""
    spec = RecordSpec(image_size=(32, 32), channels=3, num_units=4)
    records = [check_record(demo.make_example(demo.encode_image(image, "png"), None, f"p{i}"),
                            spec) for i, image in enumerate(shapes[0][:3])]
    made = []

    def decode_batch(batch, batch_spec):
        made.append(real(batch, batch_spec)[0])
        return made[-1], [None] * len(batch)

    real = handler_module.decode_batch
    monkeypatch.setattr(handler_module, "decode_batch", decode_batch)

    class Recording:
        calls = []

        def explain(self, images, units):
            self.calls.append(images)
            return [RecordMaps(np.array([0]), np.array([1.0], np.float32),
                               np.ones((32, 32, 1), np.float32)) for _ in range(len(images))]

    make_handler(spec, batch_size=3).explain_checked(records, Recording())
    (explained,) = Recording.calls
    assert isinstance(made[0], tf.Tensor) and isinstance(explained, tf.Tensor)
    assert tf.convert_to_tensor(explained) is explained  # what Worker.explain does with it
    # The same pixels in the same memory (a slice of a tensor along its first axis is
    # another tensor over the same buffer).
    assert np.asarray(explained).ctypes.data == np.asarray(made[0]).ctypes.data
    np.testing.assert_array_equal(explained, shapes[0][:3])  # PNG: exact uint8 pixels


@pytest.mark.parametrize("family, method", [("MobileNetV2", "gradcam"),
                                            ("hub:ViT", "gradients"),
                                            ("hub:ViT", "integrated_gradients"),
                                            ("hub:ResNet", "gradcam")])
def test_a_users_model_explains_the_decodings_tensor_as_it_did_its_numpy_copy(
        tmp_path, shapes, family, method):
    """The models users have (`tests/zoo.py`: keras.applications' MobileNetV2, KerasHub's
    ViT and ResNet classifiers) with their softmax heads, saved compiled and loaded as the
    job loads them (compile=True): the decoding's own tensor and a numpy copy of it give the
    same units, logits, probabilities and maps."""
    model = zoo.build(family, head="softmax")
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    path = str(tmp_path / "model.keras")
    model.save(path)
    size = zoo.input_size(family)
    spec = RecordSpec(image_size=(size, size), channels=3, num_units=zoo.UNITS)
    pictures = shapes[0][:4]
    assert pictures.shape[1:3] == (size, size)
    records = [check_record(demo.make_example(demo.encode_image(image, "jpeg"), None, f"j{i}"),
                            spec) for i, image in enumerate(pictures)]
    images, errors = handler_module.decode_batch(records, spec)
    assert errors == [None] * 4 and isinstance(images, tf.Tensor)
    worker = Worker.load(Settings(model=path, method=method))
    from_tensor = worker.explain(images, [None] * 4)
    from_copy = worker.explain(np.array(images), [None] * 4)
    for mine, theirs in zip(from_tensor, from_copy):
        np.testing.assert_array_equal(mine.units, theirs.units)
        for name in ("logits", "probabilities", "maps"):
            expected = getattr(theirs, name)
            np.testing.assert_allclose(getattr(mine, name), expected, rtol=1e-6,
                                       atol=1e-6 * float(np.max(np.abs(expected))))


def test_large_maps_are_encoded_on_threads_as_they_would_be_one_by_one():
    rng = np.random.default_rng(0)
    made = []

    class Noisy:
        def explain(self, images, units):
            made.extend(RecordMaps(np.array([1, 3]), np.array([0.5, 0.1], np.float32),
                                    rng.normal(size=(128, 128, 2)).astype(np.float32))
                        for _ in images)
            return made[-len(images):]

    assert 128 * 128 * 2 >= PARALLEL_ENCODING_VALUES  # the threads' path
    handler = make_handler(SPEC, batch_size=6)
    results = handler.explain_checked([_record(i) for i in range(6)], Noisy())
    for result, explanation in zip(results, made):
        alone = explain_io.encode_explanation(result.example.id, explanation.units,
                                              explanation.logits, explanation.maps, "png8",
                                              input_size=(4, 4))
        assert result.inference == alone


def test_a_record_that_cannot_be_stored_fails_alone_and_the_batch_is_still_encoded():
    made = []

    class Large:
        def explain(self, images, units):
            made.extend(RecordMaps(np.array([i]), np.array([0.5], np.float32),
                                    np.full((3, 3, 1), 7e4 if i == 2 else float(i), np.float32))
                        for i in range(len(images)))
            return made

    handler = make_handler(SPEC, map_encoding="float16", batch_size=4)
    results = handler.explain_checked([_record(i) for i in range(4)], Large())
    error = results[2].inference
    assert error.stage == "encode" and error.record_id == results[2].example.id
    assert "float16 holds values up to 65504" in str(error)
    for i in (0, 1, 3):  # the others, as they would be alone
        assert results[i].inference == explain_io.encode_explanation(
            results[i].example.id, made[i].units, made[i].logits, made[i].maps, "float16",
            input_size=(4, 4))


def test_handler_batches_exactly_batch_size_and_reports_record_bytes():
    handler = make_handler(SPEC, batch_size=16, handler_options={"model_copies": 1})
    # A call takes whole batches, at least the batches in flight (2 by default) and at
    # least RECORDS_PER_LIST records, in one RunInference batch counted in records, the
    # elements being lists of records.
    assert reading.RECORDS_PER_LIST == 512
    assert handler.records_per_call == 512
    assert handler.batch_elements_kwargs() == {"min_batch_size": 512, "max_batch_size": 512,
                                               "element_size_fn": len}
    assert make_handler(SPEC, batch_size=16, batches_in_flight=1).records_per_call == 512
    assert make_handler(SPEC, batch_size=100).records_per_call == 600  # 6 whole batches
    wide = make_handler(SPEC, batch_size=128, batches_in_flight=5)
    assert wide.records_per_call == 640
    assert wide.batch_elements_kwargs()["max_batch_size"] == 640
    with pytest.raises(ValueError, match="batches_in_flight"):
        make_handler(SPEC, batch_size=16, batches_in_flight=0)
    assert handler.share_model_across_processes() and handler.model_copies() == 1
    assert handler.get_num_bytes([[b"rec0", b"rec1"], [b"record2"]]) == 4 + 4 + 7
    assert handler.get_metrics_namespace() == "explain_pipeline"


def _summary(outcome):
    """An outcome as a comparable value: the bytes, or a StageError's stage, message, id."""
    return ((outcome.stage, str(outcome), outcome.record_id)
            if isinstance(outcome, StageError) else outcome)


def test_run_inference_parses_lists_of_records_and_keeps_each_list_whole():
    handler = make_handler(SPEC, map_encoding="raw32", batch_size=2)
    lists = [[raw_record(0, 1.0), b"not an Example", raw_record(1, 13.0)], [],
             [raw_record(2, 2.0), raw_record(3, 7.0), raw_record(4, 3.0)]]
    results = handler.run_inference(lists, FailingExplainer())

    assert [r.records for r in results] == lists  # one result per list, each whole
    assert [r.ids for r in results] == [["r0", "r1"], [], ["r2", "r3", "r4"]]
    outcomes = [o for r in results for o in r.outcomes]
    parse = outcomes[1]
    assert isinstance(parse, StageError) and parse.stage == "parse" and parse.record_id == ""
    # The records that passed the checks are explained as explain_checked explains them:
    # 13 fails its batch alone, 7's NaN maps fail at explain; the others are kept.
    checked = [check_record(r, SPEC) for records in lists for r in records if r[:1] != b"n"]
    expected = [r.inference for r in handler.explain_checked(checked, FailingExplainer())]
    summary = _summary
    assert [summary(o) for i, o in enumerate(outcomes) if i != 1] == list(map(summary, expected))
    assert [summary(o) if isinstance(o, StageError) else type(o) for o in outcomes] == [
        bytes, summary(parse), ("explain", "RuntimeError: step failed", "r1"), bytes,
        ("explain", "the method returned non-finite maps for units [0]", "r3"), bytes]


def test_a_list_longer_than_a_call_runs_batches_in_flight_at_a_time(monkeypatch):
    handler = make_handler(SPEC, map_encoding="raw32", batch_size=2, batches_in_flight=2)
    # A batch is in flight from the start of its decoding to the end of its encoding.
    running, most = [0], [0]
    lock = threading.Lock()
    decode, finish = handler._decode, handler._explain_and_encode

    def decoding(batch):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        return decode(batch)

    def finishing(*args):
        try:
            time.sleep(0.2)  # the batches in flight overlap here
            return finish(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(handler, "_decode", decoding)
    monkeypatch.setattr(handler, "_explain_and_encode", finishing)
    records = [_record(i, 1.0 + i) for i in range(9)]  # five batches
    results = handler.explain_checked(records, FailingExplainer())
    assert most[0] == 2  # never more than batches_in_flight at once
    assert running[0] == 0
    assert [r.example.id for r in results] == [f"r{i}" for i in range(9)]
    alone = make_handler(SPEC, map_encoding="raw32", batch_size=2, batches_in_flight=1)
    assert [_summary(r.inference) for r in results] == [
        _summary(r.inference) for r in alone.explain_checked(records, FailingExplainer())]
    assert _summary(results[6].inference)[0] == "explain"  # the NaN maps of 7


class OverlapExplainer:
    """Explains batches, checking that no two are explained at once; its first batch waits
    (at most 60 s) until another batch has been decoded meanwhile (`decoded` is set by the
    test's spy on the handler's decoding)."""

    def __init__(self):
        self.calls, self.most_at_once, self._at_once = [], 0, 0
        self.decoded = threading.Event()
        self._lock = threading.Lock()

    def explain(self, images, units):
        with self._lock:
            self._at_once += 1
            self.most_at_once = max(self.most_at_once, self._at_once)
            first = not self.calls
            self.calls.append(len(images))
        try:
            if first and not self.decoded.wait(60):
                raise RuntimeError("no other batch was decoded while this one was explained")
            return [RecordMaps(np.array([0]), np.array([image.mean()], np.float32),
                                np.full((4, 4, 1), image.mean(), np.float32))
                    for image in images]
        finally:
            with self._lock:
                self._at_once -= 1


def _spy_on_decoding(monkeypatch, explainer):
    """Sets `explainer.decoded` once the handler has decoded a second batch."""
    decoded = []

    def decode_batch(records, spec):
        result = real(records, spec)
        decoded.append(len(records))
        if len(decoded) >= 2:
            explainer.decoded.set()
        return result

    real = handler_module.decode_batch
    monkeypatch.setattr(handler_module, "decode_batch", decode_batch)
    return decoded


def test_batches_in_flight_overlap_decoding_with_explaining_and_come_back_in_order(monkeypatch):
    records = [_record(i, 1.0 + i) for i in range(6)]
    one_at_a_time = make_handler(SPEC, batch_size=3, batches_in_flight=1)
    alone = [one_at_a_time.explain_checked(records[i:i + 3], FailingExplainer()) for i in (0, 3)]

    handler = make_handler(SPEC, batch_size=3, batches_in_flight=2)
    explainer = OverlapExplainer()
    decoded = _spy_on_decoding(monkeypatch, explainer)
    results = handler.explain_checked(records, explainer)
    # Two batches of batch_size: one decoded while the other was explained (else the first
    # explaining would have failed), never two explained at once.
    assert decoded == [3, 3] and explainer.calls == [3, 3] and explainer.most_at_once == 1
    assert [r.example.id for r in results] == [f"r{i}" for i in range(6)]
    assert all(isinstance(r.inference, bytes) for r in results)
    assert [r.inference for r in results] == [r.inference for part in alone for r in part]
    # A bundle's last, shorter call: its batches are in flight together too.
    explainer = OverlapExplainer()
    _spy_on_decoding(monkeypatch, explainer)
    results = handler.explain_checked(records[:4], explainer)
    assert sorted(explainer.calls) == [1, 3] and explainer.most_at_once == 1
    assert all(isinstance(r.inference, bytes) for r in results)


@pytest.mark.slow
def test_explainer_top_k_and_mixed_unit_counts(model_path, model, shapes):
    images = shapes[0][:5].astype(np.float32)
    explainer = Worker.load(Settings(model=model_path, top_k=2, map_size="input"))
    given = [None, np.array([3]), None, np.array([1, 0, 2]), np.array([2])]
    results = explainer.explain(images, given)

    scores = model.predict(images, verbose=0)
    top2 = np.argsort(-scores, axis=1, kind="stable")[:, :2]
    assert [r.units.tolist() for r in results] == [
        top2[0].tolist(), [3], top2[2].tolist(), [1, 0, 2], [2]]
    for i, (image, result) in enumerate(zip(images, results)):
        assert result.maps.shape == (32, 32, len(result.units))
        logits, maps = expected_explanations(model, image[None], result.units[None],
                                             map_size="input")
        np.testing.assert_allclose(result.logits, logits[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.maps, maps[0], rtol=1e-4, atol=1e-6)
        # The explained scores are the model's own scores for those units.
        np.testing.assert_allclose(result.logits, scores[i, result.units], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("preprocess", ["unit", "resnet50"])  # resnet50: BGR, means ("caffe")
def test_pixels_reach_the_engine_as_uint8_and_are_preprocessed_in_its_step(
        model_path, model, shapes, preprocess):
    images, labels = shapes
    pixels = images[:6]
    assert pixels.dtype == np.uint8  # as decode_batch gives PNG or JPEG images at size
    units = [np.array([u]) for u in labels[:6]]
    worker = Worker.load(Settings(model=model_path, preprocess=preprocess,
                                  metrics=("deletion",),
                                  metric_params={"deletion": {"n_steps": 4}}))
    steps = explaining._compiled_steps
    before = set(steps.get(worker.explained_model, {}))
    results = worker.explain(pixels, units)
    made = set(steps[worker.explained_model]) - before
    assert {key[4] for key in made} == {tf.uint8}  # the pixels crossed to the step as uint8
    # What the worker computed before: the preprocessing in numpy on float32 pixels.
    if preprocess == "unit":
        host = pixels.astype(np.float32) / np.float32(255.0)
    else:
        host = keras.applications.resnet50.preprocess_input(pixels.astype(np.float32))
    logits, maps = expected_explanations(model, host, np.stack(units))
    deletion = explain_lib.evaluate("deletion", model, host, np.stack(units), maps,
                                    n_steps=4, verbose=0)
    for i, result in enumerate(results):
        # Within float32 rounding: the step divides by 255 as a product with the reciprocal
        # (Grappler's constant folding), numpy exactly: a few pixels differ by one ulp.
        np.testing.assert_allclose(result.logits, logits[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.maps, maps[i], rtol=1e-5,
                                   atol=1e-6 * np.abs(maps).max())
        np.testing.assert_allclose(result.metrics["deletion"], deletion[i], rtol=1e-5,
                                   atol=1e-6)


def test_resolution_of_names():
    gradcam = methods.get("gradcam")
    assert gradcam.exposed and gradcam.function is explain_lib.methods.cams.gradcam
    gradients = methods.get("gradients")
    assert not gradients.exposed
    with pytest.raises(ValueError, match="Unknown explaining method 'gradcan'.*gradcam"):
        methods.get("gradcan")

    from explain_lib import filters

    params = resolve_method_params('{"postprocessing": "positive_normalize", "resizing": [8, 8]}')
    assert params == {"postprocessing": filters.positive_normalize, "resizing": (8, 8)}
    with pytest.raises(ValueError, match="Unknown filter 'blur'; known: normalize"):
        resolve_method_params({"postprocessing": "blur"})

    # TF ops, run in the engine's compiled step; the same function on every call (one step).
    x = tf.constant([[0.0, 127.5, 255.0]], tf.float32)
    assert resolve_preprocess("none") is None
    np.testing.assert_allclose(resolve_preprocess("unit")(x), [[0, 0.5, 1]])
    np.testing.assert_allclose(resolve_preprocess("symmetric")(x), [[-1, 0, 1]])
    np.testing.assert_allclose(resolve_preprocess("resnet_v2")(x), [[-1, 0, 1]])  # "tf" mode
    assert resolve_preprocess("resnet_v2") is resolve_preprocess("resnet_v2")
    with pytest.raises(ValueError, match="Unknown preprocessing 'resnet51'.*resnet_v2"):
        resolve_preprocess("resnet51")


def test_models_are_copied_from_any_beam_filesystem(model_path, model, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # to see the copy cleaned up
    loaded = load_keras_model("testfs://" + model_path)
    for mine, theirs in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    assert os.listdir(tmp_path) == []
    with pytest.raises(Exception, match="no-such.keras"):
        load_keras_model("testfs:///no-such.keras")


def test_jit_compile_explains_under_xla_with_the_same_maps(model_path, shapes):
    images, labels = shapes
    units = [np.array([u]) for u in labels[:6]]
    plain = Worker.load(Settings(model=model_path))
    xla = Worker.load(Settings(model=model_path, jit_compile=True))
    assert explaining._uses_xla(xla.explained_model)
    # The flag is on a model of the worker's own, not on the model the process shares.
    assert not explaining._uses_xla(plain.explained_model)
    assert not explaining._uses_xla(shared_model(model_path))
    expected = plain.explain(images[:6].astype(np.float32), units)
    got = xla.explain(images[:6].astype(np.float32), units)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g.logits, e.logits, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(g.maps, e.maps, rtol=1e-3, atol=1e-5 * np.abs(e.maps).max())


@pytest.mark.slow
def test_the_launcher_and_in_process_workers_load_the_model_once(tmp_path, model_path, shapes,
                                                                  monkeypatch):
    from tests.pipeline.conftest import run_job, write

    copy = str(tmp_path / "copy.keras")  # a file no earlier test loaded
    with open(model_path, "rb") as source, open(copy, "wb") as target:
        target.write(source.read())
    loads = []
    original = load_keras_model
    monkeypatch.setattr("pipeline.worker.models.load_keras_model",
                        lambda path: loads.append(path) or original(path))
    made = []  # (input dtype, units, selecting) of each compiled explain step built
    make_step = explaining._make_step
    monkeypatch.setattr(explaining, "_make_step", lambda *args: made.append(
        (args[4].dtype.name, *args[5:7])) or make_step(*args))
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(image, "png"), int(label), f"o{i}")
               for i, (image, label) in enumerate(zip(images[:4], labels[:4]))]
    path = write(tmp_path, "once", records)
    job = run_job(tmp_path, path, copy, "--units_key", "label")
    assert job.summary.explained == 4
    assert loads == [copy]  # the launcher's load, shared by the DirectRunner worker
    # The step the launcher traced to check the method is the one the worker ran: uint8
    # pixels, one given unit (the label) per record; without --units_key, each record's top
    # unit.
    assert made == [("uint8", 1, False)]
    assert run_job(tmp_path, path, copy).summary.explained == 4
    assert made == [("uint8", 1, False), ("uint8", 1, True)]
    # The same file is not loaded again; a changed one is.
    before = shared_model(copy)
    assert loads == [copy]
    os.utime(copy, ns=(0, 0))
    assert shared_model(copy) is not before
    assert loads == [copy, copy]


@pytest.mark.slow
def test_a_job_hands_the_handler_lists_of_records_per_call(tmp_path, model_path, shapes,
                                                            monkeypatch):
    from tests.pipeline.conftest import run_job, write

    calls = []  # the sizes of the lists of each run_inference call
    original = RecordsHandler.run_inference
    monkeypatch.setattr(RecordsHandler, "run_inference",
                        lambda self, batch, model, args=None: calls.append(
                            [len(records) for records in batch]) or original(self, batch, model))
    monkeypatch.setattr(reading, "RECORDS_PER_LIST", 10)  # calls of 3 batches of 4
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(images[i % 12], "png"), int(labels[i % 12]),
                                 f"l{i}") for i in range(20)]
    records[5] = b"not an Example"
    paths = [write(tmp_path, "lists-0", records[:12]), write(tmp_path, "lists-1", records[12:])]
    job = run_job(tmp_path, str(tmp_path / "lists-*"), model_path, "--batch_size", "4",
                  "--batches_in_flight", "2")
    assert len(paths) == 2 and job.summary.read == 20 and job.summary.explained == 19
    # Each call takes one list of records_per_call = 12 records (whole batches of 4, at
    # least the 2 in flight and at least RECORDS_PER_LIST), the reader's; only the last
    # list of a file's bundle may hold fewer.
    assert all(len(sizes) == 1 and sizes[0] <= 12 for sizes in calls), calls
    assert sum(s for sizes in calls for s in sizes) == 20
    assert max(sizes[0] for sizes in calls) == 12, calls
    assert sum(sizes[0] < 12 for sizes in calls) <= 2, calls
