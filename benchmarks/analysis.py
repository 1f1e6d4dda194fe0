"""What the job's analysis outputs cost: metrics per record, the Parquet table, the report.

Sections (`--sections`, all by default), each job run as users run it (`python -m pipeline`
in a fresh process, DirectRunner defaults, Grad-CAM, `--units_key label`):

- `metrics`: MobileNetV2 (`weights=None`) on 224x224 JPEG records: the job without metrics
  and with `--metrics deletion --metric_params '{"deletion": {"n_steps": 20}}'` over the same
  N records (runs alternated, the fastest of `--repeats` each). The time deletion adds per
  record is set against 20 forward passes per record, timed in process with
  `model.predict` at the job's batch size (the fastest of `--repeats`, after a first call).
- `table`: the demo (its trained CNN, 64x64 JPEG shapes with their boxes) over
  `--table-records` records: the job without and with `--table` (`--copy_features label`),
  runs alternated, the fastest of `--repeats` each; the table's bytes per row.
- `report`: `python -m pipeline.report OUTPUT --out PAGE` (a fresh process, as the README
  gives it, the fastest of `--repeats`) on the output of a job over `--table-records`
  records, against that job's wall time; the page's size. Cases (`--report-cases`): the demo
  job with `--metrics pointing_game,energy_pointing_game --boxes_key objects/bbox` (metrics
  that make
  no forward pass, so that the job is hardly longer than without them), where the model
  explains a record in a fraction of a millisecond; and MobileNetV2 (`weights=None`) on
  224x224 JPEG records, a model of realistic cost.

Run: .venv/bin/python -m benchmarks.analysis [--sections metrics table report]
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import keras

from benchmarks.common import machine
from benchmarks.pipeline import REPO, build_model, read_job_inputs, write_dataset
from pipeline import demo

DELETION_STEPS = 20
LOCALISATION = "pointing_game,energy_pointing_game"


def timed(command) -> float:
    """Wall seconds of `command` (a list, run in the repository, in a fresh process)."""
    start = time.perf_counter()
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {process.stdout[-2000:]} "
                           f"{process.stderr[-3000:]}")
    return seconds


def job(input_path: str, output: str, model_path: str, *job_args) -> float:
    """Wall seconds of the job (the README's command) over `input_path`."""
    return timed([sys.executable, "-m", "pipeline", "--input", input_path, "--output", output,
                  "--model", model_path, "--method", "gradcam", "--units_key", "label",
                  *job_args])


def alternated(repeats: int, runs: dict) -> dict:
    """The fastest of `repeats` runs of each of `runs` ({name: function of the repeat}),
    run in turn so that a change in the machine's load touches all of them alike."""
    best = {name: float("inf") for name in runs}
    for repeat in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], run(repeat))
    return best


def metrics_section(args, directory):
    count, size, batch = args.metrics_records, 224, 32
    model_path = build_model("MobileNetV2", size, directory)
    records = write_dataset(directory, count, size, "jpeg", seed=11)
    job(write_dataset(directory, batch, size, "jpeg", seed=12),
        os.path.join(directory, "metrics-warm", "expl"), model_path)
    params = json.dumps({"deletion": {"n_steps": DELETION_STEPS}})
    seconds = alternated(args.repeats, {
        "plain": lambda r: job(records, os.path.join(directory, f"plain-{r}", "expl"),
                               model_path),
        "deletion": lambda r: job(records, os.path.join(directory, f"deletion-{r}", "expl"),
                                  model_path, "--metrics", "deletion",
                                  "--metric_params", params),
    })
    model = keras.saving.load_model(model_path, compile=False)
    images, _ = read_job_inputs(records, size)
    model.predict(images[:batch], batch_size=batch, verbose=0)
    forward = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.predict(images, batch_size=batch, verbose=0)
        forward = min(forward, time.perf_counter() - start)
    added = (seconds["deletion"] - seconds["plain"]) / count
    passes = DELETION_STEPS * forward / count
    print(f"\n### `--metrics deletion` ({DELETION_STEPS} steps) against {DELETION_STEPS} "
          f"forward passes (MobileNetV2 224x224 JPEG, {count} records, batch {batch})\n")
    print("| job s | job with deletion s | added ms/record | one forward pass ms/record | "
          f"added / {DELETION_STEPS} forward passes |")
    print("|---|---|---|---|---|")
    print(f"| {seconds['plain']:.1f} | {seconds['deletion']:.1f} | {1e3 * added:.2f} | "
          f"{1e3 * forward / count:.3f} | {added / passes:.3f} |", flush=True)


def demo_records(directory: str, count: int) -> tuple:
    """(records, model): `count` demo shapes with their boxes as JPEG records, and the
    demo's trained CNN (the repository's cached demo, generated if missing)."""
    cached = demo.ensure_demo(os.path.join(REPO, "demo"), log=lambda *a: None)
    images, labels, masks = demo.make_shapes(count, seed=21, return_masks=True)
    paths = demo.write_shapes(os.path.join(directory, "demo"), "bench", images, labels,
                              boxes=demo.shape_boxes(masks))
    return paths[0], cached.model


def table_section(args, directory):
    records, model_path = demo_records(directory, args.table_records)
    job(records, os.path.join(directory, "table-warm", "expl"), model_path)
    table = os.path.join(directory, "table-{}", "rows")
    seconds = alternated(args.repeats, {
        "plain": lambda r: job(records, os.path.join(directory, f"tplain-{r}", "expl"),
                               model_path),
        "table": lambda r: job(records, os.path.join(directory, f"ttable-{r}", "expl"),
                               model_path, "--table", table.format(r),
                               "--copy_features", "label"),
    })
    files = glob.glob(table.format(0) + "*")
    import pyarrow.parquet as pq

    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
    size = sum(os.path.getsize(path) for path in files)
    print(f"\n### `--table` (the demo: its CNN, 64x64 JPEG shapes, {args.table_records} "
          "records, `--copy_features label`)\n")
    print("| job s | job with --table s | ratio | rows | table bytes | bytes/row |")
    print("|---|---|---|---|---|---|")
    print(f"| {seconds['plain']:.1f} | {seconds['table']:.1f} | "
          f"{seconds['table'] / seconds['plain']:.3f} | {rows} | {size:,} | "
          f"{size / rows:.0f} |", flush=True)


def report_section(args, directory):
    print(f"\n### `python -m pipeline.report` ({args.table_records} records)\n")
    print("| job | job s | report s | report / job | page MB |")
    print("|---|---|---|---|---|")
    for case in args.report_cases:
        if case == "demo":
            records, model_path = demo_records(directory, args.table_records)
            job_args = ["--metrics", LOCALISATION, "--boxes_key", demo.BOX_KEY]
            described = (f"demo CNN, 64x64 JPEG, `--metrics {LOCALISATION} --boxes_key "
                         f"{demo.BOX_KEY}`")
        else:
            records = write_dataset(directory, args.table_records, 224, "jpeg", seed=5)
            model_path = build_model("MobileNetV2", 224, directory)
            job_args, described = [], "MobileNetV2 (`weights=None`), 224x224 JPEG"
        output = os.path.join(directory, f"report-{case}", "expl")
        seconds = job(records, output, model_path, *job_args)
        page = os.path.join(directory, f"report-{case}.html")
        built = min(timed([sys.executable, "-m", "pipeline.report", output, "--out", page])
                    for _ in range(args.repeats))
        print(f"| {described} | {seconds:.1f} | {built:.1f} | {built / seconds:.3f} | "
              f"{os.path.getsize(page) / 2**20:.2f} |", flush=True)


SECTIONS = {"metrics": metrics_section, "table": table_section, "report": report_section}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--metrics-records", type=int, default=256)
    parser.add_argument("--table-records", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--report-cases", nargs="+", default=["demo", "mobilenet"],
                        choices=["demo", "mobilenet"])
    args = parser.parse_args(argv)
    print(f"Machine: {machine()}")
    with tempfile.TemporaryDirectory() as directory:
        for section in args.sections:
            SECTIONS[section](args, directory)


if __name__ == "__main__":
    main()
