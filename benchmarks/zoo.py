"""Every registered method on every model family users bring, with both heads.

For each family of the zoo (`tests/zoo.py`: one small model per keras.applications family
and per KerasHub image classifier family, random weights, the smallest input each takes),
built with a linear head and with a softmax head (the same weights), and each registered
method with its conventional settings (multi-pass methods cut short:
`tests.explain_lib.methods.models.FAST_SETTINGS`), two images are explained with the
method's shortcut on the softmax model and on the linear one. A row says whether the maps
are finite and of the input's size, whether the softmax model's maps equal the linear
one's (what `explain`'s default `scores="logits"` promises), and how long the softmax
model's call took (its first: tracing included). A method that refuses a family (CAM where
the head is not global average pooling + Dense, attention rollout on a model without
reachable attention) is listed with its reason.

Section `job`: each family's softmax model saved as a `.keras` file, as users save it, and
explained by the job (`python -m pipeline`'s `run`, DirectRunner, two PNG records): Grad-CAM,
attention rollout on the transformers whose attention is reached.

Run: .venv/bin/python -m benchmarks.zoo [--families ResNetV2 hub:ViT] [--methods gradcam]
     [--sections explain job]
"""

import argparse
import os
import tempfile
import time

import keras
import numpy as np

from benchmarks.common import machine
from explain_lib import methods, shortcuts
from tests import zoo
from tests.explain_lib.methods.models import FAST_SETTINGS


def check(family: str, name: str, models, x) -> str:
    """One row's cells after the family and the method."""
    units = np.array([[1], [3]], "int32")
    params = {"verbose": 0, "postprocessing": None, **FAST_SETTINGS.get(name, {})}
    start = time.perf_counter()
    try:
        _, maps = shortcuts.SHORTCUTS[name](models["softmax"], x, units, **params)
    except ValueError as error:
        return f"refused | | | {' '.join(str(error).split())[:120]}"
    seconds = time.perf_counter() - start
    _, linear = shortcuts.SHORTCUTS[name](models[None], x, units, **params)
    shaped = maps.shape == (len(x), *x.shape[1:3], 1) and bool(np.isfinite(maps).all())
    scale = float(np.abs(linear).max()) or 1.0
    same = bool(np.allclose(maps, linear, rtol=1e-4, atol=1e-5 * scale))
    return f"{'yes' if shaped else 'NO'} | {'yes' if same else 'NO'} | {seconds:.1f} |"


def job_row(family: str, method: str, directory: str) -> str:
    """The family's softmax model saved as a `.keras` file and explained by the job (two
    PNG records, in-process DirectRunner): whether every record was explained and its maps
    are finite, and the job's wall seconds."""
    from explain_lib import io as explain_io
    from pipeline import demo
    from pipeline.job.launcher import run

    path = os.path.join(directory, f"{family.replace(':', '-')}.keras")
    keras.saving.save_model(zoo.build(family, "softmax"), path)
    side = zoo.input_size(family)
    images = np.random.default_rng(1).integers(0, 256, (2, side, side, 3), dtype=np.uint8)
    records = [demo.make_example(demo.encode_image(image, "png"), unit, f"z{i}")
               for i, (image, unit) in enumerate(zip(images, [1, 3]))]
    inputs = demo.write_records(os.path.join(directory, f"{family}.tfrecord"), records)
    output = os.path.join(directory, family.replace(":", "-"), "expl")
    start = time.perf_counter()
    summary = run(["--input", inputs, "--output", output, "--model", path, "--method", method,
                   "--units_key", "label"])
    seconds = time.perf_counter() - start
    maps = [row["maps"] for row in explain_io.iterate_decoded(output + "-*",
                                                            explain_io.decode_explanation)]
    good = summary.explained == 2 and all(np.isfinite(m).all() for m in maps)
    return f"| {family} | {method} | {'yes' if good else 'NO'} | {seconds:.1f} |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(zoo.FAMILIES))
    parser.add_argument("--methods", nargs="+", default=list(methods.REGISTRY))
    parser.add_argument("--sections", nargs="+", default=["explain", "job"],
                        choices=["explain", "job"])
    args = parser.parse_args(argv)
    print(f"Machine: {machine()}\n")
    if "explain" in args.sections:
        print("| family | method | finite, input-sized | softmax = linear head | "
              "s (first call) | refused because |")
        print("|---|---|---|---|---|---|")
        for family in args.families:
            models = {head: zoo.build(family, head) for head in ("softmax", None)}
            side = zoo.input_size(family)
            x = np.random.default_rng(0).uniform(0, 255, (2, side, side, 3)).astype("float32")
            for name in args.methods:
                print(f"| {family} | {name} | {check(family, name, models, x)}", flush=True)
    if "job" in args.sections:
        print("\n| family | method | explained by the job, finite maps | job s |")
        print("|---|---|---|---|")
        with tempfile.TemporaryDirectory() as directory:
            for family in args.families:
                method = "attention_rollout" if family in zoo.TRANSFORMERS else "gradcam"
                print(job_row(family, method, directory), flush=True)


if __name__ == "__main__":
    main()
