"""What the perturbation metrics cost against the forward passes they have to make.

Two sections (`--sections cost memory`, both by default; 15 to 20 minutes on a shared
2-core CPU):

- `cost`: deletion and insertion with n steps make n + 1 forward passes of the batch (the
  curve's points, the intact start included), MuFidelity with n subsets n + 1. Each runs
  through `explain_lib.evaluate` (one compiled step, `chunk_size` steps per forward pass)
  and is compared, within one run, with a bare compiled loop of n forward passes of the
  same batch (a `tf.while_loop`, one pass after the other, as the metrics run their
  chunks): `metric / n passes` is the cost ratio. The metric makes (n + 1) / n times the
  passes, but `chunk_size` steps share one forward pass of chunk_size × B images, which a
  CPU runs faster per image than B at a time: the ratio can fall below 1.
- `memory`: working memory (the CPU allocator's peak above what was allocated before the
  call) of deletion with 10 and with 100 steps, and of MuFidelity with 20 and 200 subsets,
  at the same chunk size (`--memory-chunk`, 5, so that both counts run full chunks), each
  measured in a process of its own: flat, because one chunk of perturbed copies is alive
  at a time.

Timings are the fastest of `--repeats` runs after one untimed run (which traces); the runs
take turns, so that the load of other processes falls on all of them alike. Memory is read
from TensorFlow's CPU allocator, which counts only when TF_CPU_ALLOCATOR_USE_BFC=true is set
before TensorFlow starts: this module sets it.

Run: .venv/bin/python -m benchmarks.metrics [--model MobileNetV2] [--size 128] [--batch 8]
     [--steps 20 100] [--chunks 4 16] [--repeats 3] [--memory-chunk 5]
     [--sections cost memory]
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
from explain_lib.engine.evaluating import evaluate  # noqa: E402


def bare_passes(model, passes: int) -> Callable:
    """n forward passes of the batch in a compiled loop, one after the other."""

    @tf.function
    def run(x):
        def body(i, total):
            return i + 1, total + tf.reduce_sum(model(x, training=False))

        return tf.while_loop(lambda i, _: i < passes, body, (0, 0.0), parallel_iterations=1)[1]

    return lambda x: run(tf.constant(x)).numpy()


def _maps(x: np.ndarray) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 1, (len(x), 7, 7, 1)).astype("float32")


def metric_call(name: str, model, x, units, count: int, chunk: int) -> Callable:
    maps = _maps(x)
    params = ({"n_samples": count} if name == "mufidelity" else {"n_steps": count})
    return lambda x: evaluate(name, model, x, units, maps, batch_size=len(x), verbose=0,
                              chunk_size=chunk, **params)


def fastest(fns: Dict[str, Callable], x, repeats: int) -> Dict[str, float]:
    for fn in fns.values():
        fn(x)  # traces
    times = {name: [] for name in fns}
    for round_ in range(repeats):
        for name in (list(fns) if round_ % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            fns[name](x)
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def cost_section(args):
    model = application(args.model, args.size)
    x = images(args.batch, args.size)
    units = np.arange(args.batch) % 1000
    print(f"\n### Cost against bare forward passes ({args.model}, weights=None, batch "
          f"{args.batch}, {args.size}x{args.size}x3, fastest of {args.repeats})\n")
    print("| metric | n | chunk_size | passes made | metric s | n bare passes s | "
          "metric / n passes | passes made / n |")
    print("|---|---|---|---|---|---|---|---|")
    names = ("deletion", "insertion", "mufidelity")
    for count in args.steps:
        fns = {"bare": bare_passes(model, count)}
        for name in names:
            for chunk in args.chunks:
                fns[name, chunk] = metric_call(name, model, x, units, count, chunk)
        seconds = fastest(fns, x, args.repeats)
        for name in names:
            for chunk in args.chunks:
                label = "subsets" if name == "mufidelity" else "steps"
                print(f"| {name} | {count} {label} | {chunk} | {count + 1} | "
                      f"{seconds[name, chunk]:.2f} | {seconds['bare']:.2f} | "
                      f"{seconds[name, chunk] / seconds['bare']:.3f} | "
                      f"{(count + 1) / count:.3f} |", flush=True)


def _working_memory(fn) -> Optional[int]:
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    except ValueError:
        fn()
        return None
    fn()
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def measure_memory(name: str, count: int, model_name: str, size: int, batch: int,
                   chunk: int) -> dict:
    """In this process: the working memory of one `evaluate` call."""
    model = application(model_name, size)
    x = images(batch, size)
    call = metric_call(name, model, x, np.arange(batch) % 1000, count, chunk)
    start = time.perf_counter()
    return {"working": _working_memory(lambda: call(x)),
            "seconds": time.perf_counter() - start}


def memory_section(args):
    print(f"\n### Working memory ({args.model}, batch {args.batch}, {args.size}x{args.size}x3, "
          f"chunk_size {args.memory_chunk}: {args.memory_chunk * args.batch} images per pass; "
          "one process per measurement)\n")
    print("| metric | small | large | working MB small | large | large / small | s small | "
          "s large |")
    print("|---|---|---|---|---|---|---|---|")
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}
    for name, counts in (("deletion", (10, 100)), ("mufidelity", (20, 200))):
        results = {}
        for count in counts:
            probe = json.dumps([name, count, args.model, args.size, args.batch,
                                args.memory_chunk])
            done = subprocess.run([sys.executable, "-m", "benchmarks.metrics", "--memory-probe",
                                   probe], env=env, capture_output=True, text=True, check=True)
            results[count] = json.loads(done.stdout.strip().splitlines()[-1])
        small, large = (results[c] for c in counts)
        print(f"| {name} | {counts[0]} | {counts[1]} | {small['working'] / 2**20:.0f} | "
              f"{large['working'] / 2**20:.0f} | {large['working'] / small['working']:.3f} | "
              f"{small['seconds']:.1f} | {large['seconds']:.1f} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="MobileNetV2", choices=["MobileNetV2", "ResNet50V2"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--chunks", type=int, nargs="+", default=[4, 16],
                        help="the metrics' chunk_size in the cost section (16: the default)")
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 100],
                        help="n: steps of deletion and insertion, subsets of MuFidelity")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-chunk", type=int, default=5,
                        help="the metrics' chunk_size in the memory section")
    parser.add_argument("--sections", nargs="+", default=["cost", "memory"],
                        choices=["cost", "memory"])
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        print(json.dumps(measure_memory(*json.loads(args.memory_probe))))
        return
    start = time.perf_counter()
    print(f"Machine: {machine()}")
    for section in args.sections:
        {"cost": cost_section, "memory": memory_section}[section](args)
    print(f"\nTotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
