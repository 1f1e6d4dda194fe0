"""Soak: the whole job on many records, its memory and time per record sampled along the run.

N small records (32x32 PNG shapes with ids and labels, in 8 files) go through the job of
`python -m pipeline` (the tiny demo CNN, Grad-CAM, `--units_key label`) on DirectRunner in
this process. A sampler thread reads, every `--interval` seconds, the resident memory of this
process and of its children (/proc: VmRSS) and how many records the handler has explained so
far (it counts the records of the lists `RecordsHandler.run_inference` takes, in this
process: run without --direct_running_mode=multi_processing). The summary gives the start
(loading the model, matching the files, tracing the step: until the first batch is explained) on its
own, then splits the explaining into tenths of the records and gives, for each, the time per
record and the memory at its end; then memory and time per record after warm-up (the first
two tenths): the target is no growth.

Run: .venv/bin/python -m benchmarks.soak [--records 100000] [--batch 32] [--interval 1]
     [--job-args --map_encoding raw32 ...]
"""

import argparse
import os
import shutil
import tempfile
import threading
import time
from typing import List, Tuple

import keras
import numpy as np
import tensorflow as tf

from benchmarks.common import machine
from pipeline import demo
from pipeline.job.launcher import run
from pipeline.worker.handler import RecordsHandler

SIZE = 32


def write_dataset(directory: str, count: int, files: int = 8, chunk: int = 1000) -> str:
    """`count` PNG records in `files` TFRecord files, made `chunk` images at a time (memory
    stays small whatever the count); returns their pattern."""
    writers = [tf.io.TFRecordWriter(os.path.join(directory, f"soak-{i:02d}.tfrecord"))
               for i in range(files)]
    for start in range(0, count, chunk):
        images, labels = demo.make_shapes(min(chunk, count - start), seed=start, size=SIZE)
        for i, (image, label) in enumerate(zip(images, labels)):
            number = start + i
            writers[number % files].write(demo.make_example(
                demo.encode_image(image, "png"), int(label), f"soak-{number}"))
    for writer in writers:
        writer.close()
    return os.path.join(directory, "soak-*.tfrecord")


def resident_bytes(pid: int = os.getpid()) -> int:
    """Resident memory of a process and of all its descendants, from /proc."""
    total = 0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                total += sum(resident_bytes(int(child)) for child in children.read().split())
    except (FileNotFoundError, ProcessLookupError):  # the process has just ended
        pass
    return total


class Progress:
    """Records the handler has explained so far, in this process."""

    def __init__(self):
        self.explained = 0
        self._lock = threading.Lock()

    def install(self) -> None:
        progress, explain = self, RecordsHandler.run_inference

        def counting(handler, batch, model, inference_args=None):
            results = explain(handler, batch, model, inference_args)
            with progress._lock:
                progress.explained += sum(len(records) for records in batch)
            return results

        RecordsHandler.run_inference = counting


def sample(progress: Progress, interval: float, done: threading.Event,
           samples: List[Tuple[float, int, int]]) -> None:
    """(seconds since start, records explained, resident bytes), every `interval`."""
    start = time.monotonic()
    while not done.is_set():
        samples.append((time.monotonic() - start, progress.explained, resident_bytes()))
        done.wait(interval)
    samples.append((time.monotonic() - start, progress.explained, resident_bytes()))


def tenths(samples, total: int):
    """Per tenth of the explained records: (first record, last, seconds, MiB at its end)."""
    rows, previous = [], next(s for s in samples if s[1] > 0)
    for tenth in range(1, 11):
        goal = total * tenth // 10
        end = next(s for s in samples if s[1] >= goal)
        rows.append((previous[1], end[1], end[0] - previous[0], end[2] / 2**20))
        previous = end
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--job-args", nargs=argparse.REMAINDER, default=[],
                        help="more arguments for the job (last)")
    args = parser.parse_args(argv)

    directory = tempfile.mkdtemp(prefix="explain_soak_")
    try:
        soak(args, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def soak(args, directory: str) -> None:
    """Write the records, run the job while sampling, print the summary."""
    keras.utils.set_random_seed(0)
    model_path = os.path.join(directory, "model.keras")
    keras.saving.save_model(demo.make_model((SIZE, SIZE, 3), 4, width=4), model_path)
    pattern = write_dataset(directory, args.records)

    progress, samples, done = Progress(), [], threading.Event()
    progress.install()
    sampler = threading.Thread(target=sample, args=(progress, args.interval, done, samples),
                               daemon=True)
    sampler.start()
    try:
        summary = run(["--input", pattern, "--output", os.path.join(directory, "out", "expl"),
                       "--model", model_path, "--method", "gradcam", "--units_key", "label",
                       "--batch_size", str(args.batch), *args.job_args])
    finally:
        done.set()
        sampler.join()
    assert summary.balanced and summary.explained == args.records, summary.report()

    first = next(s for s in samples if s[1] > 0)
    last = next(s for s in samples if s[1] >= args.records)
    rows = tenths(samples, args.records)
    print(f"Machine: {machine()}")
    print(f"{args.records} records (32x32 PNG), demo CNN, Grad-CAM, batch {args.batch}, "
          f"DirectRunner {' '.join(args.job_args)}; sampled every {args.interval} s\n")
    print(f"start (until the first batch is explained): {first[0]:.1f} s, "
          f"peak {max(s[2] for s in samples if s[0] <= first[0]) / 2**20:.0f} MiB")
    print(f"explaining: {last[0] - first[0]:.1f} s, "
          f"{args.records / (last[0] - first[0]):.0f} records/s; then writing and the "
          f"manifest: {samples[-1][0] - last[0]:.1f} s; "
          f"peak {max(s[2] for s in samples) / 2**20:.0f} MiB over the whole run\n")
    print("| records explained | ms/record | MiB at the end |")
    print("|---|---|---|")
    for start, end, seconds, mebibytes in rows:
        per_record = 1000 * seconds / max(end - start, 1)
        print(f"| {start:,}-{end:,} | {per_record:.2f} | {mebibytes:.0f} |")
    warm = rows[2:]
    memory = [row[3] for row in warm]
    times = [1000 * row[2] / max(row[1] - row[0], 1) for row in warm]
    half = len(warm) // 2
    print(f"\nafter warm-up (the last 8 tenths): memory {memory[0]:.0f} -> {memory[-1]:.0f} MiB "
          f"({memory[-1] - memory[0]:+.0f} MiB, {100 * (memory[-1] / memory[0] - 1):+.1f}%), "
          f"time per record {np.mean(times[:half]):.2f} -> {np.mean(times[half:]):.2f} ms "
          "(first 4 tenths against the last 4)")


if __name__ == "__main__":
    main()
