"""The models users bring (`tests/zoo.py`): one model per keras.applications family and per
KerasHub image classifier family, small, with random weights.

- Every family with its softmax head: the head is found through the graph and the scores
  explained are its logits before the softmax (log-probabilities up to a constant per
  image), the probabilities recorded are the model's own, and Grad-CAM (and, on the
  transformers whose attention can be reached, attention rollout) gives finite maps of the
  input's size.
- Every registered method on two families whose structure is the least like the demo's: a
  keras.applications MobileNetV3 (its scores follow a Flatten and an Activation) and a
  KerasHub ViT (tokens, a class-token head); the meta methods through the methods they
  wrap, the CAM variants on transformers in tests/explain_lib/test_transformers.py.
- Through the job: the models saved as `.keras` files and loaded by the job as Keras 3
  registers them (KerasHub's classes by their module), explained and read back.

Every method on every family, with both heads, is `benchmarks/zoo.py` (too slow here).
"""

import functools
import json

import keras
import numpy as np
import pytest

import explain_lib
from explain_lib import inspection, methods
from explain_lib import io as explain_io
from explain_lib.engine.explaining import explain
from pipeline import demo
from pipeline.job.launcher import run
from tests import zoo
from tests.explain_lib.methods.models import FAST_SETTINGS
from tests.pipeline.conftest import write

pytestmark = pytest.mark.slow

UNITS = np.array([[1], [3]], "int32")


def _images(family: str, count: int = 2) -> np.ndarray:
    side = zoo.input_size(family)
    return np.random.default_rng(0).uniform(0, 255, (count, side, side, 3)).astype("float32")


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_every_family_is_explained_on_the_scores_before_its_softmax(family):
    model = zoo.build(family, "softmax")
    x = _images(family)
    assert inspection.find_head(model).activation == "softmax"
    scores = inspection.scores_model(model)
    # Called, not `predict`ed: two traces of a large graph (DenseNet's: 2 s each) are not
    # what this test checks.
    probabilities = keras.ops.convert_to_numpy(model(x, training=False))
    logits = keras.ops.convert_to_numpy(scores(x, training=False))
    # The scores are the logits whose softmax is the output.
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(exponentials / exponentials.sum(axis=1, keepdims=True),
                               probabilities, rtol=1e-4, atol=1e-6)
    names = ["gradcam"] + (["attention_rollout"] if family in zoo.TRANSFORMERS else [])
    for name in names:
        explained, maps, recorded = explain_lib.shortcuts.SHORTCUTS[name](
            model, x, UNITS, verbose=0, return_probabilities=True)
        assert maps.shape == (2, *x.shape[1:3], 1) and np.isfinite(maps).all()
        assert maps.max() > 0
        np.testing.assert_allclose(explained, np.take_along_axis(logits, UNITS, 1), rtol=1e-4,
                                   atol=1e-5 * max(1.0, np.abs(logits).max()))
        np.testing.assert_allclose(recorded, np.take_along_axis(probabilities, UNITS, 1),
                                   rtol=1e-4, atol=1e-6)


@functools.lru_cache(maxsize=None)
def _unusual(family: str) -> keras.Model:
    return zoo.build(family, "softmax")


UNUSUAL_CASES = [(family, name) for family in ("MobileNetV3", "hub:ViT")
                 for name, method in methods.REGISTRY.items()
                 if method.family != "meta"
                 and not (family == "hub:ViT" and method.family == "cams")]
"""Every method on both families but the meta methods (SmoothGrad and its variants call the
method they wrap, which is here) and the CAM variants on ViT (each on ViT, DeiT and Swin in
tests/explain_lib/test_transformers.py)."""


@pytest.mark.parametrize("family, name", UNUSUAL_CASES)
def test_every_method_explains_unusual_families(family, name):
    model = _unusual(family)
    method = methods.get(name)
    x = _images(family)
    params = {"verbose": 0, **FAST_SETTINGS.get(name, {})}
    if method.attention and family not in zoo.TRANSFORMERS:
        with pytest.raises(ValueError, match="attention_rollout reads a transformer's"):
            explain_lib.shortcuts.SHORTCUTS[name](model, x, UNITS, **params)
        return
    if method.family == "rules" and family == "hub:ViT":  # GELUs, no ReLU to reroute
        with pytest.raises(ValueError, match="has no ReLU"):
            explain_lib.shortcuts.SHORTCUTS[name](model, x, UNITS, **params)
        return
    if name == "cam":  # CAM's head is global average pooling + Dense: neither has one
        refusal = ("head reads its class token" if family == "hub:ViT" else
                   "head of global average pooling then Dense only; this model's head has "
                   "'conv_2' \\(Conv2D\\)")
        with pytest.raises(ValueError, match=refusal):
            explain_lib.shortcuts.SHORTCUTS[name](model, x, UNITS, **params)
        return
    logits, maps = explain_lib.shortcuts.SHORTCUTS[name](model, x, UNITS, **params)
    assert maps.shape == (2, *x.shape[1:3], 1) and np.isfinite(maps).all(), name
    assert logits.shape == (2, 1) and np.isfinite(logits).all()


@pytest.mark.parametrize("family, method, params", [
    ("MobileNetV3", "gradcam", {}),
    ("hub:ViT", "gradcam", {}),
    ("hub:ViT", "attention_rollout", {"head_fusion": "max"}),
    ("hub:SwinTransformer", "layercam", {}),
])
def test_the_job_loads_and_explains_the_families(tmp_path, family, method, params):
    """The model saved as users save it and loaded by the job (KerasHub's classes come back
    by the module the file names): the job's maps are `explain`'s."""
    model = zoo.build(family, "softmax")
    path = str(tmp_path / "model.keras")
    keras.saving.save_model(model, path)
    images = np.random.default_rng(1).integers(0, 256, (3, *_images(family).shape[1:]),
                                               dtype=np.uint8)
    records = [demo.make_example(demo.encode_image(image, "png"), int(unit), f"z{i}")
               for i, (image, unit) in enumerate(zip(images, [1, 3, 4]))]
    output = str(tmp_path / "out" / "expl")
    summary = run(["--input", write(tmp_path, "in", records), "--output", output, "--model",
                   path, "--method", method, "--units_key", "label", "--map_encoding", "raw32",
                   "--method_params", json.dumps({**params, "postprocessing": None})])
    assert (summary.read, summary.explained) == (3, 3)
    rows = {row["id"]: row for row in explain_io.iterate_decoded(output + "-*",
                                                                 explain_io.decode_explanation)}
    logits, maps = explain(methods.get(method).function, model, images.astype("float32"),
                           [1, 3, 4], verbose=0, postprocessing=None, resizing=False, **params)
    probabilities = model.predict(images.astype("float32"), verbose=0)
    for i, unit in enumerate([1, 3, 4]):
        row = rows[f"z{i}"]
        np.testing.assert_allclose(row["logits"], logits[i], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(row["maps"], maps[i], rtol=1e-4,
                                   atol=1e-5 * np.abs(maps).max())
        np.testing.assert_allclose(row["probabilities"], [probabilities[i, unit]], rtol=1e-4,
                                   atol=1e-7)
