"""Can the host feed the accelerator? The job's host cost per record against the decode floor.

On a GPU worker the model runs on the GPU and everything else on the host's cores, so what
the host spends per record bounds what the GPU gets. This measures it with a null model,
one that costs nearly nothing to explain (224x224x3 input, AveragePooling2D(28), a 1x1
Conv2D, GlobalAveragePooling2D, Dense(10)), so that what is left is the host's work:

- the decode floor: `tf.data.TFRecordDataset` -> parse -> `tf.io.decode_jpeg` (and
  `tf.image.resize` to 224x224 for the ImageNet-like records), `num_parallel_calls=AUTOTUNE`,
  batched by 32: the least any job reading these records must spend;
- the handler in process: the RunInference handler the job builds from the same options,
  handed the records in the job's lists, without Beam around it (its parsing, decoding,
  explaining and encoding: what the job costs beyond Beam's own work);
- the explain stage alone: the same batches, decoded once, explained as the handler
  explains them; its CPU on TensorFlow's threads (the process's less the calling thread's)
  is the model's compiled step, the part of the job a GPU worker runs on its GPU (the ops
  TensorFlow runs inline on the calling thread stay counted as the host's);
- the job: `python -m pipeline --input ... --output ... --model null.keras --method gradcam
  --units_key label` with default options (DirectRunner), as users type it, in a fresh
  process.

The job runs over N and over 2N records (2,048 and 4,096 by default), in a fresh process;
the difference of the two is the steady-state cost of N records (start-up, imports, the
model's load and tracing cancel). A round runs N, 2N, N (symmetric about the 2N run, so that
a drift of the machine's speed, linear in time, cancels); `--repeats` rounds (3), each one
measurement. The floor, the handler and the explain stage each run in a fresh process of
their own over the 2N records, one pass to warm up and then 3 timed passes per round, each
pass one measurement: a pass of the floor over 4,096 records takes under a second, where a
difference of two short processes moved by more than the pass itself.
Every side is also reported in core-milliseconds per record (user and system time of all
threads, which the machine's other work moves much less than wall time): a pass on a shared
virtual machine can run at a fraction of the machine's rate with the same CPU time per
record. The rates and their ratios are of each side's fastest pass or round, the median and
the slowest in brackets: where the machine's cores are taken away for more than half of a
side's passes (as this project's 2-core machine does at times, each such pass of the floor
at a fixed fraction of the others), the median measures that, and the fastest is what the
code does. The job's rounds are differences of runs, so that their fastest is biased fast (a
slowed N run shortens the difference): compare its median round too.

The records: 224x224 JPEGs (quality 90) of the demo's shapes, and ImageNet-like JPEGs
(quality 90, sizes drawn around ImageNet's typical 500x375, landscape and portrait, resized
by the job to 224x224).

Reported per case: each side's steady-state records/s, the host cost over the floor (the
job's seconds per record over the floor's, fastest against fastest and median against
median; the issue's target is 1.5x at 224x224),
records/s per core, each side's core-milliseconds per record and their ratio, and the
handler's and the job's CPU less the model's step over the floor's: the host's work as a
GPU worker would spend it, which a CPU machine can measure only in CPU time (the model's
step shares the cores there, and so takes wall time from the rest). With `--one-core`,
everything runs again under `taskset -c 0` (one core), and the scaling from one core to all
of them is reported (the target is 1.7x or more from one core to two).

Run (the full measurement, on a quiet machine; about 15 minutes on 2 cores):

    .venv/bin/python -m benchmarks.feed --one-core

A quick check that it runs (seconds, meaningless numbers):

    .venv/bin/python -m benchmarks.feed --records 64 --repeats 1 --cases jpeg224

Parts: `--cases jpeg224 imagenet`, `--records N`, `--repeats R`, `--data-dir DIR` (keep the
generated records and model between runs), `--job-args ...` (more job options, last).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np

from benchmarks.pipeline import REPO, job_times

SIZE = 224
BATCH = 32
QUALITY = 90
UNITS = 10
PASSES = 3
"""Timed passes of the floor and of the handler over the 2N records per round of the job."""
JOB_OPTIONS = ("--method", "gradcam", "--units_key", "label")
"""The job's options here (the rest are its defaults)."""

CASES = {
    # name: (what the records hold, whether the floor resizes)
    "jpeg224": ("224x224 JPEG (quality 90)", False),
    "imagenet": ("ImageNet-like JPEG (quality 90, about 500x375), resized to 224x224", True),
}


# --- the records and the model -------------------------------------------------------------------


def _imagenet_like_size(rng: np.random.Generator):
    """(height, width) around ImageNet's typical 500x375: a long side of 400 to 600, an aspect
    of 4:3 mostly, landscape three times in four."""
    long_side = int(rng.integers(400, 601))
    aspect = float(rng.choice([4 / 3, 4 / 3, 4 / 3, 3 / 2, 1.0]))
    short_side = int(round(long_side / aspect))
    return (short_side, long_side) if rng.random() < 0.75 else (long_side, short_side)


def write_records(path: str, count: int, case: str, seed: int) -> str:
    """`count` records of `case` (`CASES`) at `path` (kept if there already): the demo's shape
    images as JPEG bytes (`image`), a label (`label`) and an id (`id`)."""
    if os.path.exists(path):
        return path
    import tensorflow as tf

    from pipeline import demo

    rng = np.random.default_rng(seed)
    partial = path + ".partial"
    with tf.io.TFRecordWriter(partial) as writer:
        for start in range(0, count, 64):
            size = 512 if case == "imagenet" else SIZE
            images, labels = demo.make_shapes(min(64, count - start), seed=seed + start,
                                              size=size, classes=4)
            for i, (image, label) in enumerate(zip(images, labels)):
                if case == "imagenet":
                    image = tf.cast(tf.round(tf.image.resize(
                        image, _imagenet_like_size(rng))), tf.uint8)
                jpeg = tf.io.encode_jpeg(image, quality=QUALITY).numpy()
                writer.write(demo.make_example(jpeg, int(label), f"f{seed}-{start + i}"))
    os.replace(partial, path)
    return path


def null_model_path(directory: str) -> str:
    """The null model (see the module docstring), saved once in `directory`."""
    path = os.path.join(directory, "null.keras")
    if not os.path.exists(path):
        import keras

        keras.utils.set_random_seed(0)
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.AveragePooling2D(28)(inputs)
        x = keras.layers.Conv2D(8, 1, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(UNITS)(x)
        keras.saving.save_model(keras.Model(inputs, outputs, name="null"), path)
    return path


# --- the two sides, each in a fresh process ------------------------------------------------------


def floor(input_path: str, resize: bool, passes: int) -> None:
    """The decode floor over `input_path` (`python -m benchmarks.feed --floor PATH`): one
    pass to warm up, then `passes` timed passes; prints each timed pass's seconds per record
    (wall) and core-seconds per record (user and system, all threads)."""
    import tensorflow as tf

    features = {"image": tf.io.FixedLenFeature([], tf.string)}

    def decode(serialized):
        data = tf.io.parse_single_example(serialized, features)["image"]
        image = tf.io.decode_jpeg(data, channels=3)
        return tf.image.resize(image, (SIZE, SIZE)) if resize else image

    dataset = (tf.data.TFRecordDataset(input_path)
               .map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH))
    _print_passes(lambda: sum(int(batch.shape[0]) for batch in dataset), passes)


def _job_parts(input_path: str, model_path: str, job_args: Sequence[str]):
    """The job's `Explain` transform as `python -m pipeline` builds it from the benchmark's
    job options (`JOB_OPTIONS` and `job_args`, defaults otherwise; its handler, spec and
    settings), the handler's worker (the model loaded), and the serialized records of
    `input_path` in the job's lists."""
    import tensorflow as tf
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.job.options import job_settings
    from pipeline.job.transforms import Explain

    explain = Explain(job_settings(PipelineOptions(
        ["--input", input_path, "--output", "unused", "--model", model_path, *JOB_OPTIONS,
         *job_args])))
    records = [record.numpy() for record in tf.data.TFRecordDataset(input_path)]
    size = explain.handler.records_per_call
    lists = [records[start:start + size] for start in range(0, len(records), size)]
    return explain, explain.handler.load_model(), lists


def handler(input_path: str, model_path: str, passes: int, job_args: Sequence[str]) -> None:
    """The job's handler in process over `input_path` (`python -m benchmarks.feed --handler
    PATH --model PATH`): handed the records in the job's lists (`_job_parts`), with no Beam
    around it; one pass to warm up, then `passes` timed passes (`_print_passes`)."""
    explain, worker, lists = _job_parts(input_path, model_path, job_args)

    def one_pass():
        for records_list in lists:
            explain.handler.run_inference([records_list], worker)
        return sum(len(records_list) for records_list in lists)

    _print_passes(one_pass, passes)


def step(input_path: str, model_path: str, passes: int, job_args: Sequence[str]) -> None:
    """The explain stage alone over `input_path` (`python -m benchmarks.feed --step PATH
    --model PATH`): the handler's batches checked and decoded once, then passes of
    `explain_decoded` over them, as the handler calls it (`_print_passes`). What it costs
    on TensorFlow's threads (the process's CPU less the calling thread's) is the model's
    compiled step, which a GPU worker runs on its GPU; the calling thread's share (the
    engine's Python and the ops TensorFlow runs inline on it) stays the host's."""
    from pipeline.worker.decoding import decode_batch
    from pipeline.worker.explaining import explain_decoded
    from pipeline.worker.parsing import check_record

    explain, worker, lists = _job_parts(input_path, model_path, job_args)
    checked = [check_record(record, explain.spec) for records_list in lists
               for record in records_list]
    size = explain.settings.batch_size
    batches = [checked[start:start + size] for start in range(0, len(checked), size)]
    decoded = [decode_batch(batch, explain.spec)[0] for batch in batches]

    def one_pass():
        for batch, images in zip(batches, decoded):
            explain_decoded(batch, images, worker)
        return len(checked)

    _print_passes(one_pass, passes)


def _print_passes(one_pass, passes: int) -> None:
    """`one_pass()` (which returns the records it took) once to warm up, then `passes`
    times, printing for each timed pass its seconds, core-seconds (user and system, all the
    process's threads) and the calling thread's core-seconds per record."""
    for timed in [False] + [True] * passes:
        start, times, thread = time.perf_counter(), os.times(), time.thread_time()
        count = one_pass()
        seconds, end = time.perf_counter() - start, os.times()
        if timed:
            cpu = (end.user + end.system) - (times.user + times.system)
            print(f"{seconds / count:.9f} {cpu / count:.9f} "
                  f"{(time.thread_time() - thread) / count:.9f}")


def _command(prefix: Sequence[str], arguments: Sequence[str]) -> List[str]:
    return [*prefix, sys.executable, *arguments]


def per_record_in_passes(arguments: Sequence[str], prefix: Sequence[str]) -> Dict[str, float]:
    """Seconds per record of a side measured in passes (`--floor`, `--handler` or `--step`,
    with `arguments`) in a fresh process, once warmed up (the process's start, TensorFlow's
    import, the model's load and the first pass left out: they are no part of the steady
    state): the median pass and the range, and the median core-seconds per record, all
    threads' and the calling thread's."""
    process = subprocess.run(
        _command(prefix, ["-m", "benchmarks.feed", *arguments]),
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if process.returncode != 0:
        raise RuntimeError(f"{arguments[0]} failed: {process.stderr[-3000:]}")
    rows = [[float(v) for v in line.split()] for line in process.stdout.split("\n")
            if line.strip()]
    walls = [wall for wall, _, _ in rows]
    return {"median": statistics.median(walls), "min": min(walls), "max": max(walls),
            "cpu": statistics.median(cpu for _, cpu, _ in rows),
            "thread": statistics.median(thread for _, _, thread in rows)}


def job_seconds(input_path: str, output: str, model_path: str, prefix: Sequence[str],
                job_args: Sequence[str]) -> Tuple[float, float]:
    """Wall seconds and core-seconds of `python -m pipeline` in a fresh process, as users
    type it (`benchmarks.pipeline.job_times`)."""
    return job_times(["--input", input_path, "--output", output, "--model", model_path,
                      *JOB_OPTIONS, *job_args], prefix)


def steady_state(run, count: int, repeats: int) -> Dict[str, float]:
    """Seconds per record at steady state of `run`, which gives the wall and core-seconds of
    a run over N records (`run("n")`) or 2N (`run("2n")`): per round, the 2N run less the
    mean of the two N runs around it, over N; the median round and the range of the wall
    seconds, and the median round of the core-seconds."""
    rounds = []
    for _ in range(repeats):
        first, double, last = run("n"), run("2n"), run("n")
        rounds.append([(d - (f + t) / 2) / count for f, d, t in zip(first, double, last)])
    walls = [wall for wall, _ in rounds]
    return {"median": statistics.median(walls), "min": min(walls), "max": max(walls),
            "cpu": statistics.median(cpu for _, cpu in rounds)}


def measure(case: str, directory: str, count: int, repeats: int, prefix: Sequence[str],
            job_args: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Steady-state seconds per record of the floor, the handler, the explain stage alone
    and the job on `case`'s records."""
    _, resize = CASES[case]
    inputs = {"n": write_records(os.path.join(directory, f"{case}-{count}.tfrecord"), count,
                                 case, seed=1),
              "2n": write_records(os.path.join(directory, f"{case}-{2 * count}.tfrecord"),
                                  2 * count, case, seed=1_000_000)}
    model_path = null_model_path(directory)
    output = os.path.join(directory, "out", case, "expl")
    job_seconds(inputs["n"], output, model_path, prefix, job_args)  # warms the file cache
    passes = str(PASSES * repeats)
    return {
        "floor": per_record_in_passes(["--floor", inputs["2n"], "--passes", passes]
                                      + (["--floor-resize"] if resize else []), prefix),
        **{side: per_record_in_passes([f"--{side}", inputs["2n"], "--model", model_path,
                                       "--passes", passes, "--job-args", *job_args], prefix)
           for side in ("handler", "step")},
        "job": steady_state(lambda n: job_seconds(inputs[n], output, model_path, prefix,
                                                  job_args), count, repeats),
    }


def report(case: str, cores: int, results: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """One row of the table; returns each side's records/s (not the explain stage's)."""
    floor_s, handler_s, job_s = results["floor"], results["handler"], results["job"]
    # The model's compiled step: the explain stage's CPU on TensorFlow's threads (`step`).
    model_cpu = results["step"]["cpu"] - results["step"]["thread"]

    def rate(side):
        return (f"{1 / side['min']:.0f} ({1 / side['median']:.0f}; "
                f"{1 / side['max']:.0f})")

    print(f"| {case} | {cores} | {rate(floor_s)} | {rate(handler_s)} | {rate(job_s)} | "
          f"{job_s['min'] / floor_s['min']:.2f} ({job_s['median'] / floor_s['median']:.2f}) | "
          f"{1 / floor_s['min'] / cores:.0f} | {1 / job_s['min'] / cores:.0f} | "
          f"{floor_s['cpu'] * 1e3:.3f} | {handler_s['cpu'] * 1e3:.3f} | "
          f"{job_s['cpu'] * 1e3:.3f} | {job_s['cpu'] / floor_s['cpu']:.2f} | "
          f"{model_cpu * 1e3:.3f} | {(handler_s['cpu'] - model_cpu) / floor_s['cpu']:.2f} | "
          f"{(job_s['cpu'] - model_cpu) / floor_s['cpu']:.2f} |",
          flush=True)
    return {side: 1 / results[side]["min"] for side in ("floor", "handler", "job")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--records", type=int, default=2048,
                        help="N: each side runs over N and 2N records")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of N, 2N and N records; the median round counts")
    parser.add_argument("--one-core", action="store_true",
                        help="also run everything under taskset -c 0, and report the scaling")
    parser.add_argument("--data-dir", default=None,
                        help="keep the records and the model here (default: a temporary "
                        "directory)")
    # A side's own fresh process (see `per_record_in_passes`).
    parser.add_argument("--floor", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--floor-resize", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--handler", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--passes", type=int, default=PASSES, help=argparse.SUPPRESS)
    parser.add_argument("--job-args", nargs=argparse.REMAINDER, default=[],
                        help="more arguments for the job (last)")
    args = parser.parse_args(argv)
    if args.floor:
        floor(args.floor, args.floor_resize, args.passes)
        return
    if args.handler:
        handler(args.handler, args.model, args.passes, args.job_args)
        return
    if args.step:
        step(args.step, args.model, args.passes, args.job_args)
        return

    from benchmarks.common import machine

    cores = len(os.sched_getaffinity(0))
    print(f"Machine: {machine()}; {cores} cores available")
    print(f"\n### The job's host cost over the decode floor (null model, gradcam, "
          f"--units_key label, DirectRunner {' '.join(args.job_args) or 'defaults'}; "
          f"{args.records} and {2 * args.records} records, {args.repeats} rounds; rates: "
          "fastest (median; slowest))\n")
    print("| records | cores | floor records/s | handler in process records/s | "
          "job records/s | host cost over floor (median) | floor records/s/core | "
          "job records/s/core | floor core-ms/record | handler core-ms/record | "
          "job core-ms/record | job over floor, CPU | the model's step, core-ms/record | "
          "handler less the step over floor, CPU | job less the step over floor, CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    settings = [(cores, ())] + ([(1, ("taskset", "-c", "0"))] if args.one_core else [])
    with tempfile.TemporaryDirectory(prefix="explain_feed_") as scratch:
        directory = args.data_dir or scratch
        os.makedirs(directory, exist_ok=True)
        rates = {}
        for case in args.cases:
            for used, prefix in settings:
                results = measure(case, directory, args.records, args.repeats, prefix,
                                  args.job_args)
                rates[case, used] = report(case, used, results)
    if args.one_core:
        print(f"\n| records | floor scaling, 1 core to {cores} (fastest) | handler scaling | "
              "job scaling |")
        print("|---|---|---|---|")
        for case in args.cases:
            many, one = rates[case, cores], rates[case, 1]
            print(f"| {case} | " + " | ".join(f"{many[side] / one[side]:.2f}x" for side in
                                              ("floor", "handler", "job")) + " |")


if __name__ == "__main__":
    main()
