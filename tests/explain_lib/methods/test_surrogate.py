"""LIME and KernelSHAP on superpixels (`explain_lib.methods.surrogate`): exact Shapley values
of an additive model, LIME's fit against numpy's least squares on the same samples, the
segmentations, the seeds."""

import numpy as np
import pytest

from explain_lib.engine.explaining import explain
from explain_lib.methods import surrogate
from tests.conftest import tiny_cnn
from tests.explain_lib.methods.models import linear_model


def blocks(count=3, size=12, seed=0):
    """Images made of flat 4x4 blocks, which a segmentation can find."""
    rng = np.random.default_rng(seed)
    cells = rng.uniform(0, 1, (count, size // 4, size // 4, 3)).astype("float32")
    return np.repeat(np.repeat(cells, 4, axis=1), 4, axis=2)


@pytest.mark.slow
def test_kernel_shap_of_an_additive_model_is_each_segments_contribution():
    model, kernel = linear_model()  # f(x) = W·x + b: additive over any segmentation
    x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    units = np.array([[1], [3]])
    _, maps = explain(surrogate.kernel_shap, model, x, units, verbose=0, segmentation="grid",
                      grid_size=4, n_samples=200, chunk_size=64, baseline=0.25, score="logit")
    labels = surrogate.grid_segments(8, 8, 4)
    for b, unit in enumerate(units[:, 0]):
        contribution = np.sum((x[b] - 0.25) * kernel[..., unit], axis=-1)  # per pixel
        per_segment = np.bincount(labels.ravel(), contribution.ravel())
        np.testing.assert_allclose(maps[b, ..., 0], per_segment[labels], rtol=1e-3,
                                   atol=1e-4 * np.abs(per_segment).max())


@pytest.mark.slow
def test_lime_is_the_weighted_ridge_fit_of_numpy_on_the_same_samples():
    model = tiny_cnn(seed=2)
    x = np.random.default_rng(4).uniform(0, 1, (2, 12, 12, 3)).astype("float32")
    n, seed, width, ridge = 40, 3, 0.25, 1.0
    units = np.array([0, 4])
    _, maps = explain(surrogate.lime, model, x, units, verbose=0, segmentation="grid",
                      grid_size=3, n_samples=n, chunk_size=16, seed=seed,
                      score="logit")  # (this model's probabilities are saturated)
    labels = surrogate.grid_segments(12, 12, 3)
    z = surrogate.lime_coalitions(seed, 0, n, 9).numpy()
    assert z[0].all() and 0.3 < z[1:].mean() < 0.7
    for b, unit in enumerate(units):
        means = np.stack([x[b][labels == s].mean(0) for s in range(9)])
        shown = z[:, labels][..., None]  # (n, H, W, 1)
        perturbed = x[b][None] * shown + means[labels][None] * (1 - shown)
        logits = model(perturbed).numpy()
        y = logits[:, unit]
        cosine = np.where(z.sum(1) > 0, z.sum(1) / np.sqrt(z.sum(1) * 9), 0)
        w = np.sqrt(np.exp(-((1 - cosine) ** 2) / width ** 2))
        design = np.concatenate([np.ones((n, 1)), z], 1)
        # Ridge with an unpenalised intercept, as weighted least squares on stacked rows.
        rows = np.concatenate([design * np.sqrt(w)[:, None],
                               np.sqrt(ridge) * np.eye(10)[1:]])
        target = np.concatenate([y * np.sqrt(w), np.zeros(9)])
        beta = np.linalg.lstsq(rows, target, rcond=None)[0]
        np.testing.assert_allclose(maps[b, ..., 0], beta[1:][labels], rtol=2e-3,
                                   atol=1e-3 * np.abs(beta[1:]).max())


@pytest.mark.slow
def test_given_segmentations_reach_the_method_and_scikit_image_runs_in_the_step():
    model = tiny_cnn(seed=1)
    x = blocks(2)
    # Hidden segments set to 0: the blocks' mean colour would be the blocks themselves.
    params = {"verbose": 0, "n_samples": 30, "chunk_size": 16, "seed": 2, "baseline": 0.0}
    grid = explain(surrogate.kernel_shap, model, x, [0, 1], segmentation="grid", grid_size=3,
                   **params)[1]
    given = surrogate.grid_segments(12, 12, 3) * 7 + 5  # any integers: renumbered
    same = explain(surrogate.kernel_shap, model, x, [0, 1], segmentation=given, **params)[1]
    assert np.abs(grid).max() > 1e-3
    np.testing.assert_allclose(same, grid, rtol=1e-5, atol=1e-6 * np.abs(grid).max())
    # One segmentation per image (B, H, W): two halves for the first, four quarters for the
    # second; each map is constant on its image's segments.
    halves = np.repeat(np.arange(2), 6)[:, None] * np.ones((1, 12), int)
    quarters = (np.arange(12)[:, None] // 6) * 2 + np.arange(12)[None] // 6
    per_image = np.stack([halves, quarters])
    maps = surrogate.kernel_shap(model, x, np.array([[0], [1]]), segmentation=per_image,
                                 n_samples=30, chunk_size=16, baseline=0.0)[1].numpy()[..., 0]
    assert len(np.unique(maps[0])) <= 2 and len(np.unique(np.round(maps[1], 6))) == 4
    # scikit-image's segmentations, run inside the compiled step: the labels it finds.
    for name in ("quickshift", "slic"):
        labels, count = surrogate.segments_of(x, name, grid_size=3)
        expected = surrogate._scikit_segments(x, name, 3, 1.0)  # the kernel at 12x12
        np.testing.assert_array_equal(labels.numpy(), expected)
        assert expected.max() + 1 == int(count)
        assert int(count) > 2  # several of the 9 blocks
        maps = explain(surrogate.lime, model, x, [0, 1], segmentation=name, grid_size=3,
                       **params)[1][..., 0]
        for b in range(2):  # constant on each segment
            for s in np.unique(expected[b]):
                assert np.ptp(maps[b][expected[b] == s]) < 1e-6
    with pytest.raises(ValueError, match="Unknown segmentation 'felzenszwalb'"):
        explain(surrogate.lime, model, x, [0, 1], segmentation="felzenszwalb", **params)
    with pytest.raises(ValueError, match="must be integers of shape"):
        explain(surrogate.lime, model, x, [0, 1], segmentation=np.zeros((5, 5), int), **params)


@pytest.mark.slow
@pytest.mark.parametrize("method", [surrogate.lime, surrogate.kernel_shap])
def test_seeds_make_the_maps_reproducible_and_chunks_leave_them_as_they_are(method):
    model = tiny_cnn(seed=1)
    x = np.random.default_rng(5).uniform(0, 1, (3, 12, 12, 3)).astype("float32")
    run = lambda **kw: explain(method, model, x, [0, 1, 2], verbose=0,  # noqa: E731
                               segmentation="grid", grid_size=3, n_samples=30, **kw)[1]
    first = run(seed=1, chunk_size=7)
    np.testing.assert_allclose(run(seed=1, chunk_size=30), first, rtol=1e-4,
                               atol=1e-6 * np.abs(first).max())
    np.testing.assert_array_equal(run(seed=1, chunk_size=7), first)
    assert np.abs(run(seed=2, chunk_size=7) - first).max() > 1e-3 * np.abs(first).max()
