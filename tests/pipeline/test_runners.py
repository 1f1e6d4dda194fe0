"""Beyond DirectRunner: Beam's portable job service with a separate SDK worker pool (the Fn
API path Flink and Dataflow use), Flink translation and a Dataflow dry run."""

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import demo
from pipeline.job.launcher import make_pipeline
from tests.pipeline.conftest import (
    RUNNERS_FLAGS,
    assert_same_output_as_direct,
    run_job,
    write,
)
from tests.services import NO_CLOUD_ENV, portable_services


@pytest.fixture
def job_input(tmp_path, shapes):
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(im), int(label), f"p{i}")
               for i, (im, label) in enumerate(zip(images[:6], labels[:6]))]
    records.append(b"not a tf.train.Example")
    write(tmp_path, "portable-0", records[:3])
    write(tmp_path, "portable-1", records[3:])
    return str(tmp_path / "portable-*")


@pytest.mark.slow
def test_job_service_with_an_external_worker_pool_equals_direct_runner(
    tmp_path, model_path, runners_input, direct_runners_job
):
    pattern, records = runners_input
    with portable_services() as portable_flags:
        portable = run_job(tmp_path, pattern, model_path, *RUNNERS_FLAGS, *portable_flags,
                           name="portable")
    assert_same_output_as_direct(portable, direct_runners_job, records)


def _transform_names(pipeline_proto):
    return {t.unique_name for t in pipeline_proto.components.transforms.values()}


@pytest.mark.slow
def test_flink_options_parse_and_the_job_translates_to_its_portable_form(
    tmp_path, model_path, job_input
):
    flink = ["--runner=FlinkRunner", "--flink_master=localhost:8081", "--flink_version=1.19",
             "--environment_type=LOOPBACK", "--parallelism=2"]
    pipeline, _ = make_pipeline(["--input", job_input, "--output",
                                 str(tmp_path / "flink" / "expl"), "--model", model_path,
                                 *flink])
    flink_options = pipeline.options.view_as(beam.options.pipeline_options.FlinkRunnerOptions)
    assert (flink_options.flink_master, flink_options.flink_version) == ("localhost:8081",
                                                                          "1.19")
    proto = pipeline.to_runner_api()
    names = _transform_names(proto)
    for stage in ("Read", "Explain/Rebalance", "Explain/RunInference",
                  "Explain/RouteResults", "WriteExplanations", "WriteDeadLetters"):
        assert stage in names, stage
    # The translated pipeline round-trips: what a job server would receive is complete.
    rebuilt = beam.Pipeline.from_runner_api(proto, pipeline.runner, PipelineOptions(flink))
    assert _transform_names(rebuilt.to_runner_api()) == names


@pytest.mark.slow
def test_dataflow_job_builds_with_a_dry_run(tmp_path, model_path, job_input, monkeypatch):
    for name, value in NO_CLOUD_ENV.items():
        monkeypatch.setenv(name, value)
    # Should anything try Cloud Storage, it reaches a closed local port, never the network.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    dataflow = [
        "--runner=DataflowRunner", "--project=explain-test", "--region=us-central1",
        "--temp_location=gs://explain-test/tmp", "--staging_location=gs://explain-test/staging",
        "--job_name=explain-dry-run", "--setup_file=./setup.py", "--no_auth",
        "--dry_run=True", "--sdk_location=container",
        "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1;"
        "install-nvidia-driver",
        "--experiments=no_use_multiple_sdk_containers",
    ]
    pipeline, _ = make_pipeline(["--input", job_input, "--output",
                                 str(tmp_path / "dataflow" / "expl"), "--model", model_path,
                                 *dataflow])
    result = pipeline.run()  # built, not submitted
    job = result.job
    assert job.proto.name == "explain-dry-run"
    cloud = job.options.view_as(beam.options.pipeline_options.GoogleCloudOptions)
    assert cloud.dataflow_service_options == [
        "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"]
    names = _transform_names(job.proto_pipeline)
    assert {"Explain/Rebalance", "Explain/RunInference", "Explain/RouteResults",
            "WriteExplanations"} <= names
    # The workers get this project as a package built from setup.py.
    dependencies = [
        dependency.role_payload
        for environment in job.proto_pipeline.components.environments.values()
        for dependency in environment.dependencies
    ]
    assert any(b"workflow.tar.gz" in payload for payload in dependencies), dependencies


def test_records_are_rebalanced_on_distributed_runners_only(tmp_path, model_path, job_input):
    """On DirectRunner a shuffle would hold every record in memory at once: left out there,
    the whole job after the read is one fused stage."""
    local, _ = make_pipeline(["--input", job_input, "--output", str(tmp_path / "l" / "expl"),
                              "--model", model_path])
    assert "Explain/Rebalance" not in _transform_names(local.to_runner_api())
    portable, _ = make_pipeline(["--input", job_input, "--output", str(tmp_path / "p" / "expl"),
                                 "--model", model_path, "--runner=PortableRunner",
                                 "--job_endpoint=localhost:1"])
    assert "Explain/Rebalance" in _transform_names(portable.to_runner_api())
