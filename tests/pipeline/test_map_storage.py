"""`--map_encoding` and `--map_size` through the whole job: what is stored equals in-process
`explain` at that size within the encoding's bound (png16 with native maps is covered by
test_manifest's run, png8 at the input size and with the default map size by
test_end_to_end)."""

import numpy as np
import pytest

from explain_lib import io as explain_io
from pipeline import demo
from pipeline.job.launcher import main
from pipeline.results.manifest import read_manifest
from tests.pipeline.conftest import (
    SIZE,
    assert_maps_match,
    expected_explanations,
    run_job,
    write,
)


@pytest.mark.parametrize(
    "encoding, map_size, resizing, stored",
    [("float16", "5,6", (5, 6), (5, 6)), ("raw32", "input", True, (SIZE, SIZE))],
)
@pytest.mark.slow
def test_encoding_and_size_round_trip_through_the_job(tmp_path, model_path, model, shapes,
                                                      encoding, map_size, resizing, stored):
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(image, "png"), int(label), f"s{i}")
               for i, (image, label) in enumerate(zip(images[:4], labels[:4]))]
    job = run_job(tmp_path, write(tmp_path, "in", records), model_path, "--units_key", "label",
                  "--map_encoding", encoding, "--map_size", map_size,
                  "--method_params", '{"postprocessing": null}')  # raw, signed maps
    logits, maps = expected_explanations(model, images[:4].astype(np.float32), labels[:4, None],
                                         method_params={"postprocessing": None,
                                                        "resizing": resizing})
    assert maps.shape[1:3] == stored
    for i in range(4):
        decoded = job.explanations[f"s{i}"]
        assert decoded["map_encoding"] == encoding
        assert decoded["maps"].shape == (*stored, 1) and decoded["maps"].dtype == np.float32
        np.testing.assert_array_equal(decoded["input_size"], [SIZE, SIZE])
        np.testing.assert_allclose(decoded["logits"], logits[i], rtol=1e-4, atol=1e-6)
        # The codec's own bound, plus float noise from batching differently.
        noise = 1e-4 * np.abs(maps[i]).max() + 1e-6
        error = np.abs(decoded["maps"] - maps[i]).max(axis=(0, 1))
        assert np.all(error <= decoded["max_error"] + noise), (error, decoded["max_error"])
        if encoding == "float16":
            assert np.all(decoded["max_error"] > 0)
        else:
            assert np.all(decoded["max_error"] == 0)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--map_size", "big"], "--map_size is auto, input, native or H,W"),
        (["--map_size", "native", "--method_params", '{"resizing": true}'],
         "Give the map size once"),
        (["--map_encoding", "jpeg"], "Unknown map encoding 'jpeg'"),
    ],
)
def test_bad_map_options_exit_2_before_running(tmp_path, model_path, capsys, flags, message):
    path = write(tmp_path, "in", [demo.make_example(b"x", 1, "x")])
    argv = ["--input", path, "--output", str(tmp_path / "o"), "--model", model_path, *flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("method, stored, recorded", [
    ("gradcam", (SIZE // 4, SIZE // 4), "native"),   # the CAM's own feature map
    ("gradients", (SIZE, SIZE), "input"),            # gradient maps have the input's size
])
@pytest.mark.slow
def test_auto_map_size_stores_each_method_at_its_own_resolution(tmp_path, model_path, model,
                                                                shapes, method, stored,
                                                                recorded):
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(image, "png"), int(label), f"a{i}")
               for i, (image, label) in enumerate(zip(images[:3], labels[:3]))]
    job = run_job(tmp_path, write(tmp_path, "auto", records), model_path, "--units_key",
                  "label", "--method", method)  # no --map_size: auto
    manifest = read_manifest(job.output)
    assert manifest["output"]["map_size"] == recorded
    assert manifest["output"]["map_size_option"] == "auto"
    logits, maps = expected_explanations(model, images[:3].astype(np.float32), labels[:3, None],
                                         method=method)
    for i in range(3):
        decoded = job.explanations[f"a{i}"]
        assert decoded["maps"].shape == (*stored, 1)
        np.testing.assert_array_equal(decoded["input_size"], [SIZE, SIZE])
        assert_maps_match(decoded, maps[i], logits[i])
    # Read at the input's size, they are what --map_size input stores.
    _, full = expected_explanations(model, images[:3].astype(np.float32), labels[:3, None],
                                    method=method, map_size="input")
    read = {row["id"].decode(): row["maps"] for row in explain_io.read_explanations(
        job.output + "-*", size="input").as_numpy_iterator()}
    for i in range(3):
        span = full[i].max() - full[i].min()
        assert np.abs(read[f"a{i}"] - full[i]).max() <= span / 255 + 1e-3 * span + 1e-6


@pytest.mark.slow
def test_precision_runs_the_model_in_half_precision_within_its_bound(tmp_path, model_path,
                                                                     model, shapes):
    """The job's --precision reaches the worker: maps differ from float32 ones, within the
    bound tests/explain_lib/test_precision.py states for Grad-CAM under bfloat16."""
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(image, "png"), int(label), f"p{i}")
               for i, (image, label) in enumerate(zip(images[:4], labels[:4]))]
    path = write(tmp_path, "precision", records)
    flags = ["--units_key", "label", "--map_encoding", "raw32", "--map_size", "input"]
    full = run_job(tmp_path, path, model_path, *flags, name="float32")
    half = run_job(tmp_path, path, model_path, *flags, "--precision", "mixed_bfloat16",
                   name="bfloat16")
    assert read_manifest(half.output)["input"]["precision"] == "mixed_bfloat16"
    differences = [np.abs(half.explanations[f"p{i}"]["maps"] - full.explanations[f"p{i}"]["maps"])
                   .max() for i in range(4)]
    assert 0 < max(differences) <= 0.05, differences
