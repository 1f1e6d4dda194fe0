"""`python -m pipeline.compare` over many records: its time and peak memory at two record
counts, to show its memory flat in the record count.

Two runs' outputs are synthesised cheaply, in the job's own output format and with the
library's writers (`explain_lib.io.encode_explanations`, GZIP TFRecord shards named as the
job names them, a manifest as the job writes one): run A holds 8x8 png8 maps (a CAM's native
size) and run B 16x16 ones of the same records (so every pair is averaged down to 8x8),
one unit per record, with a deletion score each; a few records are in one run only. Each
count is compared by `python -m pipeline.compare` in a fresh process (default options:
DirectRunner), its peak resident memory read by a parent process of its own.

`--join_only` measures the comparison's read and join alone (`pipeline.job.comparing.JoinById`:
the records written to their buckets' files, the paths grouped by bucket, each bucket read
back and grouped by id; the ids counted), without decoding or comparing a record.

Run: .venv/bin/python -m benchmarks.compare [--records 20000 100000] [--join_only]
     [--args ...]
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import List

import numpy as np

from benchmarks.common import machine
from explain_lib.io import encode_explanations
from pipeline.io.framing import frame
from pipeline.results.manifest import MANIFEST_VERSION, manifest_path, write_manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDS = 4
CHUNK = 2000
ONE_SIDED = 10  # records at the end of each run that the other does not hold


def manifest(prefix: str, method: str, files: List[dict], count: int) -> dict:
    """A manifest of the layout the job writes (`pipeline.results.manifest.LAYOUT`)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {
        "manifest_version": MANIFEST_VERSION, "schema_version": 2,
        "method": {"name": method, "params": {}, "received": {}, "explain": {}},
        "metrics": {"names": ["deletion"], "params": {}, "received": {}, "boxes_key": None,
                    "mask_key": None, "aggregates": None},
        "model": {"path": "synthetic.keras", "sha256": "0" * 64, "bytes": 0},
        "input": {"pattern": "synthetic", "tfds": None, "image_key": "image", "id_key": "id",
                  "units_key": None, "image_shape": None},
        "output": {"explanations": f"{prefix}-*.tfrecord.gz",
                   "dead_letters": f"{prefix}.dead_letters-*.tfrecord.gz", "table": None,
                   "overview": f"{prefix}.overview.npz", "map_encoding": "png8",
                   "map_size": "native",
                   "files": {"explanations": files, "dead_letters": [], "table": None}},
        "counts": {"counted": True, "read": count, "explained": count, "dead_lettered": 0,
                   "dead_letters": {}},
        "duplicate_ids": None, "started": stamp, "finished": stamp, "seconds": 0.0,
        "versions": {}, "runner": "synthetic",
    }


def synthesise(prefix: str, count: int, side: int, seed: int, first: int) -> None:
    """`count` records with ids r{first}..: a map of `side` x `side` per record (a smooth
    blob plus noise, so that the two runs agree partly), written as the job writes them."""
    import gzip

    rng = np.random.default_rng(seed)
    grid = (np.arange(side) + 0.5) / side
    files = []
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    per_shard = -(-count // SHARDS)
    for shard in range(SHARDS):
        path = f"{prefix}-{shard:05d}-of-{SHARDS:05d}.tfrecord.gz"
        with gzip.open(path, "wb", compresslevel=1) as target:
            for start in range(shard * per_shard, min(count, (shard + 1) * per_shard), CHUNK):
                stop = min(count, (shard + 1) * per_shard, start + CHUNK)
                n = stop - start
                centre = np.random.default_rng(np.arange(start, stop)).uniform(0.2, 0.8,
                                                                                 (n, 2))
                blob = np.exp(-((grid[None, :, None] - centre[:, 0, None, None]) ** 2
                                + (grid[None, None, :] - centre[:, 1, None, None]) ** 2) / 0.05)
                maps = (blob + rng.normal(0, 0.3, blob.shape))[..., None].astype(np.float32)
                ids = [f"r{first + i}" for i in range(start, stop)]
                units = (np.arange(start, stop) % 10)[:, None]
                records = encode_explanations(
                    ids, units, rng.normal(size=(n, 1)), maps, "png8", (32, 32),
                    probabilities=rng.uniform(size=(n, 1)),
                    metrics={"deletion": rng.uniform(size=(n, 1))})
                target.write(b"".join(map(frame, records)))
        files.append({"path": path, "bytes": os.path.getsize(path)})
    write_manifest(manifest(prefix, "synthetic", files, count), manifest_path(prefix))


JOIN_ONLY = """
import sys
import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from pipeline.job.comparing import (CompareSettings, JoinById, bucket_count, check_runs,
                                    join_folder, read_bucket, remove_join_folder)

settings = CompareSettings(run_a=sys.argv[1], run_b=sys.argv[2], output=sys.argv[3])
runs = check_runs(settings)
try:
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = (p | JoinById(runs.files, join_folder(settings.output), bucket_count(runs))
             | beam.FlatMap(lambda bucket: read_bucket(bucket[1]))
             | beam.combiners.Count.Globally() | beam.Map(print))
finally:
    remove_join_folder(settings.output)
"""
"""The comparison's read and join alone (its records bucketed through files, each bucket read
back and grouped by id), for `--join_only`."""


def measure(run_a: str, run_b: str, output: str, extra: List[str], join_only: bool = False):
    """(seconds, peak RSS MB) of `python -m pipeline.compare` (or, `join_only`, of its read
    and join alone) in a fresh process."""
    script = ("import resource, subprocess, sys\n"
              "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    command = (["-c", JOIN_ONLY, run_a, run_b, output] if join_only else
               ["-m", "pipeline.compare", run_a, run_b, "--output", output, *extra])
    start = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-c", script, sys.executable, *command],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if process.returncode:
        raise RuntimeError(process.stderr[-3000:])
    return time.perf_counter() - start, int(process.stdout.split()[-1]) / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--join_only", action="store_true",
                        help="measure the read and the join alone (the ids counted)")
    parser.add_argument("--args", nargs=argparse.REMAINDER, default=[],
                        help="more arguments of pipeline.compare (Beam options)")
    args = parser.parse_args(argv)
    print(f"Machine: {machine()}\n")
    print("| records per run | compared | seconds | records/s | peak RSS MB | ratio to the "
          "first |")
    print("|---|---|---|---|---|---|")
    first = None
    with tempfile.TemporaryDirectory() as directory:
        for count in args.records:
            run_a = os.path.join(directory, f"a-{count}", "expl")
            run_b = os.path.join(directory, f"b-{count}", "expl")
            synthesise(run_a, count, 8, seed=1, first=0)
            synthesise(run_b, count, 16, seed=2, first=ONE_SIDED)
            output = os.path.join(directory, f"cmp-{count}", "cmp")
            seconds, peak = measure(run_a, run_b, output, args.args, args.join_only)
            compared = count - ONE_SIDED
            if not args.join_only:
                with open(output + ".summary.json") as f:
                    assert json.load(f)["records"] == compared
            first = first or peak
            print(f"| {count} | {compared} | {seconds:.1f} | {compared / seconds:.0f} | "
                  f"{peak:.0f} | {peak / first:.2f} |", flush=True)


if __name__ == "__main__":
    main()
