"""A fixed small run of the job and what it writes, byte for byte: the explanation records,
the dead letters, the Parquet table's rows, the report's overview and the report page,
each as its SHA-256 in `golden.json`. A restructure of the code changes none of them; a
change that does says so here, and `python -m tests.pipeline.test_golden` writes the new
values (state the reason in the commit).

What is compared, and why not the files themselves: the records of the TFRecord shards (the
shards are gzip streams whose headers hold their time of writing), the table's rows as
Arrow IPC bytes (a Parquet file names the library that wrote it), the overview's arrays and
entries (a .npz archive holds its members' times), the report page with the run's times
and its manifest's paths taken out (they are the run's, not the code's).
"""

import hashlib
import io
import json
import os
import re
import sys

import keras
import numpy as np

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden.json")


def golden_run(directory: str) -> dict:
    """The fixed run, in `directory`: 24 PNG shapes (ids, labels, boxes) and 2 bad records,
    the demo CNN at 32x32 with fixed random weights, Grad-CAM of the top 2 units, deletion
    and the pointing game, the table with the labels copied, the report. Returns the
    SHA-256 of each output (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from explain_lib import io as explain_io
    from pipeline import demo, report
    from pipeline.job.launcher import run

    keras.utils.set_random_seed(11)
    model = demo.make_model((32, 32, 3), 4, width=4)
    model_path = os.path.join(directory, "model.keras")
    keras.saving.save_model(model, model_path)
    images, labels, masks = demo.make_shapes(24, seed=13, size=32, return_masks=True)
    boxes = demo.shape_boxes(masks)
    records = [demo.make_example(demo.encode_image(image, "png"), int(label), f"g{i:02d}",
                                 **{demo.BOX_KEY: boxes[i].ravel().tolist()})
               for i, (image, label) in enumerate(zip(images, labels))]
    records += [b"not an example", demo.make_example(b"not an image", 1, "broken")]
    inputs = demo.write_records(os.path.join(directory, "in.tfrecord"), records)
    output = os.path.join(directory, "out", "expl")
    table = os.path.join(directory, "out", "table")
    run(["--input", inputs, "--output", output, "--model", model_path, "--method", "gradcam",
         "--top_k", "2", "--metrics", "deletion,pointing_game", "--boxes_key", demo.BOX_KEY,
         "--metric_params", '{"deletion": {"n_steps": 8}}', "--table", table,
         "--copy_features", "label", "--num_shards", "1"])
    page = os.path.join(directory, "report.html")
    report.build(output, out=page, examples=3)

    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    rows = pa.concat_tables([pq.read_table(path) for path in sorted(
        explain_io.list_files(table + "-*.parquet"))])
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    with np.load(output + ".overview.npz", allow_pickle=False) as stored:
        overview = b"".join(name.encode() + stored[name].tobytes()
                            for name in sorted(stored.files))
    text = open(page, encoding="utf-8").read().replace(directory, "DIR")
    text = re.sub(r"<details>.*?</details>", "MANIFEST", text, flags=re.S)  # times, versions
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "TIME", text)
    text = re.sub(r"\(\d+\.\d s\)", "(SECONDS)", text)
    text = re.sub(r"sha256 [0-9a-f]{16}", "SHA", text)  # the model file's: its save time
    return {
        "explanations": digest(b"".join(sorted(explain_io.iterate_records(output + "-*")))),
        "dead_letters": digest(b"".join(sorted(explain_io.iterate_records(
            output + ".dead_letters-*")))),
        "table": digest(sink.getvalue()),
        "overview": digest(overview),
        "report": digest(text.encode("utf-8")),
    }


def test_a_fixed_run_writes_what_it_wrote_before(tmp_path):
    with open(GOLDEN, encoding="utf-8") as source:
        expected = json.load(source)
    assert golden_run(str(tmp_path)) == expected


if __name__ == "__main__":  # python -m tests.pipeline.test_golden: write golden.json anew
    import tempfile

    import tests.conftest  # noqa: F401  (the two logical CPUs every test process has)

    with tempfile.TemporaryDirectory() as scratch:
        values = golden_run(scratch)
    with open(GOLDEN, "w", encoding="utf-8") as target:
        json.dump(values, target, indent=2, sort_keys=True)
        target.write("\n")
    print(json.dumps(values, indent=2), file=sys.stderr)
