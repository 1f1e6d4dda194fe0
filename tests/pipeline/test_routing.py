"""Every parameter the registry declares reaches its method through the job: from
`--method_params` JSON through the options, the `Settings`, `Explain`, the handler and
the `Worker` to `explain_lib.explain`; values a method refuses stop the job before any work
(exit 2, one line); and real runs show a parameter changing the stored maps and the manifest
recording what the method received."""

import json

import keras
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from explain_lib import io as explain_io
from explain_lib import methods
from pipeline import demo
from pipeline.job.checks import ModelInfo
from pipeline.job.launcher import main
from pipeline.job.options import job_settings
from pipeline.job.transforms import Explain
from pipeline.results.manifest import read_manifest
from pipeline.worker import models
from pipeline.worker.parsing import CheckedRecord
from tests.explain_lib.methods.models import ROUTING, ROUTING_SAME, registered_methods
from tests.pipeline.conftest import SIZE, run_job, write

JOB_FAST = {
    "integrated_gradients": {"n_steps": 5, "chunk_size": 2, "baseline": "blur", "blur_sigma": 1.0},
    "scorecam": {"chunk_size": 3},
    "occlusion": {"patch_size": 8, "stride": 4, "chunk_size": 8},
    "rise": {"masks": 24, "cell_size": 8, "chunk_size": 12},
    # A ReLU network without biases (the test model's are 0) has the same gradient all along
    # the path from 0: uniform baselines, so that the samples' draws matter.
    "gradient_shap": {"n_samples": 4, "chunk_size": 2, "baselines": "uniform"},
    "sobol": {"grid_size": 4, "n_designs": 4, "chunk_size": 18},
    "lime": {"segmentation": "grid", "grid_size": 4, "n_samples": 24, "chunk_size": 12},
    "kernel_shap": {"segmentation": "grid", "grid_size": 4, "n_samples": 24, "chunk_size": 12},
}
"""Fast settings on the job's 32x32 test model."""

JOB_ROUTING = {**ROUTING, "cam": {"logits_layer": "features"},
               "gradient_shap": {**ROUTING["gradient_shap"], "stdevs": 20.0}}
"""The test model has no layer "conv1": CAM is given its last convolution instead, whose
kernel is no Dense head on the activation (CAM refuses it by name). Its pixels are in
[0, 255]: GradientSHAP's noise is given in those units."""

REFUSED = {("cam", "logits_layer"): "CAM weighs"}


@pytest.fixture(scope="module")
def loaded(model_path, monkeypatch_module):
    """Every Worker of this module loads the one model object (as a worker process keeps
    its model): the compiled steps of the unchanged settings are traced once."""
    model = keras.saving.load_model(model_path, compile=False)
    monkeypatch_module.setattr(models, "load_keras_model", lambda path: model)
    return model


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def records(shapes):
    images, labels = shapes
    return [CheckedRecord(f"r{i}", np.array([labels[i]]), b"", "raw",
                          images[i].astype(np.float32)) for i in range(4)]


def job_maps(model_path, name, params, records):
    """The maps the job's worker computes for `records` with `--method_params params`."""
    options = PipelineOptions(["--input", "unused", "--output", "unused", "--model", model_path,
                               "--method", name, "--method_params", json.dumps(params),
                               "--units_key", "label", "--map_encoding", "raw32"])
    transform = Explain(job_settings(options), model_info=ModelInfo((SIZE, SIZE, 3), 4))
    worker = transform.handler.load_model()
    results = transform.handler.explain_checked(records, worker)
    # (The batch's last record also carries the report's overview: `Encoded`.)
    return np.stack([explain_io.decode_explanation(getattr(result.inference, "record",
                                                           result.inference))["maps"]
                     for result in results])


def routing_cases():
    """Every parameter of every method that explains any model (the demo CNN): the
    attention methods' reach the job in tests/pipeline/test_zoo.py, on a transformer."""
    return [(name, parameter) for name in registered_methods()
            for parameter in methods.get(name).parameters
            if (name, parameter) not in REFUSED and parameter not in ROUTING_SAME]


@pytest.mark.parametrize("name, parameter", routing_cases())
@pytest.mark.slow
def test_each_parameter_reaches_its_method_through_the_job(loaded, model_path, records, name,
                                                           parameter):
    base = JOB_FAST.get(name, {})
    default = job_maps(model_path, name, base, records)
    changed = job_maps(model_path, name, {**base, parameter: JOB_ROUTING[name][parameter]},
                       records)
    assert np.abs(changed - default).max() > 1e-3 * np.abs(default).max(), (
        f"{name}: {parameter} did not change the maps")


@pytest.mark.parametrize("name, parameter", [
    *[(name, p) for name in registered_methods() for p in methods.get(name).parameters
      if p in ROUTING_SAME],
    *REFUSED,
])
def test_refused_values_stop_the_job_before_any_work(tmp_path, model_path, capsys, name,
                                                     parameter):
    # The chunk sizes leave the maps as they are (by design): that they arrive shows in the
    # method refusing 0 by name, in the launcher.
    value = JOB_ROUTING[name][parameter]
    path = write(tmp_path, "in", [demo.make_example(b"x", 1, "x")])
    params = json.dumps({**JOB_FAST.get(name, {}), parameter: value})
    assert main(["--input", path, "--output", str(tmp_path / "o"), "--model", model_path,
                 "--method", name, "--method_params", params]) == 2
    said = [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("explain-pipeline:")]
    assert len(said) == 1 and REFUSED.get((name, parameter), f"{parameter}={value}") in said[0]


@pytest.mark.slow
def test_n_steps_changes_the_stored_maps_and_the_manifest_records_it(tmp_path, model_path,
                                                                      shapes):
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(image, "png"), int(label), f"s{i}")
               for i, (image, label) in enumerate(zip(images[:4], labels[:4]))]
    path = write(tmp_path, "steps", records)
    maps = {}
    # The test model's biases are zero, so its ReLU network is homogeneous: from a zero
    # baseline the gradient is the same all along the path. A blurred baseline is not.
    for n_steps in (1, 64):
        params = {"n_steps": n_steps, "baseline": "blur"}
        job = run_job(tmp_path, path, model_path, "--method", "integrated_gradients",
                      "--method_params", json.dumps(params), "--units_key", "label",
                      "--map_encoding", "raw32", name=f"steps{n_steps}")
        assert job.summary.explained == 4
        maps[n_steps] = np.stack([job.explanations[f"s{i}"]["maps"] for i in range(4)])
        method = read_manifest(job.output)["method"]
        assert method["params"] == params
        assert method["received"] == {"baseline": "blur", "n_steps": n_steps, "chunk_size": 8,
                                      "blur_sigma": None}
        assert method["explain"] == {"postprocessing": "absolute_normalize", "resizing": False,
                                     "scores": "logits"}
    assert np.abs(maps[1] - maps[64]).max() > 0.05  # normalised maps in [0, 1]


@pytest.mark.slow
def test_a_meta_methods_own_parameter_reaches_it_through_the_job(tmp_path, model_path, shapes):
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(image, "png"), int(label), f"s{i}")
               for i, (image, label) in enumerate(zip(images[:3], labels[:3]))]
    path = write(tmp_path, "smooth", records)
    stored = []
    for repetitions in (2, 9):
        job = run_job(tmp_path, path, model_path, "--method", "smoothgrad", "--method_params",
                      json.dumps({"repetitions": repetitions}), "--units_key", "label",
                      "--map_encoding", "raw32", name=f"smooth{repetitions}")
        assert job.summary.explained == 3 and not job.dead_letters
        stored.append(np.stack([job.explanations[f"s{i}"]["maps"] for i in range(3)]))
        assert read_manifest(job.output)["method"]["received"]["repetitions"] == repetitions
    assert np.abs(stored[0] - stored[1]).max() > 0.05


def test_the_jobs_own_options_reach_the_workers_config(model_path):
    options = PipelineOptions([
        "--input", "unused", "--output", "unused", "--model", model_path, "--method", "rise",
        "--method_params", '{"masks": 10}', "--precision", "mixed_bfloat16", "--jit_compile",
        "--top_k", "2", "--preprocess", "unit", "--activation_layer", "features",
        "--map_size", "input", "--batch_size", "8", "--batches_in_flight", "3"])
    settings = job_settings(options)
    assert (settings.method, settings.explain_params(), settings.activation_layer,
            settings.preprocess, settings.top_k, settings.precision, settings.jit_compile,
            settings.batch_size) == ("rise", {"masks": 10, "resizing": True}, "features",
                                     "unit", 2, "mixed_bfloat16", True, 8)
    transform = Explain(settings, model_info=ModelInfo((SIZE, SIZE, 3), 4))
    # RunInference hands the handler whole batches of 8, at least 3 and at least 512
    # records, at a time, explained 8 at a time.
    assert transform.handler.batch_elements_kwargs() == {"min_batch_size": 512,
                                                         "max_batch_size": 512,
                                                         "element_size_fn": len}
    assert transform.handler.records_per_call == 512
    assert transform.handler.load_model().settings is settings


def test_the_strategies_options_reach_the_fit_and_the_handler(model_path, monkeypatch):
    """--strategies_clusters and --strategies_sample reach FitStrategies (and through it
    fit_unit's `clusters`); --strategies_size reaches the handler's reduction."""
    import apache_beam as beam

    from pipeline.job import transforms
    from pipeline.results import strategies as job_strategies

    options = PipelineOptions([
        "--input", "unused", "--output", "out/x", "--model", model_path, "--strategies",
        "--strategies_clusters", "3", "--strategies_sample", "40", "--strategies_size", "8"])
    settings = job_settings(options)
    assert (settings.strategies, settings.strategies_clusters, settings.strategies_sample,
            settings.strategies_size, settings.makes_analysis) == (True, 3, 40, 8, True)
    made = []
    original = job_strategies.FitStrategies.__init__

    def spy(self, output, sample=500, clusters=0, *args, **kwargs):
        made.append((output, sample, clusters))
        original(self, output, sample, clusters, *args, **kwargs)

    monkeypatch.setattr(job_strategies.FitStrategies, "__init__", spy)
    monkeypatch.setattr(transforms, "check_input", lambda pattern: None)
    monkeypatch.setattr(transforms, "inspect_model",
                        lambda settings: ModelInfo((SIZE, SIZE, 3), 4))
    transforms.build_pipeline(beam.Pipeline(), settings)
    assert made == [("out/x", 40, 3)]
    fitted = job_strategies.fit_unit(
        0, [(f"r{i}", np.eye(64, dtype=np.float16)[i % 4] + 0.01 * i,
             np.zeros((2, 2, 3), np.uint8)) for i in range(12)], clusters=3)
    assert fitted.k == 3
    transform = transforms.Explain(settings, model_info=ModelInfo((SIZE, SIZE, 3), 4))
    assert transform.handler._settings.strategies_size == 8
