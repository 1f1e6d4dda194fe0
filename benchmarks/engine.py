"""How much the engine adds to the computation it runs.

For each model (keras.applications, weights=None, batch 32, 224x224x3), the median time of:
- `model.predict` on the batch (the throughput unit: ratios below are against it);
- a bare reference: one `tf.function` doing the same forward pass and one backward pass per
  explained unit with a `GradientTape`, no framework around it -- the floor for vanilla
  gradients and for Grad-CAM (resized to the input, as `explain` does by default) on this
  machine;
- `explain(gradients)` and `explain(gradcam)` with their default arguments, as users call
  them, timed after a first call (which compiles the step the later ones reuse).

Then (`predicted`) explaining each image's top-1 predicted unit, for gradients and Grad-CAM
(each with its conventional post-processing): `explain_predicted`, which chooses the unit
from the method's own forward pass, against `explain` with the units given (the same work
when the units are known) and against predicting first (`model.predict_on_batch`, then
`explain` with the predicted units: one more forward pass).

Run: .venv/bin/python -m benchmarks.engine [--models ResNet50V2 MobileNetV2] [--repeats 3]
     [--sections overhead predicted] [--head softmax] [--batch 32]
     (--models ConvNeXtTiny ViT-B/16 --head softmax: the models users bring, with the head
     they have; the references compute on the same model without its softmax)
"""

import argparse

import numpy as np
import tensorflow as tf

from benchmarks.common import APPLICATIONS, application, images, machine, median_seconds
from explain_lib import explain, explain_predicted, inspection, methods
from explain_lib.methods import cams
from explain_lib.methods.gradient import gradients


def bare_references(model, exposed, size):
    """Plain compiled functions doing what `explain` does with its default arguments: one
    forward pass and the gradient of the explained unit, the gradients method's map (the
    channel mean of |gradient|), or Grad-CAM's (channels weighted by their mean gradient,
    resized to the input)."""

    @tf.function
    def gradients_step(x, units):
        with tf.GradientTape() as tape:
            tape.watch(x)
            picked = tf.gather(model(x, training=False), units, batch_dims=1)
        return picked, tf.reduce_mean(tf.abs(tape.gradient(picked, x)), axis=-1)

    @tf.function
    def gradcam_step(x, units):
        with tf.GradientTape() as tape:
            logits, activations = exposed(x, training=False)
            picked = tf.gather(logits, units, batch_dims=1)
        grad = tape.gradient(picked, activations)
        weights = tf.reduce_mean(grad, axis=(1, 2), keepdims=True)
        maps = tf.reduce_sum(weights * activations, axis=-1, keepdims=True)
        return picked, tf.image.resize(maps, (size, size))

    return {"gradients": gradients_step, "gradcam": gradcam_step}


def overhead_section(args, x):
    print("| model | head | method | predict s | bare compiled function s | explain, default "
          "arguments s | explain / bare | explain throughput / predict |")
    print("|---|---|---|---|---|---|---|---|")
    units = tf.constant([[i % 1000] for i in range(args.batch)])
    for name in args.models:
        model = application(name, args.size, args.head)
        # The bare references compute on the scores explain explains: the model without
        # its softmax (the same layers), exposed as explain exposes it by default.
        scores = inspection.scores_model(model)
        exposed = inspection.expose(model)
        predict = median_seconds(lambda: model.predict(x, batch_size=args.batch, verbose=0),
                                 args.repeats)
        references = bare_references(scores, exposed, args.size)
        # The user's call: the plain model, for Grad-CAM too (explain exposes it itself).
        for method in (gradients, cams.gradcam):
            reference = references[method.__name__]
            bare = median_seconds(lambda: [t.numpy() for t in reference(tf.constant(x), units)],
                                  args.repeats)
            # Default arguments, as a user calls it; timed after a first call.
            engine = median_seconds(lambda: explain(method, model, x, units.numpy(),
                                                    verbose=0), args.repeats)
            print(f"| {name} | {args.head or 'linear'} | {method.__name__} | {predict:.2f} | "
                  f"{bare:.2f} | {engine:.2f} | {engine / bare:.3f} | "
                  f"{predict / engine:.3f} |", flush=True)


def predicted_section(args, x):
    print("\n| model | method | explain, units given s | explain_predicted s | "
          "predict, then explain s | explain_predicted / given | predict-then-explain / "
          "explain_predicted |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        model = application(name, args.size, args.head)
        exposed = inspection.expose(model)
        top1 = np.argmax(model.predict_on_batch(x), axis=1)[:, None].astype("int32")
        for method, explained in ((gradients, model), (cams.gradcam, exposed)):
            params = dict(batch_size=args.batch, verbose=0,
                          **methods.get(method.__name__).explain_defaults)

            def predicted():
                return explain_predicted(method, explained, x, top_k=1, **params)

            def given():
                return explain(method, explained, x, top1, **params)

            def predict_then_explain():
                units = np.argmax(model.predict_on_batch(x), axis=1)[:, None].astype("int32")
                return explain(method, explained, x, units, **params)

            np.testing.assert_array_equal(predicted()[0], top1)
            seconds = {fn.__name__: median_seconds(fn, args.repeats)
                       for fn in (given, predicted, predict_then_explain)}
            print(f"| {name} | {method.__name__} | {seconds['given']:.2f} | "
                  f"{seconds['predicted']:.2f} | {seconds['predict_then_explain']:.2f} | "
                  f"{seconds['predicted'] / seconds['given']:.3f} | "
                  f"{seconds['predict_then_explain'] / seconds['predicted']:.3f} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ResNet50V2", "MobileNetV2"],
                        help=f"{', '.join(APPLICATIONS)} or ViT-B/16.")
    parser.add_argument("--head", default=None, choices=[None, "softmax"],
                        help="The models' head: linear (default) or softmax "
                        "(keras.applications' default, which explain explains on its logits).")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", nargs="+", default=["overhead", "predicted"],
                        choices=["overhead", "predicted"])
    args = parser.parse_args(argv)

    print(f"Machine: {machine()}")
    print(f"batch {args.batch}, {args.size}x{args.size}x3, "
          f"median of {args.repeats} after warm-up\n")
    x = images(args.batch, args.size)
    sections = {"overhead": overhead_section, "predicted": predicted_section}
    for section in args.sections:
        sections[section](args, x)


if __name__ == "__main__":
    main()
