"""Throughput on a machine with a GPU: in-process `explain` and the Beam job, in records/s.

One command, for ResNet50V2 (`weights=None`) at 224x224 on JPEG records, Grad-CAM and
vanilla gradients:

- `predict`: `model.predict` throughput at each batch size (the unit the ratios use);
- `explain`: in-process `explain_lib.explain` with the method's conventional parameters
  (and the job's default map size), one call after a first one, over a batch-size sweep,
  with XLA off and on (`model.jit_compile`), and under each precision (float32,
  mixed_bfloat16, mixed_float16: `explain_lib.utils.with_dtype_policy`);
- `job`: `python -m pipeline` (a fresh process, DirectRunner) on N and 2N JPEG records at
  each batch size with the same XLA and precision settings (`--jit_compile`,
  `--precision`): the steady-state records/s (the difference of the two runs) and its
  ratio to in-process `explain` with the same settings.

Run: .venv/bin/python -m benchmarks.gpu [--records 2048] [--batch-sizes 32 64 128 256]
     [--methods gradcam gradients] [--precisions float32 mixed_bfloat16 mixed_float16]
     [--xla off on] [--sections predict explain job] [--model ResNet50V2] [--size 224]
"""

import argparse
import os
import tempfile
import time

import keras

from benchmarks.common import application, machine
from benchmarks.pipeline import explain_seconds, read_job_inputs, run_job, write_dataset
from explain_lib import utils


def explain_rate(model, method_name, images, labels, batch, xla, precision, repeats):
    """Records/s of one `explain` call over `images`, after a first call, with the model at
    `precision` and under XLA if `xla`."""
    model = utils.with_dtype_policy(model, precision)
    return len(images) / explain_seconds(model, method_name, images, labels, batch, repeats,
                                         xla)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ResNet50V2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--records", type=int, default=2048)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--methods", nargs="+", default=["gradcam", "gradients"])
    parser.add_argument("--precisions", nargs="+", default=list(utils.PRECISIONS),
                        choices=list(utils.PRECISIONS))
    parser.add_argument("--xla", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--sections", nargs="+", default=["predict", "explain", "job"],
                        choices=["predict", "explain", "job"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    print(f"Machine: {machine()}")
    print(f"{args.model} {args.size}x{args.size}, {args.records} JPEG records\n")
    model = application(args.model, args.size)
    with tempfile.TemporaryDirectory(prefix="explain_gpu_") as directory:
        model_path = os.path.join(directory, "model.keras")
        keras.saving.save_model(model, model_path)
        small = write_dataset(directory, args.records, args.size, "jpeg", seed=1)
        large = write_dataset(directory, 2 * args.records, args.size, "jpeg", seed=1_000_000)
        images, labels = read_job_inputs(small, args.size)

        if "predict" in args.sections:
            print("| batch | predict records/s |")
            print("|---|---|")
            for batch in args.batch_sizes:
                model.predict(images[:batch], batch_size=batch, verbose=0)
                start = time.perf_counter()
                model.predict(images, batch_size=batch, verbose=0)
                print(f"| {batch} | {len(images) / (time.perf_counter() - start):.0f} |",
                      flush=True)

        rates = {}
        if "explain" in args.sections:
            print("\n| method | batch | XLA | precision | explain records/s |")
            print("|---|---|---|---|---|")
            for method in args.methods:
                for batch in args.batch_sizes:
                    for xla in args.xla:
                        for precision in args.precisions:
                            rate = explain_rate(model, method, images, labels, batch,
                                                xla == "on", precision, args.repeats)
                            rates[method, batch, xla, precision] = rate
                            print(f"| {method} | {batch} | {xla} | {precision} | {rate:.0f} |",
                                  flush=True)

        if "job" in args.sections:
            print("\n| method | batch | XLA | precision | job records/s (steady state) | "
                  "job / explain | job start-up s |")
            print("|---|---|---|---|---|---|---|")
            for method in args.methods:
                for batch in args.batch_sizes:
                    for xla in args.xla:
                        for precision in args.precisions:
                            flags = ["--batch_size", str(batch), "--precision", precision,
                                     *(["--jit_compile"] if xla == "on" else [])]
                            name = f"{method}-{batch}-{xla}-{precision}"
                            n = run_job(small, os.path.join(directory, name + "-n", "expl"),
                                        model_path, method, flags)
                            n2 = run_job(large, os.path.join(directory, name + "-2n", "expl"),
                                         model_path, method, flags)
                            rate = args.records / (n2 - n)
                            startup = n - args.records / rate
                            explained = rates.get((method, batch, xla, precision))
                            ratio = f"{rate / explained:.2f}" if explained else "-"
                            print(f"| {method} | {batch} | {xla} | {precision} | {rate:.0f} | "
                                  f"{ratio} | {startup:.1f} |", flush=True)


if __name__ == "__main__":
    main()
