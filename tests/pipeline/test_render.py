"""`python -m pipeline.render` and `overlay`: a grid of the expected size whose overlay pixels
follow the map, on inputs of any layout the pipeline reads (keys, formats, hashed ids)."""

import matplotlib
import numpy as np
import pytest
from PIL import Image

from explain_lib import io as explain_io
from pipeline import demo, pictures, render
from tests.pipeline.conftest import write

IMAGE = 16
CAPTION = 12
PAD = 2


def _peak_map(row: int, col: int) -> np.ndarray:
    """A 4x4 native map whose maximum is at (row, col), for a 16x16 image."""
    y, x = np.mgrid[0:4, 0:4]
    return np.exp(-((y - row) ** 2 + (x - col) ** 2))[..., None].astype(np.float32)


def _explanations(path, ids, peaks):
    records = [explain_io.encode_explanation(i, [k % 4], [float(k)], _peak_map(*peak),
                                             input_size=(IMAGE, IMAGE))
               for k, (i, peak) in enumerate(zip(ids, peaks))]
    return write(path.parent, path.name, records)


@pytest.fixture
def images():
    return demo.make_shapes(3, seed=2, size=IMAGE)[0]


def _cell(grid, index, columns=2, scale=8):
    """The (image, overlay) pair of cell `index` in a grid drawn at `scale`."""
    height, width = IMAGE * scale, 2 * IMAGE * scale
    top = PAD + (index // columns) * (height + CAPTION + PAD) + CAPTION
    left = PAD + (index % columns) * (width + PAD)
    cell = grid[top:top + height, left:left + width]
    return cell[:, :width // 2], cell[:, width // 2:]


def test_render_command_draws_a_grid_whose_overlays_follow_the_map(tmp_path, images, capsys):
    ids = ["r0", "r1", "r2"]
    inputs = write(tmp_path, "inputs", [demo.make_example(demo.encode_image(image, "png"),
                                                          0, record_id)
                                        for record_id, image in zip(ids, images)])
    grids = {}
    for name, peak in (("top_left", (0, 0)), ("bottom_right", (3, 3))):
        explanations = _explanations(tmp_path / f"{name}.tfrecord", ids, [peak] * 3)
        out = str(tmp_path / f"{name}.png")
        assert render.main(["--explanations", explanations, "--images", inputs, "--out", out,
                            "--limit", "3", "--columns", "2", "--alpha", "0.6"]) == 0
        assert "3 records rendered" in capsys.readouterr().out
        grids[name] = np.asarray(Image.open(out).convert("RGB"))

    # 2 columns x 2 rows of cells; a cell is the image and its overlay side by side, each
    # upscaled 8x (to 128 pixels) under a 12-pixel caption; 2-pixel padding everywhere.
    for grid in grids.values():
        assert grid.shape == (PAD + 2 * (128 + CAPTION + PAD), PAD + 2 * (256 + PAD), 3)
    for index, image in enumerate(images):
        plain, over = _cell(grids["top_left"], index)
        np.testing.assert_array_equal(plain[::8, ::8], image)  # the source image
        plain_moved, over_moved = _cell(grids["bottom_right"], index)
        np.testing.assert_array_equal(plain, plain_moved)  # the image does not change ...
        assert np.abs(over.astype(int) - over_moved).mean() > 20  # ... the overlay does
        # Where the map peaks, the overlay is the top colour of matplotlib's "jet" (the
        # default colormap) blended over the image.
        top = np.asarray(matplotlib.colormaps["jet"](1.0)[:3], np.float32) * 255
        for grid_over, (y, x) in ((over, (4, 4)), (over_moved, (123, 123))):
            expected = 0.4 * image[y // 8, x // 8] + 0.6 * top
            np.testing.assert_allclose(grid_over[y, x], expected, atol=6)
        # A third of the overlay away from the peak is far from that colour.
        assert np.abs(over[120, 120].astype(float) - top).sum() > 100


def test_render_reads_any_layout_the_pipeline_reads(tmp_path, images):
    """Raw float tensors under other keys, no id feature: records are found by the hash id
    the pipeline gives them, decoded by the pipeline's own functions."""
    raw = [demo.make_example(None, None, None, pixels=image.astype(np.float32).ravel())
           for image in images[:2]]
    inputs = write(tmp_path, "raw", raw)
    ids = [explain_io.record_id(record) for record in raw]
    explanations = _explanations(tmp_path / "expl.tfrecord", ids, [(1, 1), (2, 2)])
    out = str(tmp_path / "raw.png")
    assert render.main(["--explanations", explanations, "--images", inputs, "--out", out,
                        "--image_key", "pixels", "--image_format", "raw",
                        "--image_shape", f"{IMAGE},{IMAGE},3", "--id_key", "",
                        "--columns", "2", "--scale", "4", "--colormap", "gray"]) == 0
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (PAD + 64 + CAPTION + PAD, PAD + 2 * (128 + PAD), 3)
    plain, over = _cell(grid, 1, scale=4)
    np.testing.assert_array_equal(plain[::4, ::4], images[1])
    # Gray colormap: where the map peaks (image pixel 9, 9 for the native peak at 2, 2) the
    # overlay is half the image, half white; where it is least (the corner farthest from the
    # peak, 0, 0), half the image, half black.
    np.testing.assert_allclose(over[36, 36], 0.5 * images[1][9, 9] + 0.5 * 255, atol=1.5)
    np.testing.assert_allclose(over[0, 0], 0.5 * images[1][0, 0], atol=1.5)


def test_render_fails_clearly_when_nothing_matches(tmp_path, images, capsys):
    inputs = write(tmp_path, "in", [demo.make_example(demo.encode_image(images[0]), 0, "x")])
    explanations = _explanations(tmp_path / "e.tfrecord", ["other"], [(0, 0)])
    assert render.main(["--explanations", explanations, "--images", inputs,
                        "--out", str(tmp_path / "none.png")]) == 2
    assert "matched an image" in capsys.readouterr().err


def test_overlay_colormaps_and_alpha():
    image = np.full((4, 4, 3), 100, np.uint8)
    ramp = np.tile(np.linspace(-1, 1, 4), (4, 1))
    gray = pictures.overlay(image, ramp, alpha=1.0, colormap="gray")
    np.testing.assert_array_equal(gray[0, :, 0], [0, 85, 170, 255])
    assert np.all(gray[..., 0] == gray[..., 2])
    cool = pictures.overlay(image, ramp, alpha=1.0, colormap="coolwarm")
    assert cool[0, 0, 2] > cool[0, 0, 0] and cool[0, -1, 0] > cool[0, -1, 2]  # blue to red
    table = np.zeros((256, 3), np.uint8)
    table[:, 1] = 200
    assert np.all(pictures.overlay(image, ramp, alpha=1.0, colormap=table)[..., 1] == 200)
    # A native map is stretched over the whole image, its peak where it lies.
    native = pictures.overlay(np.zeros((32, 32, 3), np.uint8), _peak_map(3, 0)[..., 0], 1.0)
    assert native.shape == (32, 32, 3)
    # jet: red where the map peaks (bottom left), blue in the corner farthest from it.
    assert native[30, 1, 0] > native[30, 1, 2] and native[1, 30, 2] > native[1, 30, 0]
    with pytest.raises(ValueError, match="Unknown colormap 'no_such_map'"):
        pictures.overlay(image, ramp, colormap="no_such_map")
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        pictures.overlay(image, ramp, alpha=1.5)
    with pytest.raises(ValueError, match=r"\(256, 3\) table"):
        pictures.overlay(image, ramp, colormap=np.zeros((10, 3)))


@pytest.mark.parametrize("name", ["jet", "inferno", "coolwarm", "heat"])
def test_colours_are_matplotlibs_colormaps(name):
    """Each level's colour is matplotlib's colormap at level / 255 ("heat" is "jet")."""
    expected = matplotlib.colormaps["jet" if name == "heat" else name]
    ramp = np.linspace(0, 1, 256, dtype=np.float32)[None, :]
    colours = pictures.colorize(ramp, name)[0].astype(float)
    for level in (0, 40, 128, 200, 255):
        np.testing.assert_allclose(colours[level], np.asarray(expected(level / 255)[:3]) * 255,
                                   atol=0.5 + 1e-9)
    assert pictures.colorize(np.zeros((2, 2)), name)[0, 0].tolist() == \
        np.rint(np.asarray(expected(0.0)[:3]) * 255).tolist()  # a flat map: the lowest colour
