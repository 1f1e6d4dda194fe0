"""Pictures of explanations: maps overlaid on their images, and grids of them.

Rendering is kept apart from explaining: methods return raw maps, the pipeline stores them,
and this module joins stored explanations back to their source images by id and draws them.

Usage:

    python -m pipeline.render --explanations 'out/expl-*' --images 'data/*.tfrecord' \\
        --out grid.png [--limit 16] [--alpha 0.5] [--colormap jet|inferno|coolwarm|gray|...] \\
        [--image_key image] [--image_format auto] [--image_shape H,W,C] [--id_key id]

    picture = overlay(image, maps[..., 0], alpha=0.5)   # (H, W, 3) uint8

Colours come from matplotlib's colormaps (`matplotlib.colormaps`), as lookup tables of 256
entries: the field's usual ones ("jet" for overlays, "inferno", "coolwarm") with no colours
written here.

The image options are the pipeline's, so the command reads any input the pipeline read,
decodes it with the pipeline's own functions (`pipeline.worker.records`) and finds each record by
the id the pipeline gave it. Maps stored smaller than their image (`--map_size native`) are
resized over it.
"""

import argparse
import functools
import itertools
import sys
from typing import Dict, List, Optional, Sequence, Union

import matplotlib
import numpy as np

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
        from PIL import Image

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


def _caption(picture: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (picture.shape[1], picture.shape[0] + 12), "white")
    canvas.paste(Image.fromarray(picture), (0, 12))
    ImageDraw.Draw(canvas).text((2, 0), text[: picture.shape[1] // 6], fill="black")
    return np.asarray(canvas)


def load_images_by_id(
    file_pattern, ids: Sequence[str], image_key: str = "image", image_format: str = "auto",
    image_shape=None, id_key: Optional[str] = "id", channels: Optional[int] = None,
) -> Dict[str, np.ndarray]:
    """The source images (H, W, C) pixels in [0, 255], at their stored size, of the records
    whose id is in `ids`, read from the pipeline's inputs and identified exactly as the
    pipeline does (`id_key`, else the hash of the record). JPEG and PNG are decoded to
    `channels` (default 3; a raw tensor keeps its own)."""
    from explain_lib.io import iterate_records
    from pipeline.worker import records as input_records

    wanted = set(ids)
    found: Dict[str, np.ndarray] = {}
    spec = input_records.RecordSpec(
        image_size=(0, 0), channels=channels or (image_shape[2] if image_shape else 3),
        num_units=1, image_key=image_key,
        image_format=image_format, image_shape=image_shape, id_key=id_key,
    )
    for serialized in iterate_records(file_pattern):
        try:
            example = input_records.parse_example(serialized)
            record_id = input_records.read_id(example, serialized, spec)
            if record_id not in wanted:
                continue
            image = input_records.decode_image(example, spec, resize=False)
        except input_records.StageError:
            continue
        found[record_id] = image
        if len(found) == len(wanted):
            break
    return found


def render_grid(
    explanations, images, out: str, limit: int = 16, columns: int = 4, alpha: float = 0.5,
    scale: Optional[int] = None, labels: Optional[List[str]] = None, image_key: str = "image",
    image_format: str = "auto", image_shape=None, id_key: Optional[str] = "id",
    colormap: Union[str, np.ndarray] = DEFAULT_COLORMAP,
) -> int:
    """Render the first `limit` explanations as a PNG grid at `out`: for each record its
    image and the map of its first explained unit overlaid (`alpha`, `colormap`), captioned
    with the unit (named by `labels` if given) and its logit. Returns how many records were
    drawn. Each cell is the image at its stored size, twice side by side, upscaled by `scale`
    (default: enough to make it about 128 pixels high), under a 12-pixel caption.

    `explanations` is a pattern of the pipeline's outputs, `images` of its inputs; the
    image options mean what they mean for the pipeline, and records are matched by the id
    the pipeline gave them (`id_key`, else the hash of the record).
    """
    from PIL import Image

    from explain_lib.io import decode_explanation, iterate_decoded

    rows = list(itertools.islice(iterate_decoded(explanations, decode_explanation), limit))
    ids = [row["id"] for row in rows]
    sources = load_images_by_id(images, ids, image_key, image_format, image_shape, id_key)
    pictures = []
    for record_id, row in zip(ids, rows):
        if record_id not in sources:
            continue
        image = sources[record_id]
        unit = int(row["units"][0])
        name = labels[unit] if labels and unit < len(labels) else str(unit)
        picture_scale = scale or max(1, 128 // max(image.shape[:2]))
        pair = np.concatenate([
            overlay(image, np.zeros(image.shape[:2]), alpha=0.0),
            overlay(image, row["maps"][..., 0], alpha=alpha, colormap=colormap),
        ], axis=1)
        pictures.append(_caption(upscale(pair, picture_scale),
                                 f"{name} {row['logits'][0]:.1f}"))
    if not pictures:
        raise ValueError(f"No explanation in {explanations} matched an image in {images} by id.")
    Image.fromarray(tile(pictures, columns)).save(out)
    return len(pictures)


def main(argv: Optional[List[str]] = None) -> int:
    """Render a grid PNG of explanations overlaid on their source images (exit 2 when nothing
    matches or an option is wrong)."""
    from pipeline.commands import BAD_INPUT, count, fail, positive
    from pipeline.job.options import parse_ints
    from pipeline.worker.records import IMAGE_FORMATS

    parser = argparse.ArgumentParser(prog="python -m pipeline.render", description=main.__doc__)
    parser.add_argument("--explanations", required=True, help="Pattern of the pipeline's outputs.")
    parser.add_argument("--images", required=True, help="Pattern of the pipeline's inputs.")
    parser.add_argument("--out", required=True, help="PNG file to write.")
    parser.add_argument("--limit", type=count, default=16,
                        help="Records to draw (the first N).")
    parser.add_argument("--columns", type=positive, default=4)
    parser.add_argument("--alpha", type=float, default=0.5, help="Weight of the map's colours.")
    parser.add_argument("--colormap", default=DEFAULT_COLORMAP,
                        help="A matplotlib colormap: jet (default), inferno, viridis, "
                        "coolwarm (signed maps), gray, ...")
    parser.add_argument("--scale", type=positive, default=None,
                        help="Upscaling of each picture.")
    # The pipeline's options for reading its inputs, with the same meaning and defaults.
    parser.add_argument("--image_key", default="image", help="Feature holding the image.")
    parser.add_argument("--image_format", default="auto", choices=IMAGE_FORMATS)
    parser.add_argument("--image_shape", default=None, help="H,W,C of raw tensor images.")
    parser.add_argument("--id_key", default="id", help="Feature holding the record id.")
    args = parser.parse_args(argv)
    try:
        drawn = render_grid(
            args.explanations, args.images, args.out, args.limit, args.columns, args.alpha,
            scale=args.scale, image_key=args.image_key, image_format=args.image_format,
            image_shape=parse_ints(args.image_shape, 3, "image_shape"),
            id_key=args.id_key or None, colormap=args.colormap,
        )
    except BAD_INPUT as error:
        return fail("pipeline.render", error)
    print(f"{drawn} records rendered to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
