"""Filters: exact values on hand-made maps, per sample and per unit."""

import numpy as np
import pytest

from explain_lib import filters

# Two samples, 2x2 spatial, two units; unit 1 is the negation of unit 0.
MAPS = np.array(
    [
        [[[-2.0, 2.0], [0.0, 0.0]], [[2.0, -2.0], [6.0, -6.0]]],
        [[[1.0, -1.0], [1.0, -1.0]], [[1.0, -1.0], [1.0, -1.0]]],  # constant maps
    ],
    dtype="float32",
)


def test_normalize_maps_each_sample_and_unit_into_unit_interval():
    out = filters.normalize(MAPS).numpy()
    np.testing.assert_allclose(out[0, ..., 0], [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(out[0, ..., 1], [[1.0, 0.75], [0.5, 0.0]])
    np.testing.assert_array_equal(out[1], np.zeros((2, 2, 2)))  # constant -> 0, not NaN


def test_positive_and_negative_keep_their_part_as_magnitudes():
    np.testing.assert_array_equal(filters.positive(MAPS).numpy(), np.maximum(MAPS, 0))
    np.testing.assert_array_equal(filters.negative(MAPS).numpy(), np.maximum(-MAPS, 0))
    assert filters.negative(MAPS).numpy().min() >= 0


def test_normalized_variants():
    pos = filters.positive_normalize(MAPS).numpy()
    neg = filters.negative_normalize(MAPS).numpy()
    mag = filters.absolute_normalize(MAPS).numpy()
    np.testing.assert_allclose(pos[0, ..., 0], [[0.0, 0.0], [1 / 3, 1.0]])
    np.testing.assert_allclose(neg[0, ..., 0], [[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(mag[0, ..., 0], [[1 / 3, 0.0], [1 / 3, 1.0]])
    assert not np.allclose(pos, neg)
    # The negative part of a map is the positive part of its negation.
    np.testing.assert_allclose(neg[..., 0], pos[..., 1])


@pytest.mark.parametrize("axis", [(1, 2), (-3, -2)])
def test_axis_selects_the_spatial_axes(axis):
    np.testing.assert_allclose(filters.normalize(MAPS, axis=axis), filters.normalize(MAPS))
    # Normalising over (H, W, K) instead mixes the two units of a sample.
    mixed = filters.normalize(MAPS, axis=(1, 2, 3)).numpy()
    assert not np.allclose(mixed, filters.normalize(MAPS).numpy())


def test_filters_are_found_by_name():
    assert filters.get("positive_normalize") is filters.positive_normalize
    assert set(filters.FILTERS) == {"normalize", "positive", "negative", "positive_normalize",
                                    "negative_normalize", "absolute_normalize"}
    with pytest.raises(ValueError, match="Unknown filter 'blur'; known: normalize, positive"):
        filters.get("blur")
