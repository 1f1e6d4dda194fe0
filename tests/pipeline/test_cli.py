"""The command line: `python -m pipeline` end to end in a subprocess, help, option errors
(exit 2 before anything runs) and the final check read = explained + dead-lettered (exit 1)."""

import os
import subprocess
import sys

import keras
import pytest

import pipeline.job.launcher as cli
from pipeline import demo
from pipeline.job.launcher import RunSummary, main
from tests.pipeline.conftest import write

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_python_m_pipeline_runs_and_prints_the_counts(tmp_path, model_path, shapes):
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(im), int(label), f"c{i}")
               for i, (im, label) in enumerate(zip(images[:3], labels[:3]))] + [b"junk"]
    path = write(tmp_path, "cli", records)
    output = str(tmp_path / "out" / "expl")
    process = subprocess.run(
        [sys.executable, "-m", "pipeline", "--input", path, "--output", output,
         "--model", model_path, "--method", "gradcam", "--runner", "DirectRunner"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "records read:          4" in process.stdout
    assert "records explained:     3" in process.stdout
    assert "records dead-lettered: 1 (parse 1)" in process.stdout
    assert f"explanations: {output}-*.tfrecord.gz" in process.stdout
    written = sorted(os.listdir(tmp_path / "out"))
    assert "expl.manifest.json" in written and "expl.overview.npz" in written
    assert all(name.endswith(".tfrecord.gz") for name in written
               if name not in ("expl.manifest.json", "expl.overview.npz"))
    assert f"manifest:     {output}.manifest.json" in process.stdout
    assert any(name.startswith("expl.dead_letters-") for name in written)


def test_help_lists_the_job_options(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--input", "--output", "--model", "--method", "--method_params", "--image_key",
                   "--image_format", "--image_shape", "--id_key", "--units_key", "--top_k",
                   "--image_size", "--preprocess", "--activation_layer", "--batch_size",
                   "--batches_in_flight", "--map_encoding", "--dead_letter_prefix"):
        assert option in text


@pytest.mark.parametrize(
    "drop, flags, message",
    [
        ("--input", [], "Missing required option(s): --input"),
        ("--model", [], "Missing required option(s): --model"),
        (None, ["--method_params", "{bad json"], "--method_params is not valid JSON"),
        (None, ["--method_params", "[1, 2]"], "must be a JSON object"),
        (None, ["--image_size", "32"], "--image_size takes 2 positive integers"),
        (None, ["--image_format", "raw"], "--image_format raw needs --image_shape"),
        (None, ["--top_k", "0"], "--top_k must be at least 1"),
        (None, ["--batches_in_flight", "0"], "--batches_in_flight must be at least 1"),
        (None, ["--top_k", "5"], "--top_k 5 does not fit the model's 4 output units"),
        (None, ["--method", "integrated_gradients", "--method_params", '{"steps": 5000}'],
         "Unknown parameter(s) steps for integrated_gradients: it takes baseline, n_steps"),
        (None, ["--method", "smoothgrad", "--method_params", '{"repetitions": 0}'],
         "smooth needs repetitions >= 1"),
        (None, ["--method", "integrated_gradients", "--method_params", '{"n_steps": 0}'],
         "integrated_gradients needs n_steps >= 1"),
        (None, ["--method", "integrated_gradients", "--method_params", '{"n_steps": "many"}'],
         "integrated_gradients's parameter n_steps takes an integer, not 'many'."),
        (None, ["--method", "rise", "--method_params", '{"keep_probability": "half"}'],
         "rise's parameter keep_probability takes a number, not 'half'."),
        (None, ["--num_shards", "-1"], "--num_shards must be 0 (as the runner decides) or "
         "more, not -1."),
        (None, ["--method", "occlusion", "--method_params", '{"score": "prob"}'],
         "score must be one of probability, logit, not 'prob'"),
        (None, ["--method_params", '{"postprocessing": "blur"}'], "Unknown filter 'blur'"),
        (None, ["--method", "nonsense"], "Unknown explaining method 'nonsense'"),
        (None, ["--model", "/no/such/model.keras"], "/no/such/model.keras"),
        (None, [], "No files found"),  # the input pattern matches nothing
    ],
)
def test_bad_options_exit_2_before_running(tmp_path, model_path, capsys, drop, flags, message):
    base = {"--input": str(tmp_path / "none-*"), "--output": str(tmp_path / "o"),
            "--model": model_path}
    if "No files" not in message:
        base["--input"] = write(tmp_path, "in", [demo.make_example(b"x", 1, "x")])
    for flag in [drop, *flags[::2]]:
        base.pop(flag, None)
    argv = [part for pair in base.items() for part in pair] + flags
    assert main(argv) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("explain-pipeline:")]
    assert len(said) == 1 and message in said[0], err  # one line, no traceback
    assert "Traceback" not in err
    assert not any(name.startswith("o") for name in os.listdir(tmp_path))


def test_a_folder_as_input_is_refused_like_a_pattern_that_matches_nothing(tmp_path, model_path,
                                                                         capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    write(folder, "in", [demo.make_example(b"x", 1, "x")])
    for pattern in (str(folder), str(tmp_path / "dat*")):
        assert main(["--input", pattern, "--output", str(tmp_path / "o"), "--model",
                     model_path]) == 2
        said = capsys.readouterr().err.strip().splitlines()
        assert said[-1].startswith(f"explain-pipeline: No files found matching --input "
                                   f"{pattern}"), said
        assert len(said) == 1
    assert said == [f"explain-pipeline: No files found matching --input {tmp_path / 'dat*'}."]
    assert not any(name.startswith("o") for name in os.listdir(tmp_path))


def test_a_model_whose_first_output_is_not_scores_per_unit_is_refused(tmp_path, capsys):
    inputs = keras.Input((16, 16, 3))
    segmentation = keras.layers.Conv2D(3, 1)(keras.layers.Conv2D(4, 3, padding="same")(inputs))
    path = str(tmp_path / "segmentation.keras")
    keras.saving.save_model(keras.Model(inputs, segmentation), path)
    records = write(tmp_path, "in", [demo.make_example(b"x", 1, "x")])
    assert main(["--input", records, "--output", str(tmp_path / "o"), "--model", path,
                 "--method", "gradients"]) == 2
    err = capsys.readouterr().err
    assert "first output has shape (None, 16, 16, 3)" in err and "(batch, units)" in err


@pytest.mark.slow
def test_unbalanced_counts_exit_1(tmp_path, model_path, shapes, monkeypatch, capsys):
    path = write(tmp_path, "one", [demo.make_example(demo.encode_image(shapes[0][0]), 1, "x")])
    lost = RunSummary(read=5, explained=3, dead_letters={"parse": 1})
    monkeypatch.setattr(cli, "summarize", lambda result, options: lost)
    assert main(["--input", path, "--output", str(tmp_path / "o"), "--model", model_path]) == 1
    assert "5 records read but 3 explained and 1 dead-lettered" in capsys.readouterr().err
    assert RunSummary(read=4, explained=3, dead_letters={"decode": 1}).balanced


ENTRY_POINTS = {
    "python -m pipeline": [sys.executable, "-m", "pipeline"],
    "explain-pipeline": [os.path.join(os.path.dirname(sys.executable), "explain-pipeline")],
    "./run_local.sh": [os.path.join(REPO, "run_local.sh")],
}


@pytest.mark.parametrize("entry_point, mistake", [
    *[(entry_point, "misspelt options") for entry_point in sorted(ENTRY_POINTS)],
    # The same main() checks the prefixes for all three (test_outputs checks every case).
    ("python -m pipeline", "unwritable output"),
])
@pytest.mark.slow
def test_every_entry_point_fails_fast_with_one_line(tmp_path, model_path, entry_point, mistake):
    command = ENTRY_POINTS[entry_point]
    if not os.access(command[0], os.X_OK):
        pytest.skip(f"{command[0]} is missing (./run_tests.sh installs it)")
    if entry_point == "./run_local.sh" and not os.path.exists(os.path.join(REPO, ".venv")):
        pytest.skip("./run_local.sh runs the project's .venv, which ./run_tests.sh makes")
    path = write(tmp_path, "in", [demo.make_example(b"x", 1, "x")])
    (tmp_path / "a-file").write_bytes(b"")
    output = tmp_path / ("out" if mistake == "misspelt options" else "a-file") / "expl"
    flags = (["--methd", "scorecam", "--map_encodng=raw32"] if mistake == "misspelt options"
             else [])
    process = subprocess.run(
        [*command, "--input", path, "--output", str(output), "--model", model_path, *flags],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        # The console script imports the installed package: point it at this checkout.
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO},
    )
    assert process.returncode == 2, process.stderr[-3000:]
    ours = [line for line in process.stderr.splitlines() if line.startswith("explain-pipeline")]
    if mistake == "misspelt options":
        assert ours == [
            "explain-pipeline: unknown option --methd (did you mean --method?); unknown option "
            "--map_encodng (did you mean --map_encoding?) (python -m pipeline --help lists "
            "the options)."]
    else:
        assert ours == [f"explain-pipeline: --output {output} cannot be written "
                        f"(FileExistsError: [Errno 17] File exists: '{tmp_path / 'a-file'}')."]
    assert "Traceback" not in process.stderr
    assert sorted(os.listdir(tmp_path)) == ["a-file", "in.tfrecord"]


def test_unknown_arguments_are_named_with_the_closest_option(tmp_path, model_path, capsys):
    path = write(tmp_path, "in", [demo.make_example(b"x", 1, "x")])
    base = ["--input", path, "--output", str(tmp_path / "o"), "--model", model_path]
    assert main([*base, "--map_enc", "raw32", "--direct_num_worker=2", "stray"]) == 2
    assert capsys.readouterr().err.strip() == (
        "explain-pipeline: unknown option --map_enc (did you mean --map_encoding?); unknown "
        "option --direct_num_worker (did you mean --direct_num_workers?); unexpected argument "
        "'stray' (python -m pipeline --help lists the options).")
    assert main([*base, "--zzzz"]) == 2
    assert capsys.readouterr().err.strip() == (
        "explain-pipeline: unknown option --zzzz (python -m pipeline --help lists the options).")
    # Beam's own options and ours, in both spellings, are known.
    from pipeline.job.options import check_arguments

    check_arguments([*base, "--runner=DirectRunner", "--direct_num_workers", "2",
                     "--experiments=a", "--experiments", "b", "--strict_read",
                     "--num_shards=2", "--project", "p", "--temp_location", "gs://b/t"])


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "missing"])
def test_model_files_say_what_is_wrong_with_them(tmp_path, model_path, capsys, damage):
    import zipfile

    data = bytearray(open(model_path, "rb").read())
    path = tmp_path / "model.keras"
    if damage == "truncated":
        path.write_bytes(bytes(data[:len(data) // 2]))
        message = f"Model file {path} is corrupt or truncated: it is not a .keras (zip) archive."
    elif damage == "corrupt":
        weights = zipfile.ZipFile(model_path).getinfo("model.weights.h5")
        data[weights.header_offset + 100 + weights.compress_size // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        message = (f"Model file {path} is corrupt or truncated (BadZipFile: Bad CRC-32 for "
                   "file 'model.weights.h5').")
    else:
        message = f"Model file not found: {path}."
    input_path = write(tmp_path, "in", [demo.make_example(b"x", 1, "x")])
    assert main(["--input", input_path, "--output", str(tmp_path / "o"), "--model",
                 str(path)]) == 2
    assert capsys.readouterr().err.strip() == f"explain-pipeline: {message}"


def test_an_add_on_runners_options_are_known_when_it_is_named_by_module(tmp_path, model_path,
                                                                        shapes, capsys):
    """A runner outside Beam's core (Dask's, say) declares its options in its own module,
    which Beam imports only to run the job: the option check imports it first."""
    module = "tests.pipeline.addon_runner"
    assert module not in sys.modules  # else this test could not fail
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(images[i], "png"), int(labels[i]), f"a{i}")
               for i in range(3)]
    assert main(["--input", write(tmp_path, "in", records), "--output", str(tmp_path / "o"),
                 "--model", model_path, "--runner", f"{module}.AddonRunner",
                 "--addon_label=seen"]) == 0
    assert sys.modules[module].AddonRunner.LABELS == ["seen"]
    assert "records explained:     3" in capsys.readouterr().out
    assert main(["--input", str(tmp_path / "none"), "--output", str(tmp_path / "o"),
                 "--model", model_path, "--runner", "no_such_package.Runner"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "explain-pipeline: --runner no_such_package.Runner: cannot import no_such_package "
        "(ModuleNotFoundError: No module named 'no_such_package')."]
