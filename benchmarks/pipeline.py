"""What the Beam job costs beyond the explaining itself.

On the same records, model and method, in one run:
- in-process: `explain_lib.explain` on the decoded images (compiled once, warmed up);
- the pipeline: `python -m pipeline` on DirectRunner over the same TFRecords (JPEG bytes,
  with `--units_key`, so both explain exactly the same units).

The pipeline's time includes its fixed start (loading the model in the launcher and on
the worker, tracing the step), so it is run on N and on 2N records: the difference is its
steady-state cost of N records. Both ratios are reported: end to end, and steady state.

Run: .venv/bin/python -m benchmarks.pipeline [--model MobileNetV2] [--records 512]
     [--job-args --direct_num_workers=2 --direct_running_mode=multi_threading ...]
"""

import argparse
import os
import tempfile
import time

import keras
import numpy as np

from benchmarks.common import application, machine
from explain_lib import explain, inspection
from explain_lib import methods
from pipeline import demo
from pipeline.__main__ import run


def write_dataset(directory: str, count: int, size: int, seed: int) -> str:
    images, labels = demo.make_shapes(count, seed=seed, size=size, classes=4)
    records = [demo.make_example(demo.encode_image(image), int(label), f"b{seed}-{i}")
               for i, (image, label) in enumerate(zip(images, labels))]
    return demo.write_records(os.path.join(directory, f"records-{seed}.tfrecord"), records)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="MobileNetV2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--records", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--job-args", nargs=argparse.REMAINDER, default=[],
                        help="more arguments for the job (last), e.g. Beam runner options")
    args = parser.parse_args(argv)

    directory = tempfile.mkdtemp(prefix="explain_bench_")
    model = application(args.model, args.size)
    model_path = os.path.join(directory, "model.keras")
    keras.saving.save_model(model, model_path)
    small = write_dataset(directory, args.records, args.size, seed=1)
    large = write_dataset(directory, 2 * args.records, args.size, seed=2)

    method = methods.get(args.method)
    explained = inspection.expose(model) if method.exposed else model
    images, labels = demo.read_shapes(small)  # the pixels the pipeline sees

    def in_process():
        explain(method.function, explained, images.astype(np.float32), labels,
                batch_size=args.batch, verbose=0, **method.explain_defaults)

    in_process()  # compile
    start = time.perf_counter()
    in_process()
    in_process_seconds = time.perf_counter() - start

    def job(path, name):
        start = time.perf_counter()
        summary = run(["--input", path, "--output", os.path.join(directory, name, "expl"),
                       "--model", model_path, "--method", args.method, "--units_key", "label",
                       "--batch_size", str(args.batch), *args.job_args])
        seconds = time.perf_counter() - start
        assert summary.explained == summary.read and summary.dead_lettered == 0, summary
        return seconds

    job(write_dataset(directory, args.batch, args.size, seed=3), "warmup")  # one-time imports
    small_seconds = job(small, "small")
    large_seconds = job(large, "large")
    steady_seconds = large_seconds - small_seconds

    rate = args.records / in_process_seconds
    print(f"Machine: {machine()}")
    print(f"{args.model} {args.size}x{args.size}, {args.method}, batch {args.batch}, "
          f"{args.records} and {2 * args.records} JPEG records, DirectRunner "
          f"{' '.join(args.job_args)}\n")
    print("| measure | seconds | records/s | ratio to in-process |")
    print("|---|---|---|---|")
    print(f"| in-process explain, {args.records} records | {in_process_seconds:.2f} | "
          f"{rate:.1f} | 1.00 |")
    for label, count, seconds in (
        (f"pipeline end to end, {args.records} records", args.records, small_seconds),
        (f"pipeline end to end, {2 * args.records} records", 2 * args.records, large_seconds),
        (f"pipeline steady state (difference of the two), {args.records} records",
         args.records, steady_seconds),
    ):
        print(f"| {label} | {seconds:.2f} | {count / seconds:.1f} | "
              f"{count / seconds / rate:.2f} |")


if __name__ == "__main__":
    main()
