"""How much the engine adds to the computation it runs.

For each model (keras.applications, weights=None, batch 32, 224x224x3), the median time of:
- `model.predict` on the batch (the throughput unit: ratios below are against it);
- a bare reference: one `tf.function` doing the same forward pass and one backward pass per
  explained unit with a `GradientTape`, no framework around it -- the floor for vanilla
  gradients on this machine;
- `explain(gradients)` with `force=False` (compiled once, reused).

Run: .venv/bin/python -m benchmarks.engine [--models ResNet50V2 MobileNetV2] [--repeats 3]
"""

import argparse

import tensorflow as tf

from benchmarks.common import application, images, machine, median_seconds
from explain_lib import explain
from explain_lib.methods.gradient import gradients


def bare_reference(model):
    @tf.function
    def step(x, units):
        with tf.GradientTape() as tape:
            tape.watch(x)
            picked = tf.gather(model(x, training=False), units, batch_dims=1)
        return picked, tf.reduce_mean(tf.abs(tape.gradient(picked, x)), axis=-1)

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ResNet50V2", "MobileNetV2"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    print(f"Machine: {machine()}")
    print(f"batch {args.batch}, {args.size}x{args.size}x3, median of {args.repeats} after warm-up\n")
    print("| model | predict s | bare fwd+bwd s | explain(gradients) s | explain / bare | "
          "explain throughput / predict |")
    print("|---|---|---|---|---|---|")
    x = images(args.batch, args.size)
    units = tf.constant([[i % 1000] for i in range(args.batch)])
    for name in args.models:
        model = application(name, args.size)
        predict = median_seconds(lambda: model.predict(x, batch_size=args.batch, verbose=0),
                                 args.repeats)
        reference = bare_reference(model)
        bare = median_seconds(lambda: [t.numpy() for t in reference(tf.constant(x), units)],
                              args.repeats)
        engine = median_seconds(
            lambda: explain(gradients, model, x, units.numpy(), batch_size=args.batch,
                            verbose=0, force=False),
            args.repeats,
        )
        print(f"| {name} | {predict:.2f} | {bare:.2f} | {engine:.2f} | {engine / bare:.3f} | "
              f"{predict / engine:.3f} |", flush=True)


if __name__ == "__main__":
    main()
