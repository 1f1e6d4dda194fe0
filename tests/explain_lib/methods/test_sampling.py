"""GradientSHAP and Sobol attribution (`explain_lib.methods.sampling`) against independent
references: completeness in expectation, Jansen's estimator in numpy and known Sobol indices."""

import numpy as np
import pytest
import tensorflow as tf

from explain_lib.engine.explaining import explain
from explain_lib.methods import sampling
from tests.explain_lib.methods.models import linear_model, region_model, smooth_model


@pytest.mark.slow
def test_gradient_shap_on_a_linear_model_is_exact_per_baseline():
    model, kernel = linear_model()
    x = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 3)).astype("float32")
    baseline = np.random.default_rng(1).uniform(0, 1, (8, 8, 3)).astype("float32")
    units = np.array([[0], [2], [3]])
    _, maps = explain(sampling.gradient_shap, model, x, units, verbose=0, baselines=baseline,
                      n_samples=6, chunk_size=4)
    # One baseline: every sample's attribution is W ⊙ (x − x'), whatever α.
    expected = np.einsum("bhwck,bk->bhw", (x - baseline)[..., None] * kernel[None],
                         np.eye(4)[units[:, 0]])
    np.testing.assert_allclose(maps[..., 0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_gradient_shap_sums_to_the_expected_difference_within_sampling_error():
    """Completeness in expectation: Σ maps ≈ f(x) − E_{x'}[f(x')], the error shrinking as
    1/√n: the tolerance is 5 standard errors of the per-sample sums, measured here."""
    model = smooth_model()
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (2, 10, 10, 3)).astype("float32")
    background = rng.uniform(0, 1, (4, 10, 10, 3)).astype("float32")
    n = 256
    logits, maps = explain(sampling.gradient_shap, model, x, [[1], [1]], verbose=0,
                           baselines=background, n_samples=n, chunk_size=64, seed=3)
    f_x = model(x).numpy()[:, 1]
    f_base = model(background).numpy()[:, 1]
    np.testing.assert_allclose(logits[:, 0], f_x, rtol=1e-5)
    # The per-sample sums, by an independent computation: (x − x') · ∇f(x' + α(x − x')).
    sums = []
    for _ in range(64):
        j, alpha = rng.integers(4), rng.uniform()
        point = tf.constant(background[j] + alpha * (x - background[j]))
        with tf.GradientTape() as tape:
            tape.watch(point)
            score = tf.reduce_sum(model(point)[:, 1])
        sums.append(np.sum(tape.gradient(score, point).numpy() * (x - background[j]),
                           axis=(1, 2, 3)))
    spread = np.std(sums, axis=0)
    assert np.all(spread > 1e-3)  # the check below is not vacuous
    expected = f_x - f_base.mean()
    np.testing.assert_array_less(np.abs(maps.sum(axis=(1, 2, 3)) - expected),
                                 5 * spread / np.sqrt(n))


@pytest.mark.slow
def test_gradient_shap_is_reproducible_by_its_seed_and_its_noise_is_captums():
    model, kernel = linear_model()
    x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    run = lambda **kw: explain(sampling.gradient_shap, model, x, [0, 1], verbose=0,  # noqa
                               n_samples=8, chunk_size=3, **kw)[1]
    np.testing.assert_array_equal(run(seed=4, baselines="uniform"),
                                  run(seed=4, baselines="uniform"))
    assert np.abs(run(seed=4, baselines="uniform") - run(seed=5, baselines="uniform")).max() > 0
    # Captum's stdevs: noise on the input, so a linear model's map is W ⊙ (x + mean ε − x').
    noisy = run(stdevs=0.1, baselines=0.0)
    clean = run(baselines=0.0)
    assert 0 < np.abs(noisy - clean).max() < 0.1 * 8 * np.abs(kernel).max() * 3
    with pytest.raises(ValueError, match="Unknown baselines 'gauss'"):
        run(baselines="gauss")


def jansen_numpy(outputs, n, d):
    """Jansen's estimator as the authors' code writes it (a loop over dimensions)."""
    a = outputs[:n]
    c = [outputs[2 * n + n * i: 2 * n + n * (i + 1)] for i in range(d)]
    var = np.sum((a - a.mean()) ** 2) / (n - 1)
    return np.array([np.sum((a - c[i]) ** 2) / (2 * n * var) for i in range(d)])


def test_the_design_is_the_references_replicated_design():
    design = sampling.sobol_design(3, 8)
    ab = tf.math.sobol_sample(6, 8).numpy()
    np.testing.assert_allclose(design[:8], ab[:, :3])
    np.testing.assert_allclose(design[8:16], ab[:, 3:])
    for i in range(3):
        c = ab[:, :3].copy()
        c[:, i] = ab[:, 3 + i]
        np.testing.assert_allclose(design[16 + 8 * i: 24 + 8 * i], c)
    shifted = sampling.sobol_design(3, 8, seed=1)
    assert shifted.shape == design.shape and np.abs(shifted - design).max() > 0.01
    assert shifted.min() >= 0 and shifted.max() < 1


@pytest.mark.parametrize("function, expected", [
    (lambda m: 3 * m[:, 0] + m[:, 1] + 0 * m[:, 2], [0.9, 0.1, 0.0]),    # additive: c_i²/Σc²
    (lambda m: m[:, 0] * m[:, 1], [4 / 7, 4 / 7, 0.0]),                  # an interaction
])
def test_jansen_estimator_matches_numpy_and_known_total_indices(function, expected):
    n, d = 1024, 3
    design = sampling.sobol_design(d, n, seed=2).astype("float64")
    outputs = function(design)
    ours = sampling.jansen_total_order(tf.constant(outputs[None]), n, d).numpy()[0]
    np.testing.assert_allclose(ours, jansen_numpy(outputs, n, d), rtol=1e-9)
    np.testing.assert_allclose(ours, expected, atol=0.03)


@pytest.mark.slow
def test_sobol_of_a_model_reading_one_cell_concentrates_there():
    # 16x16 images, a 4x4 grid of 4-pixel cells; the model reads cell (1, 2) only.
    model = region_model(rows=(4, 8), cols=(8, 12), seed=1)
    x = np.random.default_rng(3).uniform(0.2, 1, (2, 16, 16, 1)).astype("float32")
    _, maps = explain(sampling.sobol, model, x, [0, 1], verbose=0, grid_size=4, n_designs=16,
                      chunk_size=50, score="logit")
    for m in maps[..., 0]:
        inside = m[4:8, 8:12]
        assert inside.min() > 0.5 * m.max()
        # Cells two cells away from it: total index 0, up to the bicubic resizing's ringing.
        far = np.concatenate([m[12:, :].ravel(), m[:, :4].ravel()])
        assert np.abs(far).max() < 0.05 * m.max()
