"""What SpRAy (`--strategies`, `explain_lib.strategies`) costs.

Sections (`--sections`, all by default):

- `job`: `python -m pipeline` with and without `--strategies` on the same records, model
  and method, alternating (without, with, without, with, ...) in one run, so that a drift
  of a shared machine's speed falls on both: the demo CNN on 32x32 PNG records and
  MobileNetV2 (`weights=None`) on 224x224 JPEG records, Grad-CAM (and for MobileNetV2
  `gradients` too, maps stored at 224x224), `--units_key label`, `--table` in both, each
  over two record counts N and M. The ratio of the medians is what
  strategies add at each count; the difference between the counts splits it into a cost
  per record (against the job's own per record) and a cost once per run (importing
  scikit-learn, one fit per unit).
- `demo`: the README's demo job (`./run_local.sh`'s: `pipeline.demo`'s 256 records of 64x64
  shapes and its trained CNN, Grad-CAM, deletion and the pointing game, the table; its
  command line from `pipeline.demo.job_arguments`) with and without `--strategies`,
  alternating, in fresh processes.
- `memory`: the peak resident memory of the job with and without `--strategies` (demo CNN,
  32x32 PNG records) over `--memory-records`: with the strategies, what it holds must not
  grow with the record count beyond what the job holds without them.
- `per_record`: the work strategies add per record, in-process and stage by stage (the
  reduction and thumbnails in the worker, the sample's combiner, the spill's pickling, the
  assignment, counting and cluster column), on maps stored at 8x8 (Grad-CAM of the demo)
  and 224x224.
- `clustering`: one unit of 100,000 maps (`--maps`; synthetic: a blob at one of 3 places,
  noise), in-process as the job does it: reduce every map, keep a uniform sample of 500,
  fit on it, assign all 100,000 to the nearest centroid; seconds of each step and the
  peak of Python's allocations (tracemalloc) in the fit-and-assign part.

Run: .venv/bin/python -m benchmarks.strategies [--rounds 3]
     [--sections demo job memory per_record clustering]
"""

import argparse
import os
import statistics
import tempfile
import time
import tracemalloc

import numpy as np

from benchmarks.common import machine
from benchmarks.pipeline import (build_model, peak_memory_mb, run_job, time_job,
                                 write_dataset)
from explain_lib import strategies as spray

JOB_CASES = {"demo": ("demo", 32, "png", "gradcam", (2000, 8000)),
             "mobilenet": ("MobileNetV2", 224, "jpeg", "gradcam", (128, 512)),
             "mobilenet-gradients": ("MobileNetV2", 224, "jpeg", "gradients", (128, 512))}
"""name: (model, image size, record format, method, (N, M) records)."""


def job_section(args, directory):
    print("\n### The job with and without --strategies (DirectRunner, median of "
          f"{args.rounds} rounds)\n")
    print("| case | records | without (s) | with (s) | ratio |\n|---|---|---|---|---|")
    for case in args.cases:
        name, size, image_format, method, counts = JOB_CASES[case]
        model = build_model(name, size, directory)
        medians = {}
        for count in counts:
            records = write_dataset(directory, count, size, image_format, seed=3)
            times = {False: [], True: []}
            for round_ in range(args.rounds):
                for strategies in (False, True):
                    output = os.path.join(directory, f"{case}-{count}-{strategies}-{round_}",
                                          "expl")
                    extra = (["--table", output + ".table"]
                             + (["--strategies"] if strategies else []))
                    times[strategies].append(run_job(records, output, model, method, extra))
            medians[count] = {k: statistics.median(v) for k, v in times.items()}
            without, with_ = medians[count][False], medians[count][True]
            print(f"| {case} ({size}x{size}, {method}) | {count} | {without:.1f} | {with_:.1f} | "
                  f"{with_ / without:.3f} |", flush=True)
        small, large = counts
        extra_small = medians[small][True] - medians[small][False]
        extra_large = medians[large][True] - medians[large][False]
        per_record = (extra_large - extra_small) / (large - small)
        job_per_record = (medians[large][False] - medians[small][False]) / (large - small)
        print(f"\n{case}: strategies add {1e3 * per_record:.2f} ms per record "
              f"({100 * per_record / job_per_record:.1f}% of the job's "
              f"{1e3 * job_per_record:.2f} ms per record in steady state) and "
              f"{extra_small - small * per_record:.1f} s once per run.\n", flush=True)


def demo_section(args, directory):
    from pipeline.demo import ensure_demo, job_arguments

    demo = ensure_demo(os.path.join(directory, "demo"))
    times = {False: [], True: []}
    for round_ in range(args.rounds):
        for strategies in (False, True):
            output = os.path.join(directory, f"demo-{strategies}-{round_}", "explanations")
            times[strategies].append(time_job(job_arguments(demo, output)
                                              + (["--strategies"] if strategies else [])))
    without, with_ = (statistics.median(times[key]) for key in (False, True))
    print(f"\n### The README's demo job with and without --strategies (median of "
          f"{args.rounds} rounds)\n\n| without (s) | with (s) | ratio |\n|---|---|---|\n"
          f"| {without:.1f} | {with_:.1f} | {with_ / without:.3f} |", flush=True)


def memory_section(args, directory):
    print("\n### Peak memory of the job over the record count, with and without --strategies "
          "(Grad-CAM, 32x32 PNG, demo CNN, DirectRunner)\n")
    print("| records | peak MB without | with | difference |\n|---|---|---|---|")
    model = build_model("demo", 32, directory)
    for count in args.memory_records:
        records = write_dataset(directory, count, 32, "png", seed=5)
        peaks = {}
        for strategies in (False, True):
            output = os.path.join(directory, f"mem-{count}-{strategies}", "expl")
            extra = ["--table", output + ".table"] + (["--strategies"] if strategies else [])
            peaks[strategies] = peak_memory_mb(records, output, model, "gradcam", extra)
        print(f"| {count} | {peaks[False]:.0f} | {peaks[True]:.0f} | "
              f"{peaks[True] - peaks[False]:+.0f} |", flush=True)


def per_record_section(args):
    """The work strategies add per record, in-process, stage by stage (Beam's own cost per
    element, paid per batch here, is not in it). The rows and the encoded records are made
    before the clock starts: they are the job's without strategies too."""
    import pickle

    from pipeline.results import strategies as job
    from pipeline.results.table import AnalysisRow, table_schema, to_arrow, with_clusters
    from pipeline.worker.encoding import Encoded, with_strategies

    class Maps:
        def __init__(self, maps):
            self.maps = maps

    rng = np.random.default_rng(0)
    count, batch = 8192, 32
    schema = table_schema(strategies=True)
    plain = schema.remove(schema.get_field_index("cluster"))
    print(f"\n### Per record, in-process ({count:,} records, batches of {batch}, one unit "
          "each)\n\n| map stored at | reduce + thumbnails | sample | spill (pickle, "
          "unpickle) | assign + count + cluster column | total µs/record |\n"
          "|---|---|---|---|---|---|")
    for side, image_side in ((8, 32), (224, 224)):
        images = rng.integers(0, 255, (batch, image_side, image_side, 3), np.uint8)
        maps = [Maps(rng.uniform(size=(side, side, 1)).astype(np.float32))
                for _ in range(batch)]
        encoded = [[Encoded(b"", AnalysisRow(f"r{first + i}", np.array([i % 4]),
                                             np.zeros(1, np.float32), np.zeros(1, np.float32),
                                             np.zeros((6, 1), np.float32),
                                             np.zeros((0, 1), np.float32)))
                    for i in range(batch)] for first in range(0, count, batch)]
        start = time.perf_counter()
        batches = [with_strategies(maps, part, images, spray.SIZE)[-1].strategies
                   for part in encoded]
        reduce_us = 1e6 * (time.perf_counter() - start) / count
        combine = job.SampleMaps(500)
        accumulators = {}
        start = time.perf_counter()
        for one in batches:
            for unit, chunk in job.sample_chunks(one):
                accumulators[unit] = combine.add_input(
                    accumulators.get(unit, combine.create_accumulator()), chunk)
        sample_us = 1e6 * (time.perf_counter() - start) / count
        per_file = 1024 // batch
        tables = [to_arrow([row for one in batches[i:i + per_file] for row in one.rows], plain)
                  for i in range(0, len(batches), per_file)]   # the table's work, not timed
        start = time.perf_counter()
        spilled = [pickle.loads(pickle.dumps((
            np.concatenate([one.units() for one in batches[i:i + per_file]]),
            np.concatenate([one.reduced for one in batches[i:i + per_file]]),
            tables[i // per_file]), protocol=pickle.HIGHEST_PROTOCOL))
            for i in range(0, len(batches), per_file)]
        spill_us = 1e6 * (time.perf_counter() - start) / count
        centroids = {u: rng.uniform(size=(3, spray.SIZE ** 2)).astype(np.float32)
                     for u in range(4)}
        start = time.perf_counter()
        for units, reduced, table in spilled:
            clusters = job.assign(units, reduced, centroids)
            job.cluster_counts(units, clusters)
            with_clusters(table, clusters, schema)
        assign_us = 1e6 * (time.perf_counter() - start) / count
        total = reduce_us + sample_us + spill_us + assign_us
        print(f"| {side}x{side} | {reduce_us:.1f} | {sample_us:.1f} | {spill_us:.1f} | "
              f"{assign_us:.1f} | {total:.1f} |", flush=True)


def clustering_section(args):
    rng = np.random.default_rng(0)
    size, chunk = 64, 10_000
    yy, xx = np.mgrid[:size, :size]
    places = ((12, 12), (12, 50), (50, 32))
    print(f"\n### One unit of {args.maps:,} maps ({size}x{size}), reduced to "
          f"{spray.SIZE}x{spray.SIZE}\n")
    start = time.perf_counter()
    reduced = np.empty((args.maps, spray.SIZE * spray.SIZE), np.float16)
    truth = rng.integers(0, 3, args.maps)
    for first in range(0, args.maps, chunk):
        labels = truth[first:first + chunk]
        centres = np.array(places)[labels] + rng.normal(0, 1.5, (len(labels), 2))
        maps = np.exp(-((yy[None] - centres[:, 0, None, None]) ** 2
                        + (xx[None] - centres[:, 1, None, None]) ** 2) / 32.0)
        maps += 0.05 * rng.uniform(size=maps.shape)
        reduced[first:first + chunk] = spray.reduce_maps(maps.astype(np.float32))
    reduce_s = time.perf_counter() - start
    tracemalloc.start()
    start = time.perf_counter()
    sample = rng.choice(args.maps, args.sample, replace=False)
    fitted = spray.fit_strategies(reduced[sample].astype(np.float32))
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    assigned = np.concatenate([fitted.assign(reduced[i:i + chunk].astype(np.float32))
                               for i in range(0, args.maps, chunk)])
    assign_s = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    purity = sum(np.bincount(truth[assigned == c]).max() for c in np.unique(assigned)) / len(
        truth)
    print("| step | seconds |\n|---|---|")
    print(f"| reduce {args.maps:,} maps | {reduce_s:.2f} ({1e6 * reduce_s / args.maps:.1f} µs "
          "per map, with making them) |")
    print(f"| fit on a sample of {args.sample} (k = {fitted.k} by the eigengap) | {fit_s:.2f} |")
    print(f"| assign {args.maps:,} maps to the nearest centroid | {assign_s:.2f} "
          f"({1e6 * assign_s / args.maps:.2f} µs per map) |")
    print(f"\nPeak of Python allocations while fitting and assigning: {peak / 2**20:.1f} MiB "
          f"(the {args.maps:,} reduced maps themselves, held here for the benchmark, "
          f"{reduced.nbytes / 2**20:.0f} MiB, are not counted; the job never holds them: it "
          f"assigns each batch as it reads it back). Purity of the assignment against the "
          f"planted strategies: {purity:.4f}.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+",
                        default=["demo", "job", "memory", "per_record", "clustering"])
    parser.add_argument("--cases", nargs="+", default=list(JOB_CASES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--maps", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=500)
    parser.add_argument("--memory-records", type=int, nargs="+", default=[2000, 8000])
    args = parser.parse_args()
    print(f"Machine: {machine()}")
    if "per_record" in args.sections:
        per_record_section(args)
    if "clustering" in args.sections:
        clustering_section(args)
    with tempfile.TemporaryDirectory() as directory:
        if "demo" in args.sections:
            demo_section(args, directory)
        if "job" in args.sections:
            job_section(args, directory)
        if "memory" in args.sections:
            memory_section(args, directory)


if __name__ == "__main__":
    main()
