"""What the Beam job costs beyond the explaining itself, run as users run it.

Sections (`--sections`, all by default):

- `overhead`: on the same records, model and method, in one run:
  - in-process: `explain_lib.explain` with the method's conventional parameters on the
    decoded images (compiled on a first call, then timed);
  - the job: `python -m pipeline` in a fresh process, with default options (DirectRunner;
    `--units_key label`, so both explain the same units; the map size the job's default,
    `auto`, implies, which the in-process call uses too), over N and over 2N records;
  `--repeats` rounds (5), each round's figures from its own five runs, in the order
  N-record job, in-process, 2N-record job, in-process, N-record job: symmetric about the
  2N-record job, so that a drift of the machine's speed during the round, linear in time,
  cancels. The difference of the 2N-record job and the mean of the N-record ones is the
  job's steady-state cost of N records (its fixed start-up, imports, model load and
  tracing, cancels); the per-record overhead is that cost per record minus in-process
  `explain`'s (the mean of its two runs), and the start-up is the N-record runs' mean
  less N records at the steady-state cost. The round of median overhead is reported,
  with the range over the rounds. The cases: `tiny` (32x32 PNG records, the demo
  CNN), `mobilenet` (224x224 JPEG records, MobileNetV2 with `weights=None`), and the
  models users bring with their softmax heads, `convnext` (ConvNeXtTiny) and `vit`
  (KerasHub's ViT-B/16), 224x224 JPEG records (`--cases` chooses; the default is the
  first two).
- `memory`: the peak resident memory of `python -m pipeline` (a fresh process, default
  options) over 32x32 PNG records with the demo CNN, at each of `--memory-records`.

Run: .venv/bin/python -m benchmarks.pipeline [--sections overhead memory]
     [--cases tiny mobilenet] [--method gradcam] [--job-args --direct_num_workers=2 ...]
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Tuple

import keras
import numpy as np

from benchmarks.common import application, machine
from explain_lib import explain, inspection, methods
from explain_lib.io import iterate_records
from pipeline import demo
from pipeline.settings import with_map_size
from pipeline.worker.decoding import decode_record
from pipeline.worker.parsing import RecordSpec, check_record

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    # name: (model, image size, record format, N records, head)
    "tiny": ("demo", 32, "png", 20000, None),
    "mobilenet": ("MobileNetV2", 224, "jpeg", 1024, None),
    # The models users bring, with the softmax head they have (explained on its logits).
    "convnext": ("ConvNeXtTiny", 224, "jpeg", 128, "softmax"),
    "vit": ("ViT-B/16", 224, "jpeg", 64, "softmax"),
}


def write_dataset(directory: str, count: int, size: int, image_format: str, seed: int) -> str:
    """`count` shape images as TFRecords of `image_format` bytes with labels and ids (written
    in chunks, so that 100,000 records need little memory here)."""
    path = os.path.join(directory, f"records-{image_format}-{size}-{count}-{seed}.tfrecord")
    import tensorflow as tf

    with tf.io.TFRecordWriter(path) as writer:
        for start in range(0, count, 1000):
            images, labels = demo.make_shapes(min(1000, count - start), seed=seed + start,
                                              size=size, classes=4)
            for i, (image, label) in enumerate(zip(images, labels)):
                writer.write(demo.make_example(demo.encode_image(image, image_format),
                                               int(label), f"b{seed}-{start + i}"))
    return path


def build_model(name: str, size: int, directory: str, head=None) -> str:
    model = (demo.make_model((size, size, 3), 4) if name == "demo"
             else application(name, size, head))
    path = os.path.join(directory, f"{name.replace('/', '-')}-{size}-{head}.keras")
    keras.saving.save_model(model, path)
    return path


def run_job(input_path: str, output: str, model_path: str, method: str, job_args) -> float:
    """Wall seconds of `python -m pipeline` over `input_path` with `method`, the records'
    labels as units, and `job_args` (`time_job`)."""
    return time_job(["--input", input_path, "--output", output, "--model", model_path,
                     "--method", method, "--units_key", "label", *job_args])


def time_job(arguments) -> float:
    """Wall seconds of `python -m pipeline ARGUMENTS` in a fresh process (`job_times`)."""
    return job_times(arguments)[0]


def job_times(arguments, prefix=()) -> Tuple[float, float]:
    """Wall seconds and core-seconds (user and system, all its threads) of `python -m
    pipeline ARGUMENTS` in a fresh process (the README's command), run under `prefix`
    (`taskset -c 0`: one core); RuntimeError when it fails or dead-letters a record."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    process = subprocess.run(
        [*prefix, sys.executable, "-m", "pipeline", *arguments],
        cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0 or "records dead-lettered: 0" not in process.stdout:
        raise RuntimeError(f"the job failed: {process.stdout[-2000:]} {process.stderr[-3000:]}")
    return seconds, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def read_job_inputs(input_path: str, size: int):
    """(images (N, size, size, 3) float32, labels (N, 1)): the pixels and units the job
    explains, read with its own functions."""
    spec = RecordSpec(image_size=(size, size), channels=3, num_units=1000, units_key="label")
    records = [decode_record(check_record(r, spec), spec) for r in iterate_records(input_path)]
    return (np.stack([r.image for r in records]).astype(np.float32),
            np.stack([r.units for r in records]))


def in_process_timer(model_path: str, input_path: str, method_name: str, batch: int):
    """A function timing one call of `explain` on the records' decoded images (seconds),
    made after a first call."""
    model = keras.saving.load_model(model_path, compile=False)
    images, labels = read_job_inputs(input_path, model.inputs[0].shape[1])
    return explain_timer(model, method_name, images, labels, batch)


def explain_timer(model, method_name: str, images, labels, batch: int, xla: bool = False):
    """A function timing one call (seconds) of `explain` as the job calls it (the method's
    conventional parameters, the job's default map size) on `images`, made after a first
    call; CAM methods on the model exposed as the job exposes it; under XLA with `xla`, as
    the job's `--jit_compile`."""
    method = methods.get(method_name)
    explained = inspection.expose(model) if method.exposed else model
    if xla:
        explained = keras.Model(explained.inputs, explained.outputs)
        explained.jit_compile = True
    params = {**method.explain_defaults, **with_map_size({}, None)}

    def call():
        explain(method.function, explained, images, labels, batch_size=batch, verbose=0,
                **params)

    def timed() -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    call()
    return timed


def explain_seconds(model, method_name: str, images, labels, batch: int, repeats: int,
                    xla: bool = False) -> float:
    """Median seconds of `explain` as the job calls it (see `explain_timer`)."""
    timed = explain_timer(model, method_name, images, labels, batch, xla)
    return float(np.median([timed() for _ in range(repeats)]))


def overhead_section(args, directory):
    print(f"\n### Per-record overhead of the job ({args.method}, batch {args.batch}, "
          f"DirectRunner {' '.join(args.job_args) or 'defaults'}; median of {args.repeats} "
          "rounds)\n")
    print("| case | records N | in-process ms/record | job steady-state ms/record | "
          "overhead ms/record | overhead range ms/record | in-process / job throughput | "
          "job start-up s | job N s | job 2N s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        model_name, size, image_format, count, head = CASES[case]
        count = args.records or count
        model_path = build_model(model_name, size, directory, head)
        small = write_dataset(directory, count, size, image_format, seed=1)
        large = write_dataset(directory, 2 * count, size, image_format, seed=1_000_000)
        timed_explain = in_process_timer(model_path, small, args.method, args.batch)
        run_job(write_dataset(directory, args.batch, size, image_format, seed=7), os.path.join(
            directory, f"{case}-warm", "expl"), model_path, args.method, args.job_args)
        # This machine's speed drifts by 20-50% over tens of minutes, and by several
        # percent within a round (a few minutes), as much as the overhead measured. So
        # each round's figures come from its own runs only, made symmetric about the
        # 2N-record job (see the module docstring), and the median round counts.
        rounds = []
        for _ in range(args.repeats):
            times = []
            for run in ("n", "explain", "2n", "explain", "n"):
                if run == "explain":
                    times.append(timed_explain())
                else:
                    times.append(run_job(small if run == "n" else large,
                                         os.path.join(directory, f"{case}-{run}", "expl"),
                                         model_path, args.method, args.job_args))
            small_seconds = (times[0] + times[4]) / 2
            explain_seconds = (times[1] + times[3]) / 2
            large_seconds = times[2]
            per_record = (large_seconds - small_seconds) / count
            in_process = explain_seconds / count
            rounds.append((per_record - in_process, in_process, per_record,
                           small_seconds - count * per_record, small_seconds, large_seconds))
        overheads = [r[0] for r in rounds]
        overhead, in_process, per_record, startup, small_seconds, large_seconds = sorted(
            rounds)[len(rounds) // 2]
        print(f"| {case}: {model_name} {size}x{size} {image_format.upper()} | {count} | "
              f"{1e3 * in_process:.3f} | {1e3 * per_record:.3f} | {1e3 * overhead:.3f} | "
              f"{1e3 * min(overheads):.3f} to {1e3 * max(overheads):.3f} | "
              f"{in_process / per_record:.2f} | {startup:.1f} | {small_seconds:.1f} | "
              f"{large_seconds:.1f} |", flush=True)


def peak_memory_mb(input_path: str, output: str, model_path: str, method: str, job_args
                   ) -> float:
    """Peak resident memory (MB) of `python -m pipeline` in a fresh process, read by a
    parent process of its own (so that nothing else is counted)."""
    script = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", script, sys.executable, "-m", "pipeline", "--input", input_path,
         "--output", output, "--model", model_path, "--method", method, "--units_key", "label",
         *job_args],
        cwd=REPO, capture_output=True, text=True, check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return int(process.stdout.split()[-1]) / 1024


def memory_section(args, directory):
    print(f"\n### Peak memory of the job over the record count ({args.method}, 32x32 PNG "
          "records, the demo CNN)\n")
    print("| records | peak RSS MB | ratio to the first |")
    print("|---|---|---|")
    model_path = build_model("demo", 32, directory)
    first = None
    for count in args.memory_records:
        path = write_dataset(directory, count, 32, "png", seed=3)
        peak = peak_memory_mb(path, os.path.join(directory, f"memory-{count}", "expl"),
                              model_path, args.method, args.job_args)
        first = first or peak
        print(f"| {count} | {peak:.0f} | {peak / first:.2f} |", flush=True)
        os.remove(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["overhead", "memory"],
                        choices=["overhead", "memory"])
    parser.add_argument("--cases", nargs="+", default=["tiny", "mobilenet"],
                        choices=list(CASES))
    parser.add_argument("--records", type=int, default=0,
                        help="N records per case (default: the case's own)")
    parser.add_argument("--memory-records", type=int, nargs="+", default=[2000, 100000])
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--batch", type=int, default=32, help="the job's default batch size")
    parser.add_argument("--repeats", type=int, default=5,
                        help="rounds of the job over N records, in-process explain, the job "
                        "over 2N records, in-process explain and the job over N records, in "
                        "turn; the round of median overhead counts")
    parser.add_argument("--job-args", nargs=argparse.REMAINDER, default=[],
                        help="more arguments for the job (last), e.g. Beam runner options")
    args = parser.parse_args(argv)
    print(f"Machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="explain_bench_") as directory:
        if "overhead" in args.sections:
            overhead_section(args, directory)
        if "memory" in args.sections:
            memory_section(args, directory)


if __name__ == "__main__":
    main()
