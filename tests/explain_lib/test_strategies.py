"""SpRAy (explain_lib.strategies): the reduction against a numpy reference, the eigengap on
a hand-built spectrum, and three planted strategies recovered with the right k, purity 1 and
the same clusters for new maps."""

import numpy as np
import pytest

from explain_lib import strategies


def blob_maps(n_per, rng, size=24, places=((4, 4), (4, 18), (18, 11)), noise=0.05):
    """Maps of 3 known strategies: a Gaussian blob at one of `places`, plus noise."""
    yy, xx = np.mgrid[:size, :size]
    maps, truth = [], []
    for label, (cy, cx) in enumerate(places):
        for _ in range(n_per):
            jy, jx = rng.normal(0, 0.7, 2)
            blob = np.exp(-((yy - cy - jy) ** 2 + (xx - cx - jx) ** 2) / (2 * 2.0 ** 2))
            maps.append(blob + noise * rng.uniform(size=(size, size)))
            truth.append(label)
    return np.stack(maps)[..., None], np.array(truth)


def test_reduce_maps_matches_a_block_mean_reference():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 64, 64, 2)).astype(np.float32)
    reduced = strategies.reduce_maps(maps, size=16)
    reference = np.abs(maps.sum(-1)).reshape(3, 16, 4, 16, 4).mean(axis=(2, 4)).reshape(3, -1)
    reference /= reference.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(reduced, reference, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(reduced.sum(axis=1), 1.0, rtol=1e-5)


def test_reduce_maps_fractional_sizes_keep_mass_and_zero_maps():
    maps = np.zeros((2, 7, 7), np.float32)
    maps[0, 3, 3] = 5.0                       # one pixel: its mass spread over overlapping cells
    reduced = strategies.reduce_maps(maps, size=4).reshape(2, 4, 4)
    assert reduced[0].sum() == pytest.approx(1.0, rel=1e-6)
    # Pixel 3 of 7 spans [3, 4) of 7 units; output cells span 1.75 each: cells 1 and 2.
    np.testing.assert_allclose(reduced[0][np.ix_([1, 2], [1, 2])], 0.25, rtol=1e-5)
    assert not reduced[1].any()


def test_small_maps_repeated_up_are_the_area_weights_numbers_bit_for_bit():
    """Maps whose sides divide `size` are repeated up (divided and cast before the repeat):
    the same bytes as the area weights' product, normalised and cast afterwards, in float32
    and float16, for tiny and huge values, zero maps; non-finite maps take the product."""
    rng = np.random.default_rng(3)
    for shape, size in (((6, 8, 8, 2), 32), ((6, 4, 8), 16), ((4, 7, 7), 28), ((3, 1, 1), 8)):
        for scale in (1e-30, 1.0, 1e25):
            maps = (rng.normal(size=shape) * scale).astype(np.float32)
            maps[0] = 0.0
            flat = np.abs(maps.sum(-1) if maps.ndim == 4 else maps)
            for axis in (1, 2):  # the general path's area-weights product, by hand
                flat = np.moveaxis(np.tensordot(flat, strategies._area_weights(
                    flat.shape[axis], size), axes=([axis], [1])), -1, axis)
            flat = flat.reshape(len(maps), -1)
            sums = flat.sum(axis=1, keepdims=True)
            expected = np.divide(flat, sums, out=np.zeros_like(flat), where=sums > 0)
            for dtype in (np.float32, np.float16):
                got = strategies.reduce_maps(maps, size, dtype)
                assert got.dtype == dtype and got.shape == expected.shape
                assert got.tobytes() == expected.astype(dtype).tobytes(), (shape, scale, dtype)
    maps = rng.normal(size=(2, 8, 8)).astype(np.float32)
    maps[1, 3, 3] = np.inf
    with np.errstate(invalid="ignore"):
        reduced = strategies.reduce_maps(maps, 32)
    # The product's 0 * inf is NaN in every cell, a NaN sum divides nothing: zeros, as before.
    assert not reduced[1].any()
    assert reduced[0].tobytes() == strategies.reduce_maps(maps[:1], 32).tobytes()


def test_eigengap_on_a_hand_built_spectrum():
    assert strategies.eigengap([0.0, 0.0, 0.01, 0.6, 0.7, 0.8]) == 3
    assert strategies.eigengap([0.0, 0.5, 0.55, 0.6]) == 1
    assert strategies.eigengap([0.0, 0.0, 0.01, 0.6, 0.7], max_clusters=2) == 2


def test_knn_affinity_is_corelays_sparse_knn():
    points = np.array([[0.0], [1.0], [3.0], [7.0]], np.float32)
    affinity = strategies.knn_affinity(points, neighbors=1).toarray()
    # Nearest others: 0->1, 1->0, 2->1, 3->2; then (A + A.T) / 2.
    directed = np.zeros((4, 4))
    directed[[0, 1, 2, 3], [1, 0, 1, 2]] = 1
    np.testing.assert_allclose(affinity, (directed + directed.T) / 2)


def purity(labels, truth):
    return sum(np.bincount(truth[labels == c]).max() for c in np.unique(labels)) / len(labels)


@pytest.mark.slow
def test_three_planted_strategies_are_recovered_and_new_maps_assigned():
    rng = np.random.default_rng(1)
    maps, truth = blob_maps(60, rng)
    reduced = strategies.reduce_maps(maps, size=12)
    ids = [f"r{i}" for i in range(len(maps))]
    fitted = strategies.fit_strategies(reduced, ids, seed=0)
    assert fitted.k == 3
    assert purity(fitted.labels, truth) == 1.0
    assert sorted(fitted.sizes.tolist()) == [60, 60, 60]
    # The eigengap: 3 eigenvalues near 0 (three components of the kNN graph), then a jump.
    assert fitted.eigenvalues[2] < 1e-6 < 0.01 < fitted.eigenvalues[3]
    assert fitted.agreement == 1.0
    # Each cluster's mean map peaks at its blob's place (reduced 24 -> 12: halved).
    for c in range(3):
        members = truth[fitted.labels == c]
        cy, cx = ((4, 4), (4, 18), (18, 11))[members[0]]
        peak = np.unravel_index(fitted.mean_maps()[c].argmax(), (12, 12))
        assert abs(peak[0] - cy / 2) <= 1 and abs(peak[1] - cx / 2) <= 1
        # Prototypes are members, the nearest to the centroid first.
        protos = [ids.index(i) for i in fitted.prototype_ids()[c]]
        assert all(fitted.labels[p] == c for p in protos)
        d = ((reduced[fitted.labels == c] - fitted.centroids[c]) ** 2).sum(1)
        assert ((reduced[protos[0]] - fitted.centroids[c]) ** 2).sum() == pytest.approx(d.min())
    # The spectral coordinates a plot lays out: of unit length, and each point's nearest
    # other point is of its own cluster.
    f = fitted.features
    assert f.shape == (180, 3)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-5)
    d = ((f[:, None] - f[None]) ** 2).sum(-1) + np.diag(np.full(len(f), np.inf))
    assert np.mean(fitted.labels[d.argmin(1)] == fitted.labels) == 1.0
    # New maps of the same strategies go to the cluster their strategy's sample went to.
    new, new_truth = blob_maps(20, np.random.default_rng(2))
    assigned = fitted.assign(strategies.reduce_maps(new, size=12))
    mapping = {t: fitted.labels[truth == t][0] for t in range(3)}
    np.testing.assert_array_equal(assigned, [mapping[t] for t in new_truth])


def test_given_k_and_tiny_samples():
    rng = np.random.default_rng(3)
    maps, truth = blob_maps(8, rng)
    fitted = strategies.fit_strategies(strategies.reduce_maps(maps, size=12), clusters=2,
                                       embedding_points=0)
    assert fitted.k == 2 and fitted.sizes.sum() == 24
    assert fitted.sizes[0] >= fitted.sizes[1]            # largest cluster first
    one = strategies.fit_strategies(strategies.reduce_maps(maps[:2], size=12))
    assert one.k == 1 and one.sizes.tolist() == [2]


def test_nearest_centroid_against_brute_force():
    rng = np.random.default_rng(4)
    points, centroids = rng.normal(size=(50, 6)), rng.normal(size=(4, 6))
    brute = np.argmin(((points[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(strategies.nearest_centroid(points, centroids), brute)


def test_plotted_maps_all_in_one_disconnected_component_do_not_crash_the_fit():
    """Two groups of maps with no neighbour in common (a disconnected kNN graph), the first
    `EMBEDDING_POINTS` all in one: their spectral rows are equal, and t-SNE's PCA start on
    points without spread crashed the process. The fit finds the two groups, and the
    plotted points' spectral coordinates are all one (the page's layout then puts them at
    the origin: tests/pipeline/test_strategies.py)."""
    rng = np.random.default_rng(0)
    maps = rng.uniform(size=(400, 8, 8)).astype(np.float32)
    maps[:200, :2, :2] += 3.0
    fitted = strategies.fit_strategies(strategies.reduce_maps(maps, 32))
    assert fitted.k == 2
    assert len(set(fitted.labels[:200])) == 1 and len(set(fitted.labels[200:])) == 1
    assert fitted.features.shape == (200, 2) and np.ptp(fitted.features, axis=0).max() == 0

