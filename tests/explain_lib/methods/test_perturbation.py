"""Perturbation methods on a model that reads one image region only."""

import keras
import numpy as np
import pytest

from explain_lib.engine.explaining import explain
from explain_lib.methods import perturbation
from tests.explain_lib.methods.models import region_model

ROWS, COLS = (6, 10), (4, 8)  # the region read by the model


@pytest.fixture(scope="module")
def model():
    return region_model(rows=ROWS, cols=COLS)


@pytest.fixture
def x():
    return np.random.default_rng(10).uniform(0.2, 1, (3, 16, 16, 1)).astype("float32")


@pytest.fixture
def units():
    return np.array([[0, 1], [1, 1], [0, 0]], "int32")


def window_origins(length, patch, stride):
    starts = list(range(0, length - patch + 1, stride))
    return starts if starts[-1] == length - patch else starts + [length - patch]


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def naive_occlusion(model, x, units, patch, stride, baseline, score="probability"):
    """One forward pass per window position, in numpy: the drop of the unit's probability
    (softmax of the logits) or of its logit."""
    def scores_of(inputs):
        logits = model.predict(inputs, verbose=0)
        return np.take_along_axis(softmax(logits) if score == "probability" else logits,
                                  units, 1)

    scores = scores_of(x)
    total = np.zeros(x.shape[:3] + (units.shape[1],), "float32")
    coverage = np.zeros(x.shape[1:3], "float32")
    for top in window_origins(x.shape[1], patch, stride):
        for left in window_origins(x.shape[2], patch, stride):
            occluded = x.copy()
            occluded[:, top:top + patch, left:left + patch] = baseline
            drop = scores - scores_of(occluded)
            total[:, top:top + patch, left:left + patch] += drop[:, None, None, :]
            coverage[top:top + patch, left:left + patch] += 1
    covered = np.broadcast_to(coverage[None, :, :, None] > 0, total.shape)
    return np.divide(total, coverage[None, :, :, None], out=np.zeros_like(total), where=covered)


@pytest.mark.parametrize("score", ["probability", "logit"])
@pytest.mark.slow
def test_occlusion_equals_a_per_window_reference(model, x, units, score):
    # 16 pixels, patches of 4 every 5: origins 0, 5, 10 and 12 (flush with the edge); rows
    # and columns 4 and 9 are covered by no window.
    logits, maps = explain(perturbation.occlusion, model, x, units, verbose=0,
                           patch_size=4, stride=5, baseline=0.1, chunk_size=3, score=score)
    expected = naive_occlusion(model, x, units, 4, 5, 0.1, score)
    assert np.isfinite(maps).all()
    # Maps are differences of scores: the tolerance scales with the scores, not the maps.
    scale = np.abs(logits).max() if score == "logit" else 1.0
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6 * scale)
    np.testing.assert_allclose(logits, np.take_along_axis(model.predict(x, verbose=0), units, 1),
                               rtol=1e-5)


def test_occlusion_is_zero_beyond_the_read_region_and_the_windows_reach(model, x, units):
    patch, stride = 4, 2
    _, maps = explain(perturbation.occlusion, model, x, units, verbose=0,
                      patch_size=patch, stride=stride)
    # A pixel can be credited only through a window that overlaps the region.
    reach = np.zeros((16, 16), bool)
    for top in window_origins(16, patch, stride):
        for left in window_origins(16, patch, stride):
            if (top < ROWS[1] and top + patch > ROWS[0]
                    and left < COLS[1] and left + patch > COLS[0]):
                reach[top:top + patch, left:left + patch] = True
    assert (~reach).sum() > 100
    np.testing.assert_allclose(maps[:, ~reach], 0, atol=1e-6)
    region = maps[:, ROWS[0]:ROWS[1], COLS[0]:COLS[1]]
    assert np.abs(region).min() > 1e-4, "every pixel of the region matters"


def test_rise_is_at_the_mean_score_where_the_model_does_not_look():
    # f(x) = mean of the 4x4 region (rows and cols 4:8) of a 32x32 image of ones: the masked
    # score is the mean of the mask over the region, whose expectation is keep_probability.
    model = region_model(input_shape=(32, 32, 1), rows=(4, 8), cols=(4, 8), units=1)
    model.layers[-2].kernel.assign(np.full((16, 6), 1 / 16, "float32"))
    model.layers[-2].bias.assign(np.zeros(6, "float32"))
    model.layers[-1].kernel.assign(np.full((6, 1), 1 / 6, "float32"))
    model.layers[-1].bias.assign(np.zeros(1, "float32"))
    x = np.ones((2, 32, 32, 1), "float32")
    _, maps = explain(perturbation.rise, model, x, np.zeros((2, 1), "int32"), verbose=0,
                      masks=3000, cell_size=4, keep_probability=0.5, chunk_size=256,
                      score="logit")
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-5)  # the masks are shared
    far = maps[0, 16:, 16:, 0]  # two cells and more away from the region
    near = maps[0, 4:8, 4:8, 0]
    assert np.abs(far - 0.5).max() < 0.05, far
    assert near.min() > 0.6, near


def test_rise_does_not_depend_on_the_chunk_size(model, x, units):
    params = {"masks": 40, "cell_size": 4, "seed": 3}
    _, whole = explain(perturbation.rise, model, x, units, verbose=0, chunk_size=40, **params)
    _, chunked = explain(perturbation.rise, model, x, units, verbose=0, chunk_size=7, **params)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    _, reseeded = explain(perturbation.rise, model, x, units, verbose=0, chunk_size=40,
                          **{**params, "seed": 4})
    assert np.abs(reseeded - whole).max() > 1e-3


def test_occlusion_rejects_windows_larger_than_the_image(model, x):
    with pytest.raises(ValueError, match="patch"):
        perturbation.occlusion(model, x, None, patch_size=32)


@pytest.mark.parametrize("name, params", [
    ("occlusion", {"patch_size": 4, "stride": 3}),
    ("rise", {"masks": 30, "cell_size": 4}),
])
@pytest.mark.slow
def test_probability_scores_are_the_logit_scores_of_the_model_with_a_softmax(model, x, units,
                                                                             name, params):
    # The published methods score a masked input by the unit's probability: on the logits
    # model that must equal scoring by the output of the same model ending in a softmax,
    # explained on that output as it is (scores="output"; by default, on its logits).
    method = getattr(perturbation, name)
    with_softmax = keras.Sequential([model, keras.layers.Softmax()])
    _, maps = explain(method, model, x, units, verbose=0, **params)
    _, expected = explain(method, with_softmax, x, units, verbose=0, score="logit",
                          scores="output", **params)
    _, by_default = explain(method, with_softmax, x, units, verbose=0, **params)
    np.testing.assert_allclose(by_default, maps, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)
    _, by_logit = explain(method, model, x, units, verbose=0, score="logit", **params)
    assert np.abs(by_logit - maps).max() > 0.1 * np.abs(maps).max()


def test_one_unit_models_are_scored_by_the_sigmoid(x):
    model = region_model(rows=ROWS, cols=COLS, units=1)
    units = np.zeros((len(x), 1), "int32")
    with_sigmoid = keras.Sequential([model, keras.layers.Activation("sigmoid")])
    _, maps = explain(perturbation.occlusion, model, x, units, verbose=0, patch_size=4,
                      stride=2)
    _, expected = explain(perturbation.occlusion, with_sigmoid, x, units, verbose=0,
                          patch_size=4, stride=2, score="logit", scores="output")
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)
    assert np.abs(maps).max() > 1e-4


def test_an_unknown_score_is_refused(model, x):
    with pytest.raises(ValueError, match="score must be one of probability, logit, not 'prob'"):
        perturbation.rise(model, x, None, score="prob")


@pytest.mark.parametrize("size", [32, 64, 224])
@pytest.mark.slow
def test_size_like_defaults_follow_the_image(size):
    """RISE's cells (a 7x7 grid: 32 pixels at 224) and occlusion's window (16 pixels sliding
    by 8 at 224) keep their proportion to the image: on a model that reads one region, the
    maps are not constant at 32, 64 or 224 (RISE's 32-pixel cells made one cell of a 32x32
    image, whose masks are all on or all off: a constant map)."""
    region = (size // 4, size // 2)
    model = region_model(input_shape=(size, size, 1), rows=region, cols=region, units=2)
    x = np.random.default_rng(size).uniform(0.5, 1, (2, size, size, 1)).astype("float32")
    units = np.zeros((2, 1), "int32")
    _, rise_maps = explain(perturbation.rise, model, x, units, verbose=0, masks=48,
                           chunk_size=16)
    window = max(1, round(16 * size / 224))
    stride = max(1, round(8 * size / 224))
    _, occluded = explain(perturbation.occlusion, model, x, units, verbose=0, chunk_size=256)
    _, expected = explain(perturbation.occlusion, model, x, units, verbose=0, chunk_size=256,
                          patch_size=window, stride=stride)
    np.testing.assert_array_equal(occluded, expected)
    for maps in (rise_maps, occluded):
        spread = maps.max(axis=(1, 2)) - maps.min(axis=(1, 2))
        assert np.all(spread > 1e-3 * np.abs(maps).max()), spread
    # Occlusion's drops sit on the region the model reads.
    inside = occluded[:, region[0]:region[1], region[0]:region[1]]
    assert np.abs(inside).mean() > 10 * np.abs(occluded[:, -window:, -window:]).mean()
