"""What each explaining method costs against the computation it has to do.

Four sections (`--sections`: `time`, `scorecam` and `memory` by default, which take 12 to 20
minutes on a shared 2-core CPU; `field` on request); every comparison is a ratio within one
run:

- `time`: for each model (keras.applications, weights=None, batch B, SxSx3), each registered
  method through `explain` (with its conventional post-processing, the registry's
  `explain_defaults`) against a bare reference: one `tf.function` written here, independently
  of the library, doing the same passes (Grad-CAM: one forward pass and the gradient of the
  unit with respect to the activations; Integrated Gradients with n steps: one forward pass at
  the input, then n forward+backward passes at the path points; ...). Multi-pass methods run
  n = `--passes`
  passes of B inputs (steps, noisy copies, windows, masks, Score-CAM channels), one pass per
  chunk, and again with one pass: `n passes / n x 1 pass` is their time ratio. The bare loops
  run their passes one after the other, as `explain` does to bound memory; `--overlap` lets
  them overlap iterations (`tf.while_loop`'s default), which is faster where one pass does not
  fill the cores, and holds several passes' tensors at once. `model.predict` on the same
  batch is timed beside each method (once): throughput / predict is predict's fastest time
  among all the model's rows over the method's. MB: the CPU allocator's peak during the call,
  above what was allocated before.
- `field`: the configurations the issue quotes for a mature TF library on ResNet50V2, batch
  32 (Integrated Gradients with 16 steps, SmoothGrad with 8 samples), as throughput / predict
  and against n bare forward+backward passes of the batch (the computation's floor).
- `scorecam`: Score-CAM (16 channels per forward pass, its default) against a compiled loop
  doing one forward pass per channel, at batch `--scorecam-batch` (2), passes one after the
  other (with `--overlap`, also a loop overlapping 10 passes, `tf.while_loop`'s default); the
  floor is the time of the C·B masked images at the forward throughput of a batch of 32.
  Then Faster Score-CAM (`max_channels`) keeping C, C/2, C/4 and C/8 channels.
- `memory`: working memory (peak above what was allocated before the call) of SmoothGrad
  with 50 repetitions against 5, of Integrated Gradients with 50 steps against 5, of RISE
  with 50 masks against 5, of GradientSHAP, LIME and KernelSHAP (on an 8x8 grid) with 50
  samples against 5 and of Sobol with 96 masks against 12 (`MEMORY_CASES`;
  `--memory-methods` picks some), at the same chunk size (`--memory-chunk`, 5) and batch
  (`--memory-batch`, 2), each measured in a process of its own.

Memory is read from TensorFlow's CPU allocator (`tf.config.experimental.get_memory_info`),
which counts only when TF_CPU_ALLOCATOR_USE_BFC=true is set before TensorFlow starts: this
module sets it. A process's maximum resident size would count what allocators keep cached,
not what a method holds.

Timings are the fastest of `--repeats` runs. Every function first runs untimed on one sample,
which traces it for every batch size; the timed runs take turns, the order reversed every
other round, so that the load of other processes falls on all of them alike.

Run: .venv/bin/python -m benchmarks.methods [--models ResNet50V2 MobileNetV2] [--batch 32]
     [--size 224] [--repeats 2] [--passes 4] [--methods NAME ...] [--overlap]
     [--sections time scorecam memory field] [--field-models ResNet50V2]
     [--scorecam-models MobileNetV2] [--memory-models ResNet50V2 MobileNetV2]
"""

import os

# Before TensorFlow starts, so that the CPU allocator counts what it hands out.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Callable, Dict, Optional  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import application, images, machine  # noqa: E402
from explain_lib import (
    inspection,  # noqa: E402
    methods,  # noqa: E402
)
from explain_lib.engine.explaining import explain  # noqa: E402
from explain_lib.methods import cams, gradient, perturbation  # noqa: E402

NOISE = 0.1
"""SmoothGrad's noise, as a fraction of each input's range (the library's default)."""

RISE_CELL = 32
RISE_KEEP = 0.5
OVERLAPPED = 10
"""`tf.while_loop`'s default `parallel_iterations`: what a loop written without care runs."""


# ---------------------------------------------------------------------------------------------
# Bare references: plain TensorFlow, one explained unit per sample, `units` (B, 1).


def _compiled(size: int):
    """`tf.function` taking (images (B, S, S, 3), units (B, 1)) of any batch size B, as
    `explain`'s compiled step does: a run on one sample traces it for every batch."""
    return tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32),
                                         tf.TensorSpec((None, 1), tf.int32)])


def _score(model, x, units):
    """The explained unit's score (B,) from a model or an exposed model."""
    outputs = model(x, training=False)
    logits = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    return tf.gather(logits, units, batch_dims=1)[:, 0]


def _normalize(maps, axis=(1, 2)):
    maps = maps - tf.reduce_min(maps, axis=axis, keepdims=True)
    return tf.math.divide_no_nan(maps, tf.reduce_max(maps, axis=axis, keepdims=True))


def _cam_output(maps, size):
    """A CAM's conventional output: positive part, normalised, resized to the input."""
    return tf.image.resize(_normalize(tf.nn.relu(maps))[..., None], (size, size))


def _input_gradient(model, x, units):
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = _score(model, x, units)
    return score, tape.gradient(score, x)


def _activation_gradient(exposed, x, units):
    """Score, activations A and dscore/dA: one forward pass, a backward pass down to A."""
    with tf.GradientTape() as tape:
        logits, activations = exposed(x, training=False)
        score = tf.gather(logits, units, batch_dims=1)[:, 0]
    return score, activations, tape.gradient(score, activations)


def bare_references(model, exposed, passes: int, size: int,
                    parallel_iterations: int = 1) -> Dict[str, Callable]:
    """One compiled function per method, each returning (scores, maps) like `explain`; loops
    run `parallel_iterations` passes at a time."""
    compiled = _compiled(size)

    @compiled
    def gradients(x, units):
        score, grad = _input_gradient(model, x, units)
        return score, _normalize(tf.reduce_mean(tf.abs(grad), -1, keepdims=True))

    @compiled
    def input_x_gradient(x, units):
        score, grad = _input_gradient(model, x, units)
        return score, _normalize(tf.abs(tf.reduce_sum(grad * x, -1, keepdims=True)))

    @compiled
    def integrated_gradients(x, units):
        score = _score(model, x, units)
        total = tf.zeros_like(x[..., 0])
        for step in tf.range(passes):
            tf.autograph.experimental.set_loop_options(parallel_iterations=parallel_iterations)
            alpha = (tf.cast(step, x.dtype) + 0.5) / passes
            _, grad = _input_gradient(model, alpha * x, units)
            total += tf.reduce_sum(grad * x, -1)
        return score, _normalize(tf.abs(total / passes)[..., None])

    # Full-Gradient: the gradients at the input and at every inner biased layer's output.
    logits_layer = inspection.get_logits_layer(model)
    biased = [layer for layer in inspection.layers_with_biases(model, return_biases=False)
              if layer is not logits_layer]
    with_signals = inspection.expose(model, [{"layer": layer} for layer in biased])
    biases = inspection.biases(biased)

    @compiled
    def full_gradients(x, units):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits, *signals = with_signals(x, training=False)
            score = tf.gather(logits, units, batch_dims=1)[:, 0]
        grad_x, *grad_signals = tape.gradient(score, [x, *signals])
        total = tf.reduce_sum(_normalize(tf.abs(grad_x * x), (1, 2, 3)), -1)
        for grad, bias in zip(grad_signals, biases):
            if grad.shape.rank == 4:
                term = tf.reduce_sum(_normalize(tf.abs(grad * bias), (1, 2, 3)), -1, keepdims=True)
                total += tf.image.resize(term, (size, size))[..., 0]
        return score, _normalize(total[..., None])

    def noisy_copies(statistic):
        @compiled
        def over_copies(x, units):
            spread = tf.reduce_max(x, (1, 2, 3), keepdims=True) - tf.reduce_min(
                x, (1, 2, 3), keepdims=True)
            scores = tf.zeros_like(x[:, 0, 0, 0])
            sums = squares = tf.zeros_like(x[..., :1])
            for _ in tf.range(passes):
                tf.autograph.experimental.set_loop_options(parallel_iterations=parallel_iterations)
                noise = tf.random.normal(tf.shape(x)[1:]) * (NOISE * spread)
                score, grad = _input_gradient(model, x + noise, units)
                maps = tf.reduce_mean(tf.abs(grad), -1, keepdims=True)
                scores, sums, squares = scores + score, sums + maps, squares + maps * maps
            mean, mean_square = sums / passes, squares / passes
            maps = {"mean": mean, "variance": mean_square - mean * mean,
                    "square": mean_square}[statistic]
            return scores / passes, _normalize(tf.abs(maps))

        return over_copies

    kernel = tf.convert_to_tensor(logits_layer.kernel)

    @compiled
    def cam(x, units):
        logits, activations = exposed(x, training=False)
        weights = tf.gather(kernel, units[:, 0], axis=1)  # (C, B)
        maps = tf.einsum("bhwc,cb->bhw", activations, weights)
        return tf.gather(logits, units, batch_dims=1)[:, 0], _cam_output(maps, size)

    @compiled
    def gradcam(x, units):
        score, activations, grad = _activation_gradient(exposed, x, units)
        weights = tf.reduce_mean(grad, (1, 2), keepdims=True)
        return score, _cam_output(tf.reduce_sum(weights * activations, -1), size)

    @compiled
    def gradcampp(x, units):
        score, activations, grad = _activation_gradient(exposed, x, units)
        total = tf.reduce_sum(activations, (1, 2), keepdims=True)
        alphas = tf.math.divide_no_nan(grad ** 2, 2 * grad ** 2 + total * grad ** 3)
        weights = tf.reduce_sum(alphas * tf.nn.relu(grad), (1, 2), keepdims=True)
        return score, _cam_output(tf.reduce_sum(weights * activations, -1), size)

    @compiled
    def layercam(x, units):
        score, activations, grad = _activation_gradient(exposed, x, units)
        return score, _cam_output(tf.reduce_sum(tf.nn.relu(grad) * activations, -1), size)

    @compiled
    def scorecam(x, units):
        logits, activations = exposed(x, training=False)
        kept = tf.math.top_k(tf.math.reduce_variance(activations, (1, 2)), passes).indices
        activations = tf.gather(activations, kept, axis=-1, batch_dims=1)
        total = tf.zeros_like(activations[..., 0])
        for channel in tf.range(passes):
            tf.autograph.experimental.set_loop_options(parallel_iterations=parallel_iterations)
            activation = activations[..., channel]
            mask = tf.image.resize(_normalize(activation[..., None]), (size, size))
            total += activation * _score(exposed, mask * x, units)[:, None, None]
        return tf.gather(logits, units, batch_dims=1)[:, 0], _cam_output(total, size)

    windows = occlusion_windows(passes, size)

    @compiled
    def occlusion(x, units):
        score = _score(model, x, units)
        hidden = tf.constant(windows)  # (n, S, S)
        total = tf.zeros_like(x[..., 0])
        for window in tf.range(len(windows)):
            tf.autograph.experimental.set_loop_options(parallel_iterations=parallel_iterations)
            mask = hidden[window][None, :, :, None]
            drop = score - _score(model, x * (1 - mask), units)
            total += hidden[window][None] * drop[:, None, None]
        maps = total / tf.reduce_sum(hidden, 0)
        return score, _normalize(tf.nn.relu(maps)[..., None])

    @compiled
    def rise(x, units):
        score = _score(model, x, units)
        grid = -(-size // RISE_CELL)
        total = tf.zeros_like(x[..., 0])
        for _ in tf.range(passes):
            tf.autograph.experimental.set_loop_options(parallel_iterations=parallel_iterations)
            kept = tf.cast(tf.random.uniform((grid, grid, 1)) < RISE_KEEP, x.dtype)
            smooth = tf.image.resize(kept, ((grid + 1) * RISE_CELL,) * 2)
            top, left = tf.unstack(tf.random.uniform((2,), 0, RISE_CELL, tf.int32))
            mask = smooth[top:top + size, left:left + size, 0]
            total += mask[None] * _score(model, x * mask[None, :, :, None], units)[:, None, None]
        return score, _normalize((total / (passes * RISE_KEEP))[..., None])

    return {
        "gradients": gradients,
        "input_x_gradient": input_x_gradient,
        "integrated_gradients": integrated_gradients,
        "full_gradients": full_gradients,
        "smoothgrad": noisy_copies("mean"),
        "vargrad": noisy_copies("variance"),
        "squaregrad": noisy_copies("square"),
        "cam": cam,
        "gradcam": gradcam,
        "gradcampp": gradcampp,
        "scorecam": scorecam,
        "layercam": layercam,
        "occlusion": occlusion,
        "rise": rise,
    }


def occlusion_windows(passes: int, size: int) -> np.ndarray:
    """k x k non-overlapping windows covering the image, k = round(sqrt(passes)): (k², S, S)."""
    per_side = max(1, int(round(passes ** 0.5)))
    patch = size // per_side
    hidden = np.zeros((per_side * per_side, size, size), np.float32)
    for row in range(per_side):
        for col in range(per_side):
            top, left = row * patch, col * patch
            bottom = size if row == per_side - 1 else top + patch
            right = size if col == per_side - 1 else left + patch
            hidden[row * per_side + col, top:bottom, left:right] = 1
    return hidden


# ---------------------------------------------------------------------------------------------
# Through `explain`.


def library_methods(size: int) -> Dict[str, tuple]:
    """For each method: (uses the exposed model?, params(n)), params(n) giving `explain`'s
    arguments for n passes (ignoring n for single-pass methods), the method under "method".
    Every multi-pass method runs one pass of B inputs per chunk."""
    def fixed(method):
        return lambda n: {"method": method}

    def over_copies(name):
        return lambda n: {"method": methods.get(name).function, "repetitions": n,
                          "noise": NOISE, "noise_chunk_size": 1}

    def integrated_gradients(n):
        return {"method": gradient.integrated_gradients, "n_steps": n, "chunk_size": 1}

    def occlusion(n):
        patch = size // max(1, int(round(n ** 0.5)))
        return {"method": perturbation.occlusion, "patch_size": patch, "stride": patch,
                "chunk_size": 1}

    return {
        "gradients": (False, fixed(gradient.gradients)),
        "input_x_gradient": (False, fixed(gradient.input_x_gradient)),
        "integrated_gradients": (False, integrated_gradients),
        "full_gradients": (False, fixed(gradient.full_gradients)),
        "smoothgrad": (False, over_copies("smoothgrad")),
        "vargrad": (False, over_copies("vargrad")),
        "squaregrad": (False, over_copies("squaregrad")),
        "cam": (True, fixed(cams.cam)),
        "gradcam": (True, fixed(cams.gradcam)),
        "gradcampp": (True, fixed(cams.gradcampp)),
        "scorecam": (True, lambda n: {"method": cams.scorecam, "max_channels": n,
                                      "chunk_size": 1}),
        "layercam": (True, fixed(cams.layercam)),
        "occlusion": (False, occlusion),
        "rise": (False, lambda n: {"method": perturbation.rise, "masks": n, "cell_size": RISE_CELL,
                                   "keep_probability": RISE_KEEP, "chunk_size": 1}),
    }


MULTI_PASS = ("integrated_gradients", "smoothgrad", "vargrad", "squaregrad", "scorecam",
              "occlusion", "rise")
"""Methods whose passes scale with a parameter. VarGrad and SquareGrad are SmoothGrad's loop
with other statistics: their one-pass run is SmoothGrad's, not repeated."""


def _through_explain(name: str, target, batch: int, params: dict) -> Callable:
    params = {**methods.get(name).explain_defaults, **params}
    method = params.pop("method")
    return lambda x, y: explain(method, target, x, y, batch_size=batch, verbose=0, **params)


def _numpy(fn):
    """A compiled reference called like `explain`: numpy in, numpy out."""
    return lambda x, y: [t.numpy() for t in fn(tf.constant(x), tf.constant(y))]


def _working_memory(fn, *args) -> Optional[int]:
    """Run `fn(*args)`; the allocator's peak during it above what was allocated before
    (None where TensorFlow does not count CPU allocations)."""
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    except ValueError:
        fn(*args)
        return None
    fn(*args)
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def interleaved(fns: Dict[str, Callable[[np.ndarray, np.ndarray], object]], x: np.ndarray,
                y: np.ndarray, repeats: int, once: tuple = ()) -> Dict[str, tuple]:
    """For each `fn(x, y)`: (fastest time of `repeats` runs, largest working memory); the
    functions named in `once` run in the first round only.

    Each function first runs untimed on one sample (the compiled functions take any batch
    size, so this traces them at little cost); the timed runs take turns, the order reversed
    every other round, so that load from other processes falls on all of them alike.
    """
    for fn in fns.values():
        fn(x[:1], y[:1])
    times = {name: [] for name in fns}
    memory = {name: None for name in fns}
    for round_ in range(repeats):
        names = [name for name in fns if round_ == 0 or name not in once]
        for name in (names if round_ % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            used = _working_memory(fns[name], x, y)
            times[name].append(time.perf_counter() - start)
            if used is not None:
                memory[name] = max(used, memory[name] or 0)
    return {name: (min(times[name]), memory[name]) for name in fns}


def _mb(value: Optional[int]) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _batch(batch: int, size: int):
    return images(batch, size), np.array([[i % 1000] for i in range(batch)], np.int32)


def time_section(args):
    overlap = "overlapped (tf.while_loop's default)" if args.overlap else "one after the other"
    print(f"\n### Methods against bare references (batch {args.batch}, {args.size}x{args.size}x3, "
          f"n = {args.passes} passes for multi-pass methods, bare loops' passes {overlap}, "
          f"fastest of {args.repeats})\n")
    print("| model | method | passes of B inputs | explain s | bare s | explain / bare | "
          "n passes / n x 1 pass | throughput / predict | explain MB | bare MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    x, y = _batch(args.batch, args.size)
    for name in args.models:
        model = application(name, args.size)
        exposed = inspection.expose(model)
        bare = bare_references(model, exposed, args.passes, args.size,
                               OVERLAPPED if args.overlap else 1)
        methods = library_methods(args.size)

        def predict(x, y):
            return model.predict(x, batch_size=args.batch, verbose=0)

        # Whole-batch runs first, untimed: predict's trace for the batch, and the kernels'
        # one-time set-up at the batch's shapes, forward and backward.
        predict(x, y)
        _numpy(bare["gradients"])(x, y)
        one_pass, rows, predict_seconds = {}, [], []
        for method_name in args.methods or list(methods):
            uses_exposed, params = methods[method_name]
            target = exposed if uses_exposed else model
            fns = {"predict": predict, "bare": _numpy(bare[method_name]),
                   "explain": _through_explain(method_name, target, args.batch,
                                               params(args.passes))}
            if method_name in MULTI_PASS and method_name not in ("vargrad", "squaregrad"):
                fns["explain 1 pass"] = _through_explain(method_name, target, args.batch,
                                                         params(1))
            results = interleaved(fns, x, y, args.repeats, once=("predict",))
            seconds = {key: value[0] for key, value in results.items()}
            predict_seconds.append(seconds["predict"])
            if "explain 1 pass" in seconds:
                one_pass[method_name] = seconds["explain 1 pass"]
            single = one_pass.get("smoothgrad" if method_name in ("vargrad", "squaregrad")
                                  else method_name)
            scaling = f"{seconds['explain'] / (args.passes * single):.2f}" if single else "-"
            rows.append((method_name, seconds, scaling, results))
        # predict is the same computation in every row: its fastest run is the steadiest unit.
        predict_time = min(predict_seconds)
        for method_name, seconds, scaling, results in rows:
            print(f"| {name} | {method_name} | {describe_passes(method_name, args.passes)} | "
                  f"{seconds['explain']:.2f} | {seconds['bare']:.2f} | "
                  f"{seconds['explain'] / seconds['bare']:.3f} | {scaling} | "
                  f"{predict_time / seconds['explain']:.3f} | "
                  f"{_mb(results['explain'][1])} | {_mb(results['bare'][1])} |")
        print(f"| {name} | predict | 1 fwd | {predict_time:.2f} | | | | 1 | | |", flush=True)


def describe_passes(method_name: str, n: int) -> str:
    windows = max(1, int(round(n ** 0.5))) ** 2
    return {
        "integrated_gradients": f"1 fwd + {n} fwd+bwd",
        "smoothgrad": f"{n} fwd+bwd",
        "vargrad": f"{n} fwd+bwd",
        "squaregrad": f"{n} fwd+bwd",
        "cam": "1 fwd",
        "gradcam": "1 fwd + bwd to A",
        "gradcampp": "1 fwd + bwd to A",
        "layercam": "1 fwd + bwd to A",
        "scorecam": f"1 fwd + {n} fwd",
        "occlusion": f"1 fwd + {windows} fwd",
        "rise": f"1 fwd + {n} fwd",
    }.get(method_name, "1 fwd+bwd")


FIELD = {"integrated_gradients": (16, 0.032), "smoothgrad": (8, 0.064)}
"""The issue's figures for a mature TF library (ResNet50V2, batch 32, this machine):
passes, throughput / predict."""


def field_section(args):
    print(f"\n### The issue's configurations (batch {args.batch}, {args.size}x{args.size}x3, one "
          f"pass of B inputs per chunk, fastest of {args.field_repeats})\n")
    print("| model | method | passes | explain s | predict s | bare fwd+bwd s | "
          "explain / (n x bare fwd+bwd) | throughput / predict | mature TF library (issue) |")
    print("|---|---|---|---|---|---|---|---|---|")
    x, y = _batch(args.batch, args.size)
    methods = library_methods(args.size)
    for name in args.field_models:
        model = application(name, args.size)
        pass_ = _compiled(args.size)(lambda x, units: _input_gradient(model, x, units)[1])
        fns = {"predict": lambda x, y: model.predict(x, batch_size=args.batch, verbose=0),
               "fwd+bwd": _numpy(pass_)}
        fns["predict"](x, y)
        for method_name, (passes, _) in FIELD.items():
            fns[method_name] = _through_explain(method_name, model, args.batch,
                                                methods[method_name][1](passes))
        seconds = {key: value[0] for key, value in interleaved(fns, x, y,
                                                               args.field_repeats).items()}
        for method_name, (passes, quoted) in FIELD.items():
            print(f"| {name} | {method_name} | {describe_passes(method_name, passes)} | "
                  f"{seconds[method_name]:.2f} | {seconds['predict']:.2f} | "
                  f"{seconds['fwd+bwd']:.2f} | "
                  f"{seconds[method_name] / (passes * seconds['fwd+bwd']):.3f} | "
                  f"{seconds['predict'] / seconds[method_name]:.3f} | {quoted} |", flush=True)


# ---------------------------------------------------------------------------------------------
# Score-CAM: channels batched per forward pass against one forward pass per channel.


def per_channel_loop(exposed, size: int, parallel_iterations: int):
    """Score-CAM the direct way: a compiled loop, one forward pass of the B masked inputs
    per channel, `parallel_iterations` channels at a time."""

    @_compiled(size)
    def loop(x, units):
        logits, activations = exposed(x, training=False)
        total = tf.zeros_like(activations[..., 0])
        for channel in tf.range(tf.shape(activations)[-1]):
            tf.autograph.experimental.set_loop_options(parallel_iterations=parallel_iterations)
            activation = activations[..., channel]
            mask = tf.image.resize(_normalize(activation[..., None]), (size, size))
            total += activation * _score(exposed, mask * x, units)[:, None, None]
        return tf.gather(logits, units, batch_dims=1)[:, 0], _cam_output(total, size)

    return loop


def scorecam_section(args):
    batch = args.scorecam_batch
    print(f"\n### Score-CAM (batch {batch}, {args.size}x{args.size}x3, fastest of "
          f"{args.scorecam_repeats})\n")
    print("| model | channels C | loop, one pass at a time s | loop, 10 passes overlapped s | "
          "floor s | scorecam s | loops / scorecam | max_channels | scorecam s | "
          "time / time at C | channels / C |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    x, y = _batch(batch, args.size)
    x32, y32 = _batch(32, args.size)
    for name in args.scorecam_models:
        model = application(name, args.size)
        exposed = inspection.expose(model)
        channels = int(exposed.outputs[1].shape[-1])
        kept = [channels] + [channels // fraction for fraction in (2, 4, 8)]
        forward = _numpy(_compiled(args.size)(lambda x, units: _score(exposed, x, units)))

        def scorecam(max_channels):
            return _through_explain("scorecam", exposed, batch,
                                    {"method": cams.scorecam, "max_channels": max_channels})

        fns = {"sequential": _numpy(per_channel_loop(exposed, args.size, 1)),
               "forward 32": lambda x, y: forward(x32, y32)}
        if args.overlap:
            fns["overlapped"] = _numpy(per_channel_loop(exposed, args.size, OVERLAPPED))
        fns.update({count: scorecam(count) for count in kept})
        seconds = {key: value[0] for key, value in interleaved(fns, x, y,
                                                               args.scorecam_repeats).items()}
        floor = seconds["forward 32"] * channels * batch / 32
        full = seconds[channels]
        overlapped = seconds.get("overlapped")
        for count in kept:
            head = (f"| {name} | {channels} | {seconds['sequential']:.2f} | "
                    f"{'-' if overlapped is None else f'{overlapped:.2f}'} | {floor:.2f} | "
                    f"{full:.2f} | {seconds['sequential'] / full:.2f}"
                    f"{'' if overlapped is None else f', {overlapped / full:.2f}'} |"
                    if count == channels else "| | | | | | | |")
            print(f"{head} {count} | {seconds[count]:.2f} | {seconds[count] / full:.3f} | "
                  f"{count / channels:.3f} |", flush=True)


# ---------------------------------------------------------------------------------------------
# Peak memory, one process per measurement.

MEMORY_CASES = {
    # method: (the parameter counting the passes, label, its small and large values, the
    # chunk-size parameter, other parameters)
    "smoothgrad": ("repetitions", "SmoothGrad", (5, 50), "noise_chunk_size", {"noise": NOISE}),
    "integrated_gradients": ("n_steps", "Integrated Gradients", (5, 50), "chunk_size", {}),
    "rise": ("masks", "RISE", (5, 50), "chunk_size", {}),
    "gradient_shap": ("n_samples", "GradientSHAP", (5, 50), "chunk_size", {}),
    # Sobol's passes are n_designs · (grid_size² + 2): 12 and 96 masks on a 2x2 grid.
    "sobol": ("n_designs", "Sobol", (2, 16), "chunk_size", {"grid_size": 2}),
    "lime": ("n_samples", "LIME", (5, 50), "chunk_size",
             {"segmentation": "grid", "grid_size": 8}),
    "kernel_shap": ("n_samples", "KernelSHAP", (5, 50), "chunk_size",
                    {"segmentation": "grid", "grid_size": 8}),
}


def measure_memory(model_name: str, method_name: str, count: int, batch: int, size: int,
                   chunk: int) -> dict:
    """In this process: the working memory of one `explain` call."""
    model = application(model_name, size)
    x, y = _batch(batch, size)
    method = methods.get(method_name)
    parameter, _, _, chunk_parameter, others = MEMORY_CASES[method_name]
    params = {**method.explain_defaults, **others, parameter: count, chunk_parameter: chunk}
    method = method.function
    start = time.perf_counter()
    working = _working_memory(lambda: explain(method, model, x, y, batch_size=batch, verbose=0,
                                              **params))
    return {"working": working, "seconds": time.perf_counter() - start}


def memory_section(args):
    print(f"\n### Peak memory (batch {args.memory_batch}, {args.size}x{args.size}x3, "
          f"chunk_size {args.memory_chunk}: {args.memory_chunk * args.memory_batch} inputs per "
          "pass; one process per measurement)\n")
    print("| model | method | working MB at small | at large | large / small | s at small | "
          "s at large |")
    print("|---|---|---|---|---|---|---|")
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}
    for name in args.memory_models:
        for method_name, (parameter, label, counts, _, _) in MEMORY_CASES.items():
            if args.memory_methods and method_name not in args.memory_methods:
                continue
            results = {}
            for count in counts:
                probe = json.dumps([name, method_name, count, args.memory_batch, args.size,
                                    args.memory_chunk])
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.methods", "--memory-probe", probe],
                    env=env, capture_output=True, text=True, check=True,
                )
                results[count] = json.loads(done.stdout.strip().splitlines()[-1])
            small, large = results[counts[0]], results[counts[1]]
            print(f"| {name} | {label} ({parameter} {counts[0]} / {counts[1]}) | "
                  f"{_mb(small['working'])} | {_mb(large['working'])} | "
                  f"{large['working'] / small['working']:.3f} | "
                  f"{small['seconds']:.1f} | {large['seconds']:.1f} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ResNet50V2", "MobileNetV2"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--passes", type=int, default=4,
                        help="steps, copies, windows, masks or channels of multi-pass methods")
    parser.add_argument("--methods", nargs="+", help="time only these methods (default: all)")
    parser.add_argument("--overlap", action="store_true",
                        help="let the bare references' loops overlap their passes; Score-CAM: "
                             "also time a loop overlapping 10 channels")
    parser.add_argument("--sections", nargs="+", default=["time", "scorecam", "memory"],
                        choices=["time", "field", "scorecam", "memory"])
    parser.add_argument("--field-models", nargs="+", default=["ResNet50V2"])
    parser.add_argument("--field-repeats", type=int, default=2)
    parser.add_argument("--scorecam-models", nargs="+", default=["MobileNetV2"])
    parser.add_argument("--scorecam-batch", type=int, default=2)
    parser.add_argument("--scorecam-repeats", type=int, default=1)
    parser.add_argument("--memory-models", nargs="+", default=["ResNet50V2", "MobileNetV2"])
    parser.add_argument("--memory-batch", type=int, default=2)
    parser.add_argument("--memory-chunk", type=int, default=5)
    parser.add_argument("--memory-methods", nargs="+",
                        help="measure only these methods' memory (default: every case)")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_probe:
        print(json.dumps(measure_memory(*json.loads(args.memory_probe))))
        return
    start = time.perf_counter()
    print(f"Machine: {machine()}")
    sections = {"time": time_section, "field": field_section, "scorecam": scorecam_section,
                "memory": memory_section}
    for section in args.sections:
        sections[section](args)
    print(f"\nTotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
