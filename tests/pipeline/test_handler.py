"""ExplainModelHandler and Explainer: batching options, per-record attribution of explain
failures, top-K units, grouping by unit count, method / preprocessing resolution, and
model files on any Beam filesystem."""

import os
import tempfile

import numpy as np
import pytest

import explain_lib

from pipeline.explainer import (
    Explainer,
    Explanation,
    load_keras_model,
    resolve_method,
    resolve_method_params,
    resolve_preprocess,
)
from pipeline.handler import ExplainModelHandler
from pipeline.records import ImageRecord, StageError

from tests.pipeline.conftest import expected_explanations


def _record(i, value=1.0, units=None):
    return ImageRecord(f"r{i}", np.full((4, 4, 3), value, np.float32), units, b"rec%d" % i)


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
            Explanation(np.array([0]), np.array([image.mean()], np.float32),
                        np.full((4, 4, 1), np.nan if image.mean() == 7 else image.mean(),
                                np.float32))
            for image in images
        ]


def test_a_failing_batch_is_retried_record_by_record():
    handler = ExplainModelHandler("unused.keras", "gradcam", batch_size=8)
    batch = [_record(0, 1.0), _record(1, 13.0), _record(2, 2.0), _record(3, 7.0), _record(4, 13.0)]
    explainer = FailingExplainer()
    results = list(handler.run_inference(batch, explainer))

    assert [r.example.id for r in results] == ["r0", "r1", "r2", "r3", "r4"]
    assert explainer.calls == [5, 1, 1, 1, 1, 1]  # the batch, then each record alone
    good = {r.example.id: r.inference for r in results if isinstance(r.inference, Explanation)}
    assert sorted(good) == ["r0", "r2"]
    assert good["r2"].logits[0] == 2.0
    failures = {r.example.id: r.inference for r in results if isinstance(r.inference, StageError)}
    assert sorted(failures) == ["r1", "r3", "r4"]
    assert all(f.stage == "explain" for f in failures.values())
    assert "step failed" in str(failures["r1"]) and failures["r1"].record_id == "r1"
    assert "non-finite maps" in str(failures["r3"])


def test_a_good_batch_is_explained_in_one_call():
    handler = ExplainModelHandler("unused.keras", batch_size=3)
    explainer = FailingExplainer()
    results = list(handler.run_inference([_record(i, 1.0 + i) for i in range(3)], explainer))
    assert explainer.calls == [3]
    assert [float(r.inference.logits[0]) for r in results] == [1.0, 2.0, 3.0]


def test_handler_batches_exactly_batch_size_and_reports_image_bytes():
    handler = ExplainModelHandler("m.keras", batch_size=16, model_copies=1)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 16, "max_batch_size": 16}
    assert handler.share_model_across_processes() and handler.model_copies() == 1
    assert handler.get_num_bytes([_record(0), _record(1)]) == 2 * 4 * 4 * 3 * 4
    assert handler.get_metrics_namespace() == "explain_pipeline"


def test_explainer_top_k_and_mixed_unit_counts(model_path, model, shapes):
    images = shapes[0][:5].astype(np.float32)
    explainer = Explainer.load(model_path, "gradcam", top_k=2)
    given = [None, np.array([3]), None, np.array([1, 0, 2]), np.array([2])]
    results = explainer.explain(images, given)

    scores = model.predict(images, verbose=0)
    top2 = np.argsort(-scores, axis=1, kind="stable")[:, :2]
    assert [r.units.tolist() for r in results] == [
        top2[0].tolist(), [3], top2[2].tolist(), [1, 0, 2], [2]]
    for i, (image, result) in enumerate(zip(images, results)):
        assert result.maps.shape == (32, 32, len(result.units))
        logits, maps = expected_explanations(model, image[None], result.units[None])
        np.testing.assert_allclose(result.logits, logits[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.maps, maps[0], rtol=1e-4, atol=1e-6)
        # The explained scores are the model's own scores for those units.
        np.testing.assert_allclose(result.logits, scores[i, result.units], rtol=1e-4, atol=1e-5)


def test_resolution_of_names():
    gradcam = resolve_method("gradcam")
    assert gradcam.exposed and gradcam.function is explain_lib.methods.cams.gradcam
    gradients = resolve_method("gradients")
    assert not gradients.exposed
    with pytest.raises(ValueError, match="Unknown explaining method 'gradcan'.*gradcam"):
        resolve_method("gradcan")

    from explain_lib import filters

    params = resolve_method_params('{"postprocessing": "positive_normalize", "resizing": [8, 8]}')
    assert params == {"postprocessing": filters.positive_normalize, "resizing": (8, 8)}
    with pytest.raises(ValueError, match="Unknown filter 'blur'; known: normalize"):
        resolve_method_params({"postprocessing": "blur"})

    x = np.array([[0.0, 127.5, 255.0]], np.float32)
    np.testing.assert_allclose(resolve_preprocess("none")(x), x)
    np.testing.assert_allclose(resolve_preprocess("unit")(x), [[0, 0.5, 1]])
    np.testing.assert_allclose(resolve_preprocess("symmetric")(x), [[-1, 0, 1]])
    np.testing.assert_allclose(resolve_preprocess("resnet_v2")(x), [[-1, 0, 1]])  # "tf" mode
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
