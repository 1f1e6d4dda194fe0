"""What Dataflow workers receive: the source distribution built from setup.py (the way Beam
builds it for --setup_file) holds both packages and every module they import; the worker
image (docker/Dockerfile) runs the launcher's Python and Beam; the Flink command of
docs/job.md names the job server of the Flink version it asks for."""

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile

from apache_beam.options.pipeline_options import FlinkRunnerOptions
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("explain_lib", "pipeline")


def source_modules():
    for package in PACKAGES:
        for directory, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(directory, name), ROOT)


def test_sdist_holds_both_packages_and_everything_they_import(tmp_path):
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    modules = set(source_modules())
    assert {"explain_lib/__init__.py", "explain_lib/engine/explaining.py",
            "pipeline/__init__.py", "pipeline/worker/handler.py", "setup.py"} <= names
    assert modules <= names, sorted(modules - names)
    # Every project module any module imports is shipped too.
    for module in modules:
        tree = ast.parse(open(os.path.join(ROOT, module), encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top = node.module.split(".")[0]
                if top in PACKAGES:
                    path = node.module.replace(".", "/")
                    assert f"{path}.py" in names or f"{path}/__init__.py" in names, (
                        module, node.module)


def _setup_requirements():
    """setup.py's python_requires and install_requires, read from its source."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords
                if k.arg in ("python_requires", "install_requires")}
    return keywords["python_requires"], [Requirement(r) for r in keywords["install_requires"]]


def _dockerfile_arguments():
    text = open(os.path.join(ROOT, "docker", "Dockerfile"), encoding="utf-8").read()
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M)), text


def test_the_worker_image_runs_the_launchers_python_and_beam():
    """Beam pickles the job's code in the launcher and unpickles it on the workers: the
    image's Python minor version and Beam version must be what setup.py lets the launcher
    run, and the SDK harness must come from that same Beam and Python."""
    python_requires, requirements = _setup_requirements()
    arguments, text = _dockerfile_arguments()
    python = arguments["PYTHON_VERSION"]
    allowed = SpecifierSet(python_requires)
    # setup.py admits exactly one minor version, the image's.
    minors = [f"3.{minor}" for minor in range(8, 20) if f"3.{minor}.0" in allowed]
    assert minors == [python], (python_requires, python)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == python
    by_name = {r.name: r for r in requirements}
    beam = arguments["BEAM_VERSION"]
    assert beam in by_name["apache-beam"].specifier, (beam, by_name["apache-beam"])
    assert beam == importlib.metadata.version("apache-beam")
    tensorflow = re.fullmatch(r"tensorflow/tensorflow:([\d.]+)-gpu",
                              arguments["TENSORFLOW_IMAGE"]).group(1)
    assert tensorflow in by_name["tensorflow"].specifier
    assert "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam" in text
    assert "COPY --from=beam /opt/apache/beam /opt/apache/beam" in text
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text
    # The Dataflow command of docs/job.md uses the image, with the SDK inside it.
    page = open(os.path.join(ROOT, "docs", "job.md"), encoding="utf-8").read()
    for flag in ("--sdk_container_image=", "--sdk_location=container", "--disk_size_gb="):
        assert flag in page, flag


def test_the_docs_flink_command_matches_its_job_server():
    """Beam's Flink runner starts the job server of --flink_version (default: the newest
    Beam publishes); the command of docs/job.md names the jar of the version it passes."""
    page = open(os.path.join(ROOT, "docs", "job.md"), encoding="utf-8").read()
    section = page.split("### Flink", 1)[1].split("\n## ", 1)[0]
    (version,) = set(re.findall(r"--flink_version=([\d.]+)", section))
    assert version in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    beam = importlib.metadata.version("apache-beam")
    jars = set(re.findall(r"beam-runners-flink-([\d.]+)-job-server-([\d.]+)\.jar", section))
    assert jars == {(version, beam)}, jars
    for published in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS:
        assert published in section, published  # the versions it lists
