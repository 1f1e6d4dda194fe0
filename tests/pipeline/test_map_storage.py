"""`--map_encoding` and `--map_size` through the whole job: what is stored equals in-process
`explain` at that size within the encoding's bound (png16 with native maps is covered by
test_manifest's run, png8 at the input size by test_end_to_end)."""

import numpy as np
import pytest

from pipeline import demo
from pipeline.__main__ import main

from tests.pipeline.conftest import SIZE, expected_explanations, run_job, write


@pytest.mark.parametrize(
    "encoding, map_size, resizing, stored",
    [("float16", "5,6", (5, 6), (5, 6)), ("raw32", "input", True, (SIZE, SIZE))],
)
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
        (["--map_size", "big"], "--map_size is input, native or H,W"),
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
