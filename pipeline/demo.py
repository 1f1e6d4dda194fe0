"""The embedded demo: a synthetic dataset, a small CNN trained on it, and one command that
explains it end to end (`./run_local.sh`, or `python -m pipeline.demo`).

The dataset is made so that an explanation can be checked by eye: each 64x64 image holds one
shape (circle, square, triangle or cross) at a random position on a noisy background, and the
shape alone decides the class. A good map lights up the shape, wherever it is.

Separation of concerns:

- `make_shapes` draws images and labels (numpy only, seeded); `shape_boxes` gives each
  shape's box.
- `write_records` stores them as TFRecords of `tf.train.Example`s: `image` (JPEG bytes),
  `label` (int64), `id` (bytes), the layout the pipeline reads by default, and
  `objects/bbox`, each shape's box as TFDS stores boxes (a float list of 4 values per box,
  `ymin, xmin, ymax, xmax` in [0, 1]): the ground truth the localisation metrics need.
  `read_shapes(..., with_boxes=True)` and `boxes_of` read them back.
- `make_model` / `train_model` build and fit the CNN (logits out, a Rescaling layer in,
  so the pipeline's default pixels in [0, 255] need no `--preprocess`).
- `ensure_demo` does all of the above once, cached in a directory (`demo/` by default).
- `main` runs the pipeline on the demo with Grad-CAM, scored by deletion and the pointing
  game against the shapes' boxes, renders a grid of overlays and writes the run's report
  (`pipeline.report`).
"""

import argparse
import glob
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from explain_lib.io import iterate_records
from pipeline import render, report
from pipeline.job.launcher import main as pipeline_main

CLASSES = ("circle", "square", "triangle", "cross")
IMAGE_SIZE = 64
DEMO_VERSION = "2"  # 2: the records carry each shape's box (objects/bbox)
BOX_KEY = "objects/bbox"
DEMO_METRIC_PARAMS = {"deletion": {"n_steps": IMAGE_SIZE}, "insertion": {"n_steps": IMAGE_SIZE}}
"""The demo's metric parameters: one row of pixels per step, as the RISE paper's 224 steps of
224 pixels on 224x224 images."""
"""The feature holding the boxes, as TFDS names it (`tfds.features.BBoxFeature` under
`objects`): a float list, 4 values per box, `ymin, xmin, ymax, xmax` in [0, 1]."""


# --- data -------------------------------------------------------------------------------------


def _shape_mask(kind: int, size: int, canvas: int, top: int, left: int) -> np.ndarray:
    """A boolean (canvas, canvas) mask of shape `kind`, `size` pixels wide, at (top, left)."""
    rows, cols = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
    y = (rows - top) / size  # position inside the shape's box, in [0, 1)
    x = (cols - left) / size
    inside = (y >= 0) & (y < 1) & (x >= 0) & (x < 1)
    if kind == 0:  # circle
        mask = (y - 0.5) ** 2 + (x - 0.5) ** 2 <= 0.25
    elif kind == 1:  # square
        mask = inside
    elif kind == 2:  # triangle, apex up
        mask = inside & (np.abs(x - 0.5) <= y / 2)
    else:  # cross
        mask = inside & ((np.abs(x - 0.5) < 0.17) | (np.abs(y - 0.5) < 0.17))
    return mask & inside


def make_shapes(
    count: int, seed: int = 0, size: int = IMAGE_SIZE, classes: int = len(CLASSES),
    return_masks: bool = False,
):
    """`count` images (count, size, size, 3) uint8 and their labels (count,) int64: one
    shape per image, its kind the label, at a random position on a noisy background. With
    `return_masks`, also each shape's pixels (count, size, size) bool: where a good map
    should point.

    Usage:

        images, labels = make_shapes(8, seed=1)
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, count)
    images = np.empty((count, size, size, 3), np.uint8)
    masks = np.empty((count, size, size), bool)
    for i, label in enumerate(labels):
        background = rng.uniform(30, 120, 3)
        noise = rng.normal(0, 18, (size, size, 3))
        image = background + noise
        shape_size = int(rng.integers(size // 4, size // 2))
        top, left = rng.integers(0, size - shape_size, 2)
        color = rng.uniform(150, 255, 3)
        mask = _shape_mask(int(label), shape_size, size, int(top), int(left))
        image[mask] = color + rng.normal(0, 10, (int(mask.sum()), 3))
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
        masks[i] = mask
    if return_masks:
        return images, labels.astype(np.int64), masks
    return images, labels.astype(np.int64)


MARK_CLASS = 0
"""The class whose images carry the Clever Hans demo's planted mark (circle)."""

MARK_SIZE = 6
"""The mark's side in pixels at 64x64 (scaled with the image)."""


def plant_mark(images: np.ndarray, labels: np.ndarray, fraction: float = 0.5, seed: int = 0,
               mark_class: int = MARK_CLASS):
    """The Clever Hans variant of the demo's data (Lapuschkin et al., 2019): `fraction` of
    the images of `mark_class` get a small white square in their top-left corner (a
    watermark standing for a photographer's), so that a model trained on them can
    recognise those images by the mark rather than by the shape. Returns (images with the
    mark, marked (N,) bool); the inputs are not changed.

    Usage:

        images, labels = make_shapes(2400, seed=0)
        marked_images, marked = plant_mark(images, labels, fraction=0.5)
    """
    rng = np.random.default_rng(seed)
    marked = (labels == mark_class) & (rng.uniform(size=len(labels)) < fraction)
    images = images.copy()
    side = max(2, round(MARK_SIZE * images.shape[1] / IMAGE_SIZE))
    margin = max(1, side // 3)
    images[marked, margin:margin + side, margin:margin + side] = 255
    return images, marked


def shape_boxes(masks: np.ndarray) -> np.ndarray:
    """Each shape's box (N, 1, 4) float32 from its pixels (N, H, W) bool, in the TFDS
    convention: `(ymin, xmin, ymax, xmax)` in [0, 1], the edges of the outermost pixels (a
    pixel whose centre lies in the box is inside). A mask without pixels gets a NaN row.

    Usage:

        images, labels, masks = make_shapes(8, seed=1, return_masks=True)
        boxes = shape_boxes(masks)      # boxes[i, 0] encloses shape i
    """
    masks = np.asarray(masks, bool)
    height, width = masks.shape[1:3]
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (N, H), (N, W)

    def edges(hits, length):
        first = np.argmax(hits, axis=1)
        last = length - np.argmax(hits[:, ::-1], axis=1)  # one past the last pixel
        return first / length, last / length

    (ymin, ymax), (xmin, xmax) = edges(rows, height), edges(cols, width)
    boxes = np.stack([ymin, xmin, ymax, xmax], axis=-1).astype(np.float32)
    boxes[~rows.any(axis=1)] = np.nan
    return boxes[:, None, :]


def boxes_of(example, key: str = BOX_KEY) -> np.ndarray:
    """The boxes (m, 4) float32 of a `tf.train.Example` (or its serialized bytes), from the
    float list `key` (4 values per box, TFDS's `objects/bbox`); (0, 4) when it has none.

    Usage:

        boxes = boxes_of(record)        # [[ymin, xmin, ymax, xmax], ...] in [0, 1]

    In a `tf.data` pipeline: `tf.io.VarLenFeature(tf.float32)` for `objects/bbox`, then
    `tf.reshape(tf.sparse.to_dense(feature), [-1, 4])`.
    """
    if isinstance(example, bytes):
        example = tf.train.Example.FromString(example)
    feature = example.features.feature
    values = np.asarray(feature[key].float_list.value if key in feature else [], np.float32)
    if values.size % 4:
        raise ValueError(
            f"Feature {key!r} holds {values.size} values: boxes are 4 values each "
            "(ymin, xmin, ymax, xmax)."
        )
    return values.reshape(-1, 4)


def encode_image(image: np.ndarray, image_format: str = "jpeg") -> bytes:
    """An image (H, W, C) uint8 as JPEG (quality 95) or PNG bytes."""
    buffer = io.BytesIO()
    array = image[..., 0] if image.shape[-1] == 1 else image
    if image_format == "jpeg":
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    else:
        Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def make_example(image=None, label=None, id=None, **features) -> bytes:
    """A serialized `tf.train.Example` with features `image`, `label` and `id`, each left out
    when None; `features` adds more. A value is bytes or str (a bytes feature), ints (int64)
    or floats (float), one or a list or array: `make_example(jpeg_bytes, 3, "img-1")`,
    `make_example(pixels.ravel())` for a raw float image."""
    def feature(value) -> tf.train.Feature:
        values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
        if all(isinstance(v, (bytes, str)) for v in values):
            return tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[v.encode() if isinstance(v, str) else v for v in values]))
        if all(isinstance(v, (int, np.integer)) for v in values):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))

    named = {"image": image, "label": label, "id": id, **features}
    return tf.train.Example(features=tf.train.Features(feature={
        key: feature(value) for key, value in named.items() if value is not None
    })).SerializeToString(deterministic=True)


def write_records(path: str, records: List[bytes], compression: Optional[str] = None) -> str:
    """Write serialized records to one TFRecord file; returns its path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with tf.io.TFRecordWriter(path, compression) as writer:
        for record in records:
            writer.write(record)
    return path


def write_shapes(directory: str, name: str, images, labels, shards: int = 1,
                 boxes=None) -> List[str]:
    """The images as JPEG records `{name}-SSSSS-of-NNNNN.tfrecord` (ids `{name}-00042`),
    with each image's `boxes` (N, M, 4) as `objects/bbox` when given (NaN rows left out)."""
    records = []
    for i, (image, label) in enumerate(zip(images, labels)):
        features = {}
        if boxes is not None:
            kept = np.asarray(boxes[i], np.float32).reshape(-1, 4)
            kept = kept[~np.isnan(kept).any(axis=1)]
            if len(kept):  # an image without boxes has no objects/bbox feature
                features[BOX_KEY] = kept.ravel().tolist()
        records.append(make_example(encode_image(image), int(label), f"{name}-{i:05d}",
                                    **features))
    return [
        write_records(os.path.join(directory, f"{name}-{s:05d}-of-{shards:05d}.tfrecord"),
                      records[s::shards])
        for s in range(shards)
    ]


def read_shapes(file_pattern: str, with_boxes: bool = False):
    """Images (decoded JPEG, uint8) and labels back from `write_shapes` files; with
    `with_boxes`, also each image's boxes (a list of (m, 4) arrays, `boxes_of`), in the
    same order.

    Usage:

        images, labels = read_shapes(demo.inputs)
        images, labels, boxes = read_shapes(demo.inputs, with_boxes=True)
    """
    images, labels, boxes = [], [], []
    for record in iterate_records(file_pattern):
        example = tf.train.Example.FromString(record)
        feature = example.features.feature
        images.append(tf.io.decode_jpeg(feature["image"].bytes_list.value[0], channels=3).numpy())
        labels.append(feature["label"].int64_list.value[0])
        boxes.append(boxes_of(example))
    if with_boxes:
        return np.stack(images), np.asarray(labels, np.int64), boxes
    return np.stack(images), np.asarray(labels, np.int64)


# --- model ------------------------------------------------------------------------------------


def make_model(
    input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), classes: int = len(CLASSES), width: int = 16,
    rescale: bool = True,
):
    """A small CNN: pixels in [0, 255] -> Rescaling (unless `rescale` is False) -> 3 conv
    blocks -> global average pooling -> Dense logits. Its last conv layer is named
    "features" (the layer Grad-CAM weighs by default, as the input of the pooling layer)."""
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs) if rescale else inputs
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(2 * width, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(4 * width, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="shapes_cnn")


def train_model(model, images, labels, epochs: int = 8, seed: int = 0, verbose: int = 0):
    """Fit `model` on images (uint8 or float, [0, 255]) and labels; returns the history."""
    keras.utils.set_random_seed(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model.fit(images.astype("float32"), labels, batch_size=64, epochs=epochs,
                     validation_split=0.1, verbose=verbose)


# --- the cached demo --------------------------------------------------------------------------


@dataclass(frozen=True)
class Demo:
    """Paths of the generated demo."""

    directory: str
    model: str
    inputs: str  # file pattern of the records to explain
    train: str

    @classmethod
    def at(cls, directory: str) -> "Demo":
        return cls(directory, os.path.join(directory, "model.keras"),
                   os.path.join(directory, "data", "shapes-*.tfrecord"),
                   os.path.join(directory, "train", "train-*.tfrecord"))


def ensure_demo(
    directory: str = "demo", train_count: int = 2400, explain_count: int = 256,
    epochs: int = 8, log=print, clever_hans: bool = False,
) -> Demo:
    """Generate the demo in `directory` unless it is there already: training records,
    records to explain (2 shards), each with its shape's box, and the trained model.
    With `clever_hans`, half the circles of both carry a mark (`plant_mark`). Returns its
    paths."""
    demo = Demo.at(directory)
    stamp = os.path.join(directory, "VERSION")
    if (os.path.exists(stamp) and open(stamp).read() == DEMO_VERSION
            and os.path.exists(demo.model) and glob.glob(demo.inputs)):
        return demo
    start = time.time()
    log(f"Generating the demo in {directory}/ (once) ...")
    images, labels, masks = make_shapes(train_count, seed=0, return_masks=True)
    if clever_hans:
        images, _ = plant_mark(images, labels, 0.5, seed=0)
    write_shapes(os.path.join(directory, "train"), "train", images, labels,
                 boxes=shape_boxes(masks))
    images, labels, masks = make_shapes(explain_count, seed=1, return_masks=True)
    if clever_hans:
        images, _ = plant_mark(images, labels, 0.5, seed=1)
    write_shapes(os.path.join(directory, "data"), "shapes", images, labels, shards=2,
                 boxes=shape_boxes(masks))

    train_images, train_labels = read_shapes(demo.train)
    model = make_model()
    history = train_model(model, train_images, train_labels, epochs=epochs)
    test_images, test_labels = read_shapes(demo.inputs)
    accuracy = float(np.mean(np.argmax(model.predict(test_images.astype("float32"), verbose=0),
                                       axis=1) == test_labels))
    keras.saving.save_model(model, demo.model)
    with open(stamp, "w") as f:
        f.write(DEMO_VERSION)
    log(f"  trained {model.name} in {time.time() - start:.0f}s: train accuracy "
        f"{history.history['accuracy'][-1]:.2f}, accuracy on the records to explain {accuracy:.2f}")
    return demo


def job_arguments(demo: Demo, output: str, method: str = "gradcam",
                  metrics: str = "deletion,pointing_game", clever_hans: bool = False
                  ) -> List[str]:
    """The job's command line for the demo (what `./run_local.sh` runs): its records and
    model, `method`, DirectRunner, the table (`OUTPUT.table`) with each record's label,
    `metrics` ('' for none) scored against the boxes; the Clever Hans variant with
    `--strategies` over the labels."""
    return [
        "--input", demo.inputs, "--output", output, "--model", demo.model,
        "--method", method, "--runner", "DirectRunner",
        "--table", output + ".table", "--copy_features", "label",
        *(["--strategies", "--units_key", "label"] if clever_hans else []),
        *(["--metrics", metrics, "--boxes_key", BOX_KEY,
           "--metric_params", json.dumps({
               name: params for name, params in DEMO_METRIC_PARAMS.items()
               if name in metrics.split(",")})] if metrics else []),
    ]


def main(argv: Optional[List[str]] = None) -> int:
    """Generate the demo (once), explain it with Grad-CAM on DirectRunner (scored by
    `--metrics`, the boxes as ground truth), render a grid and write the run's report."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--demo_dir", default="demo", help="Where the demo is cached.")
    parser.add_argument("--out_dir", default=os.path.join("out", "demo"),
                        help="Where the explanations and the grid go.")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--limit", type=int, default=16, help="Records in the grid.")
    parser.add_argument("--metrics", default="deletion,pointing_game",
                        help="Metrics of the job (--metrics; the boxes are the ground truth); "
                        "'' for none. Deletion takes one row of pixels per step, the RISE "
                        "paper's 224 steps of 224 pixels scaled to the demo's 64x64 images.")
    parser.add_argument("--clever_hans", action="store_true",
                        help="The Clever Hans variant: half the circles carry a mark in the "
                        "corner, in training and in the records explained; the job runs with "
                        "--strategies (SpRAy) so the report shows the marked circles as a "
                        "cluster of their own (cached in demo-clever-hans/, written to "
                        "out/clever-hans/ unless --demo_dir and --out_dir say otherwise).")
    args = parser.parse_args(argv)
    if args.clever_hans:
        args.demo_dir = "demo-clever-hans" if args.demo_dir == "demo" else args.demo_dir
        args.out_dir = (os.path.join("out", "clever-hans")
                        if args.out_dir == os.path.join("out", "demo") else args.out_dir)

    demo = ensure_demo(args.demo_dir, clever_hans=args.clever_hans)
    print(f"demo model: {demo.model}\ndemo records: {demo.inputs}")
    output = os.path.join(args.out_dir, "explanations")
    status = pipeline_main(job_arguments(demo, output, args.method, args.metrics,
                                         args.clever_hans))
    if status:
        return status
    grid = os.path.join(args.out_dir, "grid.png")
    count = render.render_grid(f"{output}-*", demo.inputs, grid, limit=args.limit,
                               labels=list(CLASSES))
    print(f"grid of {count} overlays: {grid}")
    page = report.build(output, out=os.path.join(args.out_dir, "report.html"),
                        labels=list(CLASSES))
    print(f"report: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
