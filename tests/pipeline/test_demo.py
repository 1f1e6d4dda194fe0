"""The embedded demo (data, cache) and the pictures: overlays and the grid of a real run."""

import os

import matplotlib
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from explain_lib.io import read_explanations
from explain_lib.metrics import boxes_to_masks
from pipeline import demo, pictures, render
from tests.pipeline.conftest import run_job, write


def test_the_shape_decides_the_class():
    images, labels, masks = demo.make_shapes(40, seed=11, size=32, return_masks=True)
    again, same_labels = demo.make_shapes(40, seed=11, size=32)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, same_labels)
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    assert set(labels.tolist()) == {0, 1, 2, 3}
    centres = []
    for image, label, mask in zip(images, labels, masks):
        # The shape stands out of its background ...
        brightness = image.mean(axis=-1)
        assert brightness[mask].mean() > brightness[~mask].mean() + 50
        # ... and its form is the class: how much of its bounding box it fills, and how low
        # its mass sits in that box (a triangle, apex up, is bottom-heavy).
        rows, cols = np.nonzero(mask)
        fill = mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))
        low = (rows.mean() - rows.min()) / np.ptp(rows)
        kind = ("square" if fill == 1 else "triangle" if low > 0.6
                else "circle" if fill >= 0.72 else "cross")
        assert kind == demo.CLASSES[label], (label, fill, low)
        centres.append((rows.mean(), cols.mean()))
    # At a random position: the centres spread over the image.
    assert np.ptp(np.array(centres), axis=0).min() > 10


def test_each_shapes_box_encloses_its_pixels_tightly():
    _, _, masks = demo.make_shapes(40, seed=12, size=32, return_masks=True)
    boxes = demo.shape_boxes(masks)
    assert boxes.shape == (40, 1, 4) and boxes.dtype == np.float32
    assert np.all((boxes >= 0) & (boxes <= 1))
    assert np.all(boxes[..., 0] < boxes[..., 2]) and np.all(boxes[..., 1] < boxes[..., 3])
    inside = boxes_to_masks(boxes, (32, 32)).numpy().astype(bool)
    for mask, box in zip(masks, inside):
        assert np.all(box[mask])  # every pixel of the shape lies in its box ...
        rows, cols = np.nonzero(mask)
        tight = np.zeros_like(mask)
        tight[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        np.testing.assert_array_equal(box, tight)  # ... and the box is no larger
    empty = demo.shape_boxes(np.zeros((1, 8, 8), bool))
    assert np.isnan(empty).all()


def test_records_carry_the_boxes_as_tfds_does(tmp_path):
    images, labels, masks = demo.make_shapes(3, seed=13, size=32, return_masks=True)
    boxes = demo.shape_boxes(masks)
    boxes = np.concatenate([boxes, np.full_like(boxes, np.nan)], axis=1)  # padding is dropped
    boxes[2, 1] = [0.0, 0.5, 0.25, 1.0]  # a second box on the last image
    (path,) = demo.write_shapes(str(tmp_path), "boxed", images, labels, boxes=boxes)
    read_images, read_labels, read_boxes = demo.read_shapes(path, with_boxes=True)
    np.testing.assert_array_equal(read_labels, labels)
    assert [len(b) for b in read_boxes] == [1, 1, 2]
    for got, expected in zip(read_boxes, boxes):
        np.testing.assert_array_equal(got, expected[~np.isnan(expected).any(-1)])
    example = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(path))).numpy())
    assert list(example.features.feature["objects/bbox"].float_list.value) == \
        boxes[0, 0].tolist()
    assert demo.boxes_of(demo.make_example(label=1)).shape == (0, 4)


@pytest.mark.slow
def test_ensure_demo_generates_once(tmp_path):
    directory = str(tmp_path / "demo")
    built = demo.ensure_demo(directory, train_count=96, explain_count=8, epochs=1,
                             log=lambda message: None)
    assert os.path.exists(built.model)
    records = demo.read_shapes(built.inputs)
    assert records[0].shape == (8, 64, 64, 3) and records[1].shape == (8,)
    # Each record carries its shape's box: the records to explain are seed 1's shapes,
    # numbered by their id (the shards hold images 0, 2, ... and 1, 3, ...).
    _, _, masks = demo.make_shapes(8, seed=1, return_masks=True)
    by_id = {}
    for path in sorted(tf.io.gfile.glob(built.inputs)):
        for record in tf.data.TFRecordDataset(path):
            example = tf.train.Example.FromString(record.numpy())
            number = int(example.features.feature["id"].bytes_list.value[0].decode()[-5:])
            by_id[number] = demo.boxes_of(example)
    assert sorted(by_id) == list(range(8))
    for number, box in by_id.items():
        np.testing.assert_array_equal(box, demo.shape_boxes(masks[number:number + 1])[0])
    stamp = os.path.getmtime(built.model)
    messages = []
    assert demo.ensure_demo(directory, log=messages.append) == built
    assert messages == [] and os.path.getmtime(built.model) == stamp  # cached: nothing redone


def test_overlay_blends_the_map_over_the_image():
    image = np.full((8, 8, 3), 100, np.uint8)
    ramp = np.tile(np.linspace(0, 1, 8), (8, 1))
    assert np.array_equal(pictures.overlay(image, ramp, alpha=0.0), image)
    opaque = pictures.overlay(image, ramp, alpha=1.0)
    # The default colormap is matplotlib's "jet": its lowest and highest colours at the ends.
    jet = matplotlib.colormaps["jet"]
    for column, level in ((0, 0.0), (-1, 1.0)):
        np.testing.assert_allclose(opaque[:, column],
                                   np.broadcast_to(np.asarray(jet(level)[:3]) * 255, (8, 3)),
                                   atol=1)
    half = pictures.overlay(image, ramp, alpha=0.5)
    assert not np.array_equal(half, pictures.overlay(image, ramp[:, ::-1], alpha=0.5))
    # Maps of another size are resized to the image; grayscale images work.
    assert pictures.overlay(image[..., :1], np.ones((2, 2)), 0.5).shape == (8, 8, 3)


@pytest.mark.slow
def test_render_grid_of_a_real_run(tmp_path, model_path, shapes):
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(im), int(label), f"g{i}")
               for i, (im, label) in enumerate(zip(images[:5], labels[:5]))]
    pattern = write(tmp_path, "grid-in", records)
    job = run_job(tmp_path, pattern, model_path, "--method", "gradcam")
    out = str(tmp_path / "grid.png")
    count = render.render_grid(job.output + "-*", pattern, out, limit=4, columns=2, scale=2,
                               labels=list(demo.CLASSES))
    assert count == 4
    grid = np.asarray(Image.open(out))
    # 2 x 2 cells; a cell is the image and its overlay side by side (2 x 64 wide, 64 high at
    # scale 2) under a 12-pixel caption; 2-pixel padding around every cell.
    assert grid.shape == (2 + 2 * (64 + 12 + 2), 2 + 2 * (128 + 2), 3)
    first = grid[2 + 12:2 + 12 + 64, 2:2 + 128]
    first_id = next(iter(read_explanations(job.output + "-*")))["id"].numpy().decode()
    source = tf.io.decode_jpeg(demo.encode_image(images[int(first_id[1:])]), channels=3).numpy()
    np.testing.assert_array_equal(first[::2, :64:2], source)  # the image, upscaled
    assert np.abs(first[:, 64:].astype(int) - first[:, :64]).mean() > 10  # its overlay
