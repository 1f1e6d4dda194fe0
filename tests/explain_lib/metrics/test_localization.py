"""The pointing games against maps that peak inside or outside the boxes by construction;
boxes as TFDS gives them (ragged, padded with NaN or zero rows, masked) become masks."""

import numpy as np
import pytest
import tensorflow as tf

import explain_lib
from explain_lib import metrics
from explain_lib.metrics import localization

SIZE = 32


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).uniform(0, 1, (4, SIZE, SIZE, 3)).astype("float32")


def peaked(rows, cols, size=SIZE):
    """Maps (N, size, size, 1): a smooth bump peaking at each (row, col)."""
    grid_rows, grid_cols = np.mgrid[0:size, 0:size]
    return np.stack([np.exp(-((grid_rows - r) ** 2 + (grid_cols - c) ** 2) / 20.0)
                     for r, c in zip(rows, cols)])[..., None].astype("float32")


# A box over rows 8-15 and columns 4-11 of a 32x32 image, (ymin, xmin, ymax, xmax).
BOX = [8 / SIZE, 4 / SIZE, 16 / SIZE, 12 / SIZE]


def test_boxes_become_the_masks_of_the_pixels_whose_centre_they_hold():
    boxes = np.array([[BOX, [np.nan] * 4], [[0.5, 0.5, 1.0, 1.0], [0, 0, 0, 0]]], "float32")
    masks = metrics.boxes_to_masks(boxes, (SIZE, SIZE)).numpy()
    expected = np.zeros((2, SIZE, SIZE))
    expected[0, 8:16, 4:12] = 1
    expected[1, 16:, 16:] = 1  # the zero-area row (padded_batch's padding) holds nothing
    np.testing.assert_array_equal(masks, expected)
    # Several boxes count as their union; a reference written per pixel centre.
    rng = np.random.default_rng(1)
    corners = np.sort(rng.uniform(0, 1, (3, 4, 2, 2)), axis=2)  # (N, M, min/max, y/x)
    boxes = corners.transpose(0, 1, 3, 2).reshape(3, 4, 4)[..., [0, 2, 1, 3]]
    boxes = boxes.astype("float32")
    centres = (np.arange(SIZE) + 0.5) / SIZE
    reference = np.zeros((3, SIZE, SIZE), bool)
    for i, image_boxes in enumerate(boxes):
        for ymin, xmin, ymax, xmax in image_boxes:
            reference[i] |= (((centres >= ymin) & (centres <= ymax))[:, None]
                             & ((centres >= xmin) & (centres <= xmax))[None, :])
    np.testing.assert_array_equal(metrics.boxes_to_masks(boxes, (SIZE, SIZE)).numpy(),
                                  reference)


def test_ragged_boxes_are_padded_with_nan_rows_whatever_form_they_come_in():
    ragged = [np.array([BOX, [0.5, 0.5, 0.9, 0.9]]), np.zeros((0, 4)), [BOX]]
    padded = metrics.pad_boxes(ragged)
    assert padded.shape == (3, 2, 4) and np.isnan(padded[1]).all() and np.isnan(padded[2, 1]).all()
    np.testing.assert_array_equal(metrics.pad_boxes(tf.ragged.constant(
        [[list(b) for b in r] for r in ragged], ragged_rank=1, inner_shape=(4,))), padded)
    masked = np.ma.masked_array(np.nan_to_num(padded),
                                mask=np.isnan(padded).any(-1, keepdims=True).repeat(4, -1))
    np.testing.assert_array_equal(metrics.pad_boxes(masked), padded)
    with pytest.raises(ValueError, match=r"boxes of shape \(3, 4\)"):
        metrics.pad_boxes(np.zeros((3, 4)))


def test_a_map_peaking_inside_the_box_is_a_hit_and_outside_a_miss(x):
    boxes = [[BOX]] * 4
    # Inside; outside but within 15 pixels (row 15 + 10); far outside; tied maxima.
    maps = peaked([12, 25, 30, 0], [8, 8, 30, 0])
    maps[3] = 0.0
    maps[3, 31, 31, 0] = maps[3, 12, 8, 0] = 1.0  # two maxima: the first in row-major wins
    hits = explain_lib.evaluate("pointing_game", None, x, None, maps, boxes=boxes,
                                tolerance=15, verbose=0)
    np.testing.assert_array_equal(hits[:, 0], [1, 1, 0, 1])
    strict = explain_lib.evaluate("pointing_game", None, x, None, maps, boxes=boxes,
                                  tolerance=0, verbose=0)
    np.testing.assert_array_equal(strict[:, 0], [1, 0, 0, 1])
    # By default the paper's 15 pixels at 224 keep their proportion: 15 * 32 / 224 = 2.1
    # pixels at 32, so a peak 2 pixels below the box hits and one 3 pixels below misses.
    below = peaked([17, 18], [8, 8])
    default = explain_lib.evaluate("pointing_game", None, x[:2], None, below, boxes=boxes[:2],
                                   verbose=0)
    np.testing.assert_array_equal(default[:, 0], [1, 0])
    # The official disc is closed: 10 pixels below the box, hit at tolerance 10, not 9.
    assert explain_lib.evaluate("pointing_game", None, x[1:2], None, maps[1:2], boxes=boxes[:1],
                                tolerance=10, verbose=0)[0, 0] == 1
    assert explain_lib.evaluate("pointing_game", None, x[1:2], None, maps[1:2], boxes=boxes[:1],
                                tolerance=9, verbose=0)[0, 0] == 0


def test_masks_serve_as_ground_truth_and_an_image_without_any_is_not_evaluated(x):
    maps = peaked([12, 12, 12, 12], [8, 8, 8, 8])
    masks = np.zeros((4, SIZE, SIZE), bool)
    masks[0, 12, 8] = True            # a single pixel under the peak
    masks[1, 28:, 28:] = True         # far from it (25 pixels)
    masks[3, 8:16, 4:12] = True
    hits = explain_lib.evaluate("pointing_game", None, x, None, maps, masks=masks, verbose=0)
    assert hits[0, 0] == 1 and hits[1, 0] == 0 and np.isnan(hits[2, 0]) and hits[3, 0] == 1
    shares = explain_lib.evaluate("energy_pointing_game", None, x, None, maps, masks=masks,
                                  verbose=0)
    assert np.isnan(shares[2, 0]) and 0 < shares[1, 0] < shares[0, 0] < shares[3, 0] < 1


def test_the_energy_is_the_maps_share_inside_the_boxes(x):
    boxes = [[BOX], [BOX, [0.5, 0.5, 1.0, 1.0]], [BOX], [BOX]]
    maps = np.zeros((4, SIZE, SIZE, 2), "float32")
    maps[0, ..., 0] = 1.0                       # uniform: the box's share of the image
    maps[1, ..., 0] = 1.0                       # two boxes: their union's share
    maps[2, 8:16, 4:12, 0] = 3.0                # all inside
    maps[3, 0:4, 20:30, 0] = 1.0                # all outside
    rng = np.random.default_rng(2)
    maps[..., 1] = rng.uniform(0, 1, (4, SIZE, SIZE))
    shares = explain_lib.evaluate("energy_pointing_game", None, x, None, maps, boxes=boxes,
                                  verbose=0)
    box = 64 / SIZE ** 2
    np.testing.assert_allclose(shares[:, 0], [box, box + 0.25, 1.0, 0.0], atol=1e-6)
    inside = metrics.boxes_to_masks(metrics.pad_boxes(boxes), (SIZE, SIZE)).numpy()
    expected = (maps[..., 1] * inside).sum((1, 2)) / maps[..., 1].sum((1, 2))
    np.testing.assert_allclose(shares[:, 1], expected, rtol=1e-5)
    # A map of zeros has no energy anywhere: 0, not a division by zero.
    assert explain_lib.evaluate("energy_pointing_game", None, x[:1], None, 0 * maps[:1],
                                boxes=boxes[:1], verbose=0).tolist() == [[0.0, 0.0]]


def test_coarse_maps_are_resized_to_the_image_first(x):
    coarse = np.zeros((4, 4, 4, 1), "float32")
    # The cell over rows and columns 8-15; bilinearly, the peak spans pixels 11 and 12 of
    # each axis, the first of which, (11, 11), is the box's last column.
    coarse[:, 1, 1] = 1.0
    hits = explain_lib.evaluate("pointing_game", None, x, None, coarse, boxes=[[BOX]] * 4,
                                tolerance=0, verbose=0)
    assert hits.tolist() == [[1.0]] * 4
    peak = localization.peaks(tf.image.resize(coarse, (SIZE, SIZE))).numpy()
    assert peak.tolist() == [[11 * SIZE + 11]] * 4
    shifted = np.roll(coarse, 1, axis=2)  # columns 16-23: outside
    assert explain_lib.evaluate("pointing_game", None, x, None, shifted, boxes=[[BOX]] * 4,
                                tolerance=0, verbose=0).tolist() == [[0.0]] * 4


def test_the_energy_game_refuses_negative_maps(x):
    maps = peaked([12] * 4, [8] * 4) - 0.5
    with pytest.raises(ValueError, match="maps must not be negative.*positive_normalize"):
        explain_lib.evaluate("energy_pointing_game", None, x, None, maps, boxes=[[BOX]] * 4)
    with pytest.raises(ValueError, match="pointing_game needs tolerance >= 0"):
        explain_lib.evaluate("pointing_game", None, x, None, maps, boxes=[[BOX]] * 4,
                             tolerance=-1)


def test_the_energy_share_never_exceeds_one():
    """All of a map's energy inside the object is a share of exactly 1: the two float32 sums
    (inside, everywhere) are taken in different orders, and their ratio came out 1.0000001."""
    maps = np.random.default_rng(0).uniform(0, 1, (1, 64, 64, 1)).astype("float32")
    images = np.zeros((1, 64, 64, 3), "float32")
    shares = explain_lib.evaluate("energy_pointing_game", None, images, [0], maps,
                                  masks=np.ones((1, 64, 64), "float32"), verbose=0)
    assert shares.tolist() == [[1.0]]
