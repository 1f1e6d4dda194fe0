"""Deletion, insertion and MuFidelity: equal to step-by-step numpy loops, and the known
answers of a linear model (the true contributions are the best order, the inverted map the
worst, and they predict every subset's drop exactly)."""

import numpy as np
import pytest
import tensorflow as tf

import explain_lib
from explain_lib import utils
from explain_lib.metrics import fidelity
from tests.conftest import tiny_cnn
from tests.explain_lib.methods.models import linear_model
from tests.explain_lib.metrics import references


@pytest.fixture(scope="module")
def model():
    return tiny_cnn(seed=7)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(3).uniform(0, 1, (3, 12, 12, 3)).astype("float32")


@pytest.fixture(scope="module")
def units():
    return np.array([[0, 3], [4, 1], [2, 2]], "int32")


@pytest.fixture(scope="module")
def maps(x):
    maps = np.random.default_rng(4).uniform(0, 1, (3, 12, 12, 2)).astype("float32")
    maps[1, ..., 0] = 0.5          # a constant map: every pixel tied, removed row by row
    maps[2, :6, :, 1] = 1.0        # ties among half the pixels
    return maps


# --- deletion and insertion against the official algorithm, step by step --------------------


@pytest.mark.parametrize("name, baseline, score", [
    ("deletion", 0.3, "probability"),
    ("insertion", "blur", "probability"),
    ("deletion", "blur", "logit"),
])
@pytest.mark.slow
def test_deletion_and_insertion_equal_a_per_step_loop(model, x, units, maps, name, baseline,
                                                      score):
    # 7 steps over 144 pixels (not a divisor): 21 pixels per step, rounded up.
    got = explain_lib.evaluate(name, model, x, units, maps, n_steps=7, baseline=baseline,
                               blur_sigma=1.5, score=score, chunk_size=3, verbose=0)
    expected = np.zeros_like(got)
    for i in range(len(x)):
        substrate = (references.blur(x[i], 1.5) if baseline == "blur"
                     else np.full_like(x[i], baseline))
        start, finish = (x[i], substrate) if name == "deletion" else (substrate, x[i])
        for k in range(units.shape[1]):
            expected[i, k] = references.causal_auc(model, x[i], units[i, k], maps[i, ..., k],
                                                   start, finish, 7, score)
    scale = 1.0 if score == "probability" else np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * scale)


def test_the_area_counts_the_start_and_the_trapezoid_rule(model, x, units, maps):
    # One step: the curve is the intact input and the fully removed one, area their mean.
    got = explain_lib.evaluate("deletion", model, x, units, maps, n_steps=1, baseline=0.0,
                               verbose=0)
    probabilities = references.softmax(model.predict(x, verbose=0))
    removed = references.softmax(model.predict(np.zeros_like(x), verbose=0))
    expected = (np.take_along_axis(probabilities, units, 1)
                + np.take_along_axis(removed, units, 1)) / 2
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_maps_of_another_resolution_are_resized_bilinearly_first(model, x, units):
    coarse = np.random.default_rng(5).uniform(0, 1, (3, 4, 4, 2)).astype("float32")
    resized = utils.resize(tf.constant(coarse), (12, 12)).numpy()
    for name in ("deletion", "mufidelity"):  # insertion orders pixels as deletion does
        params = {"n_samples": 10} if name == "mufidelity" else {"n_steps": 6}
        got = explain_lib.evaluate(name, model, x, units, coarse, verbose=0, **params)
        expected = explain_lib.evaluate(name, model, x, units, resized, verbose=0, **params)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_ties_are_broken_the_same_way_whatever_the_batch_and_chunk(model, x, units, maps):
    whole = explain_lib.evaluate("deletion", model, x, units, maps, n_steps=5, verbose=0)
    one_by_one = explain_lib.evaluate("deletion", model, x, units, maps, n_steps=5,
                                      batch_size=1, chunk_size=1, verbose=0)
    np.testing.assert_allclose(one_by_one, whole, rtol=1e-5, atol=1e-7)
    ranks = fidelity.removal_ranks(tf.constant(maps)).numpy()
    # The constant map removes pixels in row-major order; tied pixels keep it.
    np.testing.assert_array_equal(ranks[1, 0], np.arange(144))
    tied = ranks[2, 1, :72]
    assert np.array_equal(tied, np.arange(72))


def test_the_pixel_counts_spread_evenly_and_match_the_official_step_when_it_divides():
    counts = fidelity.pixel_counts(tf.range(8), 7, 144).numpy()
    np.testing.assert_array_equal(counts, [0, 21, 42, 62, 83, 103, 124, 144])
    # The official 224 steps of 224 pixels on a 224x224 image.
    official = fidelity.pixel_counts(tf.range(225), 224, 224 * 224).numpy()
    np.testing.assert_array_equal(official, np.arange(225) * 224)


# --- a linear model: the true contributions are the best order -------------------------------


@pytest.fixture(scope="module")
def linear():
    model, kernel = linear_model(input_shape=(6, 6, 2), units=3, seed=2)
    x = np.random.default_rng(6).uniform(-1, 1, (2, 6, 6, 2)).astype("float32")
    units = np.array([[1], [2]], "int32")
    # Pixel p moves logit u by Σ_c W[p, c, u] x[p, c] when set to 0 (the baseline).
    contributions = np.stack([(kernel[..., u] * x[i]).sum(-1) for i, u in enumerate(units[:, 0])])
    return model, x, units, contributions[..., None]


def test_on_a_linear_model_the_true_contributions_are_the_best_order_and_inverted_the_worst(
        linear):
    model, x, units, truth = linear
    rng = np.random.default_rng(7)
    others = [rng.permutation(36).reshape(1, 6, 6, 1).repeat(2, 0).astype("float32")
              for _ in range(8)]
    params = dict(n_steps=12, baseline=0.0, score="logit", verbose=0)

    def auc(name, maps):
        return explain_lib.evaluate(name, model, x, units, maps, **params)[:, 0]

    for name, best_is_lowest in (("deletion", True), ("insertion", False)):
        sign = 1 if best_is_lowest else -1
        best, worst = sign * auc(name, truth), sign * auc(name, -truth)
        for other in others:
            score = sign * auc(name, other)
            # Strictly better than any random order, strictly worse for the inverted map.
            assert np.all(best < score - 1e-3) and np.all(worst > score + 1e-3), name
    # Input × Gradient recovers exactly these contributions on a linear model.
    _, raw = explain_lib.input_x_gradient(model, x, units, postprocessing=None, verbose=0)
    np.testing.assert_allclose(auc("deletion", raw), auc("deletion", truth), rtol=1e-5)


def test_on_a_linear_model_the_true_contributions_predict_every_subset(linear):
    model, x, units, truth = linear
    params = dict(grid_size=3, n_samples=24, baseline=0.0, score="logit", verbose=0)
    exact = explain_lib.evaluate("mufidelity", model, x, units, truth, **params)
    np.testing.assert_allclose(exact, 1.0, atol=1e-5)
    inverted = explain_lib.evaluate("mufidelity", model, x, units, -truth, **params)
    np.testing.assert_allclose(inverted, -1.0, atol=1e-5)
    pixelwise = explain_lib.evaluate("mufidelity", model, x, units, truth,
                                     **{**params, "grid_size": None, "correlation": "spearman"})
    np.testing.assert_allclose(pixelwise, 1.0, atol=1e-5)
    blind = np.ones_like(truth)  # every pixel alike: it predicts the subsets' sizes only
    assert np.all(explain_lib.evaluate("mufidelity", model, x, units, blind, **params) < 0.9)


# --- MuFidelity against a per-subset loop ------------------------------------------------------


def test_subsets_are_grid_cells_resized_by_nearest_neighbour_drawn_at_the_rate():
    @tf.function
    def masks_of(first, count, size, seed):
        return fidelity.subset_masks(tf.constant(first), count, (9, 9), size, 0.2, seed)

    cells = masks_of(0, 200, (9, 9), 5).numpy()
    assert set(np.unique(cells)) == {0.0, 1.0}
    assert abs(cells.mean() - 0.2) < 0.02  # 16,200 cells: the mean's spread is 0.003
    masks = masks_of(0, 200, (12, 12), 5).numpy()
    cell = np.floor((np.arange(12) + 0.5) * 9 / 12).astype(int)  # half-pixel nearest
    np.testing.assert_array_equal(masks, cells[:, cell][:, :, cell])
    later = masks_of(150, 50, (12, 12), 5).numpy()
    np.testing.assert_array_equal(later, masks[150:])  # mask s depends on s only
    assert not np.array_equal(masks_of(0, 200, (12, 12), 6).numpy(), masks)


@pytest.mark.parametrize("correlation, score, baseline", [
    ("pearson", "logit", 0.25),
    ("spearman", "probability", "blur"),
])
@pytest.mark.slow
def test_mufidelity_equals_a_per_subset_loop(model, x, units, maps, correlation, score,
                                             baseline):
    params = dict(grid_size=4, subset_percent=0.3, n_samples=15, baseline=baseline,
                  blur_sigma=1.5, score=score, correlation=correlation, seed=3, chunk_size=4)
    got = explain_lib.evaluate("mufidelity", model, x, units, maps, verbose=0, **params)
    removed = fidelity.subset_masks(tf.constant(0), 15, (4, 4), (12, 12), 0.3, 3).numpy()
    expected = np.zeros_like(got)
    for i in range(len(x)):
        substrate = references.blur(x[i], 1.5) if baseline == "blur" else baseline
        for k in range(units.shape[1]):
            expected[i, k] = references.mufidelity(model, x[i], units[i, k], maps[i, ..., k],
                                                   removed, substrate, score, correlation)
    # Correlations of score drops: float32 rounding of the drops, relative to their spread.
    np.testing.assert_allclose(got, expected, atol=2e-4)
    assert np.abs(expected).max() > 0.1


def test_bad_values_are_refused_by_name(model, x, units, maps):
    cases = {
        "deletion": [({"n_steps": 0}, "n_steps=0"), ({"chunk_size": 0}, "chunk_size=0"),
                     ({"baseline": "noise"}, "Unknown baseline 'noise'"),
                     ({"score": "odds"}, "score must be one of"),
                     ({"baseline": "blur", "blur_sigma": 0}, "blur_sigma=0")],
        "mufidelity": [({"n_samples": 1}, "n_samples=1"),
                       ({"subset_percent": 1.0}, "subset_percent < 1, got 1.0"),
                       ({"grid_size": 0}, "grid_size >= 1"),
                       ({"correlation": "kendall"}, "correlation must be one of")],
    }
    for name, refused in cases.items():
        for params, message in refused:
            with pytest.raises(ValueError, match=message):
                explain_lib.evaluate(name, model, x, units, maps, verbose=0, **params)
