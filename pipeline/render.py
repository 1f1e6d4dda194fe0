"""`python -m pipeline.render`: stored explanations drawn over their source images, in a grid.

Rendering is kept apart from explaining: methods return raw maps, the pipeline stores them,
and this command joins stored explanations back to their source images by id and draws them
(`pipeline.pictures`).

Usage:

    python -m pipeline.render --explanations 'out/expl-*' --images 'data/*.tfrecord' \\
        --out grid.png [--limit 16] [--alpha 0.5] [--colormap jet|inferno|coolwarm|gray|...] \\
        [--image_key image] [--image_format auto] [--image_shape H,W,C] [--id_key id]

The image options are the pipeline's, so the command reads any input the pipeline read,
decodes it with the pipeline's own functions (`pipeline.worker.parsing`,
`pipeline.worker.decoding`) and finds each record by the id the pipeline gave it. Maps
stored smaller than their image (`--map_size native`) are resized over it.
"""

import argparse
import itertools
import sys
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from explain_lib.io import decode_explanation, iterate_decoded, iterate_records
from pipeline.commands import BAD_INPUT, count, fail, positive
from pipeline.io.dead_letters import StageError
from pipeline.pictures import (
    DEFAULT_COLORMAP,
    caption,
    overlay,
    tile,
    upscale,
)
from pipeline.settings import IMAGE_FORMATS, parse_ints
from pipeline.worker.decoding import decode_image
from pipeline.worker.parsing import RecordSpec, parse_example, read_id


def load_images_by_id(
    file_pattern, ids: Sequence[str], image_key: str = "image", image_format: str = "auto",
    image_shape=None, id_key: Optional[str] = "id", channels: Optional[int] = None,
) -> Dict[str, np.ndarray]:
    """The source images (H, W, C) pixels in [0, 255], at their stored size, of the records
    whose id is in `ids`, read from the pipeline's inputs and identified exactly as the
    pipeline does (`id_key`, else the hash of the record). JPEG and PNG are decoded to
    `channels` (default 3; a raw tensor keeps its own)."""
    wanted = set(ids)
    found: Dict[str, np.ndarray] = {}
    spec = RecordSpec(
        image_size=(0, 0), channels=channels or (image_shape[2] if image_shape else 3),
        num_units=1, image_key=image_key,
        image_format=image_format, image_shape=image_shape, id_key=id_key,
    )
    for serialized in iterate_records(file_pattern):
        try:
            example = parse_example(serialized)
            record_id = read_id(example, serialized, spec)
            if record_id not in wanted:
                continue
            image = decode_image(example, spec, resize=False)
        except StageError:
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
        pictures.append(caption(upscale(pair, picture_scale),
                                 f"{name} {row['logits'][0]:.1f}"))
    if not pictures:
        raise ValueError(f"No explanation in {explanations} matched an image in {images} by id.")
    Image.fromarray(tile(pictures, columns)).save(out)
    return len(pictures)


def main(argv: Optional[List[str]] = None) -> int:
    """Render a grid PNG of explanations overlaid on their source images (exit 2 when nothing
    matches or an option is wrong)."""
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
