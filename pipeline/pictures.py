"""Pictures of maps: colormaps, maps overlaid on their images, grids, all numpy (no
TensorFlow), so that the report draws them in a process that never imports it.

Colours come from matplotlib's colormaps (`matplotlib.colormaps`), as lookup tables of 256
entries: the field's usual ones ("jet" for overlays, "inferno", "coolwarm") with no colours
written here.

Usage:

    picture = overlay(image, maps[..., 0], alpha=0.5)   # (H, W, 3) uint8
    grid = tile([picture, picture], columns=2)
"""

import functools
from typing import Sequence, Union

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

DEFAULT_COLORMAP = "jet"
"""The colormap of overlays: matplotlib's "jet" (dark blue -> cyan -> yellow -> dark red), the
convention of the Grad-CAM paper and most saliency figures since."""


COLORMAPS = {"heat": "jet", "gray": "gray", "coolwarm": "coolwarm"}
"""Short names kept from before the colours came from matplotlib ("heat" is "jet"). Any name
in `matplotlib.colormaps` works as well: "inferno" and "viridis" (perceptually uniform),
"coolwarm" or "RdBu_r" (diverging, for signed maps), "gray"."""


@functools.lru_cache(maxsize=None)
def colormap_table(name: str) -> np.ndarray:
    """The (256, 3) uint8 lookup table of matplotlib's colormap `name` (or an alias in
    `COLORMAPS`): entry i is the colormap at i / 255, rounded to 8 bits.

    Usage:

        colormap_table("inferno")[255]             # the colour of a map's maximum
    """
    resolved = COLORMAPS.get(name, name)
    if resolved not in matplotlib.colormaps:
        raise ValueError(f"Unknown colormap {name!r}: give a name in matplotlib.colormaps "
                         "(e.g. jet, inferno, viridis, coolwarm, gray).")
    rgba = matplotlib.colormaps[resolved](np.linspace(0.0, 1.0, 256))
    table = np.rint(rgba[:, :3] * 255).astype(np.uint8)
    table.flags.writeable = False  # shared by every caller (cached)
    return table


COLORMAP = colormap_table(DEFAULT_COLORMAP)
"""(256, 3) uint8 lookup table from map level to colour: the default colormap's."""


def get_colormap(colormap: Union[str, np.ndarray]) -> np.ndarray:
    """A (256, 3) uint8 lookup table: `colormap` itself, or the matplotlib colormap it names."""
    if isinstance(colormap, str):
        return colormap_table(colormap)
    table = np.asarray(colormap)
    if table.shape != (256, 3):
        raise ValueError(f"A colormap is a (256, 3) table of colours, not {table.shape}.")
    return table.astype(np.uint8)


def colorize(map2d: np.ndarray, colormap: Union[str, np.ndarray] = COLORMAP) -> np.ndarray:
    """A map (H, W) as colours (H, W, 3) uint8, scaled over its own range."""
    colormap = get_colormap(colormap)
    map2d = np.asarray(map2d, np.float32)
    low, high = float(map2d.min()), float(map2d.max())
    scaled = (map2d - low) / (high - low) if high > low else np.zeros_like(map2d)
    return colormap[np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)]


def overlay(image: np.ndarray, map2d: np.ndarray, alpha: float = 0.5,
            colormap: Union[str, np.ndarray] = COLORMAP) -> np.ndarray:
    """The map's colours blended over the image: (H, W, 3) uint8, `alpha` the weight of the
    colours (0: the image alone, 1: the map alone). The map is scaled over its own range and
    resized (bilinearly) to the image if their sizes differ, so a map stored at its native
    7x7 lies over the whole image; grayscale images are shown in grey. `colormap` is a name
    in `matplotlib.colormaps` (or `COLORMAPS`) or a (256, 3) uint8 table.

    Usage:

        picture = overlay(images[0], maps[0, ..., 0], alpha=0.4, colormap="jet")
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}.")
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = np.clip(image[..., :3], 0, 255).astype(np.float32)
    map2d = np.asarray(map2d, np.float32)
    if map2d.shape != image.shape[:2]:
        # Pillow's bilinear resize of a float image: for maps smaller than their image (the
        # usual case) the same values as tf.image.resize's, within float32 rounding.
        map2d = np.asarray(Image.fromarray(map2d).resize(  # float32: mode "F"
            (image.shape[1], image.shape[0]), Image.BILINEAR))
    colors = colorize(map2d, colormap).astype(np.float32)
    return np.clip((1 - alpha) * image + alpha * colors, 0, 255).astype(np.uint8)


def tile(pictures: Sequence[np.ndarray], columns: int, padding: int = 2) -> np.ndarray:
    """Pictures of one size (H, W, 3) in a grid, `columns` wide, on a white background."""
    height, width = pictures[0].shape[:2]
    rows = -(-len(pictures) // columns)
    grid = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, 3), 255,
        np.uint8,
    )
    for index, picture in enumerate(pictures):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[top:top + height, left:left + width] = picture
    return grid


def upscale(picture: np.ndarray, scale: int) -> np.ndarray:
    """`picture` (H, W, ...) repeated `scale` times along both axes (nearest neighbour)."""
    return np.repeat(np.repeat(picture, scale, axis=0), scale, axis=1) if scale > 1 else picture


def caption(picture: np.ndarray, text: str) -> np.ndarray:
    canvas = Image.new("RGB", (picture.shape[1], picture.shape[0] + 12), "white")
    canvas.paste(Image.fromarray(picture), (0, 12))
    ImageDraw.Draw(canvas).text((2, 0), text[: picture.shape[1] // 6], fill="black")
    return np.asarray(canvas)
