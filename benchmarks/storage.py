"""What storing a map costs, per encoding and map size, on real method outputs at 224x224.

For each model (ResNet50V2 with `weights=None`; the demo CNN, trained on the demo's shapes
and rebuilt at 224x224 with the same weights; a CNN whose last convolution block is half the
input's size, 112x112, trained on the demo's shapes at 64x64 and rebuilt likewise) and
method (Grad-CAM, smooth maps at the feature map's resolution; vanilla gradients, noisy
maps at the input's resolution), explain N demo images with the method's conventional
parameters (the registry's `explain_defaults`, as the pipeline does), then store every map
with every encoding:

- at the input size (`--map_size input`, the maps the engine returns with resizing);
- at the method's native size (`--map_size native`, and `auto`, the job's default), read
  back at 224x224 (`size="input"`).

Reported per row: bytes per map (the encoded `maps` feature), how many times smaller that is
than the map as raw float32 at 224x224 (200,704 bytes), bytes per record in a GZIP TFRecord
file as the pipeline writes it (id, units, logits and all), the worst decoding error over the
N maps as a fraction of the map's range (max - min), measured at 224x224 against the
input-size map, whether every map is within its encoding's documented bound, and the numpy
encode and decode time per map.

Run: .venv/bin/python -m benchmarks.storage [--count 16] [--demo_dir demo]
"""

import argparse
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from benchmarks.common import application, machine
from explain_lib import explain, inspection, methods
from explain_lib import io as explain_io
from pipeline import demo

SIZE = 224
RAW_BYTES = SIZE * SIZE * 4
METHODS = ("gradcam", "gradients")


def demo_model_at(size: int, demo_dir: str):
    """The demo CNN (trained once, cached in `demo_dir`) rebuilt for size x size inputs: it
    is fully convolutional up to its global pooling, so the trained weights carry over."""
    import keras

    trained = keras.saving.load_model(demo.ensure_demo(demo_dir).model, compile=False)
    model = demo.make_model((size, size, 3))
    model.set_weights(trained.get_weights())
    return model


def half_cnn(size: int, trained: bool = True):
    """A CNN whose last convolution block is half the input's size (one 2x pooling before
    it): Grad-CAM maps of size/2 x size/2. Trained on the demo's shapes at their 64x64 (it
    is fully convolutional up to its global pooling, so the weights carry over to `size`),
    unless `trained` is False (random weights, near-constant maps)."""
    import keras

    def build(side: int):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((side, side, 3))
        x = keras.layers.Rescaling(1 / 255.0)(inputs)
        x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="features")(x)
        outputs = keras.layers.Dense(len(demo.CLASSES))(keras.layers.GlobalAveragePooling2D()(x))
        return keras.Model(inputs, outputs)

    model = build(size)
    if trained:
        small = build(demo.IMAGE_SIZE)
        x, y = demo.make_shapes(4000, seed=1)
        history = demo.train_model(small, x, y, epochs=10)
        print(f"half CNN trained at {demo.IMAGE_SIZE}x{demo.IMAGE_SIZE}: validation accuracy "
              f"{history.history['val_accuracy'][-1]:.3f}\n")
        model.set_weights(small.get_weights())
    return model


def images(count: int) -> np.ndarray:
    """Demo shapes drawn at 64x64 and resized to 224x224 (the scale the demo model learned,
    at the benchmark's resolution), pixels in [0, 255]."""
    small, _ = demo.make_shapes(count, seed=3)
    return tf.image.resize(small.astype(np.float32), (SIZE, SIZE)).numpy()


def explain_both_sizes(model, method: str, x: np.ndarray, preprocess=None):
    """(input-size maps, native maps), each (N, H, W) float32, for the top-1 unit."""
    inputs = preprocess(x) if preprocess else x
    units = np.argmax(model.predict(inputs, verbose=0), axis=1)[:, None]
    registered = methods.get(method)
    explained = inspection.expose(model) if registered.exposed else model
    params = dict(registered.explain_defaults)
    results = []
    for resizing in (True, False):
        params["resizing"] = resizing
        _, maps = explain(registered.function, explained, inputs, units, batch_size=8,
                          verbose=0, **params)
        results.append(maps[..., 0].astype(np.float32))
    return results


def measure(full: np.ndarray, stored: np.ndarray, encoding: str, directory: str):
    """One row of the table for maps `stored` (N, h, w), compared at 224x224 with `full`."""
    encoded, seconds_encode = [], time.perf_counter()
    for map2d in stored:
        encoded.append(explain_io.encode_maps(map2d[..., None], encoding))
    seconds_encode = (time.perf_counter() - seconds_encode) / len(stored)
    start = time.perf_counter()
    decoded = [explain_io.decode_maps(e) for e in encoded]
    seconds_decode = (time.perf_counter() - start) / len(stored)

    worst, within = 0.0, True
    for e, d, reference in zip(encoded, decoded, full):
        at_input = explain_io.resize_maps(d, (SIZE, SIZE))[..., 0]
        span = float(reference.max() - reference.min()) or 1.0
        error = float(np.abs(at_input - reference).max())
        worst = max(worst, error / span)
        # The bound of the stored map; resizing on read does not widen it. Float noise of
        # resizing in the graph versus on read: 1e-5 of the range.
        within &= error <= float(explain_io.max_decode_error(e)[0]) + 1e-5 * span
    path = os.path.join(directory, f"{encoding}.tfrecord.gz")
    with tf.io.TFRecordWriter(path, "GZIP") as writer:
        for i, map2d in enumerate(stored):
            writer.write(explain_io.encode_explanation(
                f"record-{i:08d}", [i], [float(i)], map2d[..., None], encoding,
                input_size=(SIZE, SIZE)))
    on_disk = os.path.getsize(path) / len(stored)
    size = np.mean([len(e.data) for e in encoded])
    return size, on_disk, worst, within, seconds_encode * 1e3, seconds_decode * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=16, help="Images per model and method.")
    parser.add_argument("--demo_dir", default="demo", help="Where the demo is cached.")
    parser.add_argument("--models", nargs="+", default=["ResNet50V2", "demo CNN", "half CNN"],
                        choices=["ResNet50V2", "demo CNN", "half CNN"])
    args = parser.parse_args(argv)

    import keras

    print(f"Machine: {machine()}")
    print(f"{args.count} demo images at {SIZE}x{SIZE}; raw float32 map = {RAW_BYTES:,} bytes\n")
    print("| model | method | stored size | encoding | bytes/map | x smaller than float32 "
          "224² | on-disk bytes/record (gzip) | max error / range | within bound | "
          "encode ms | decode ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    x = images(args.count)
    with tempfile.TemporaryDirectory() as directory:
        for name in args.models:
            if name == "demo CNN":
                model, preprocess = demo_model_at(SIZE, args.demo_dir), None
            elif name == "half CNN":
                model, preprocess = half_cnn(SIZE), None
            else:
                model = application(name, SIZE)
                preprocess = keras.applications.resnet_v2.preprocess_input
            for method in METHODS:
                full, native = explain_both_sizes(
                    model, method, x, lambda v: preprocess(v.copy()) if preprocess else v)
                # --map_size auto, the job's default, stores the method's own resolution.
                if native.shape[1:] != full.shape[1:]:
                    sizes = [("input", full), ("native = auto, the default", native)]
                else:
                    sizes = [("input = auto, the default", full)]
                for label, stored in sizes:
                    shape = "x".join(map(str, stored.shape[1:]))
                    for encoding in explain_io.ENCODINGS:
                        size, disk, worst, within, enc, dec = measure(full, stored, encoding,
                                                                      directory)
                        print(f"| {name} | {method} | {shape} ({label}) | {encoding} | "
                              f"{size:,.0f} | {RAW_BYTES / size:,.1f} | {disk:,.0f} | "
                              f"{worst:.2e} | {'yes' if within else 'NO'} | {enc:.2f} | "
                              f"{dec:.2f} |", flush=True)


if __name__ == "__main__":
    main()
