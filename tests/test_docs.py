"""The documentation runs: every code block of README.md and docs/*.md is run here, or checked
as far as this machine allows, and the reference tables and links are the code's.

Separation of concerns:

- `blocks` finds the blocks itself, by parsing each page's fences, so that a block added to a
  page is run (or fails here until `CHECKED` says why it cannot run). A fence names its
  language: `python` blocks are executed, `bash` blocks run with bash, `text` blocks are output
  shown to the reader (not run), `json` blocks are excerpts of a file the job writes (checked).
- `CHECKED` lists the blocks that are checked rather than run, keyed by a snippet of the block
  that says what it is, each with the reason it cannot run here and the function that checks
  what it can (a Dataflow command's options parsed as the launcher parses them, the setup
  commands against the scripts they name).
- `workspace` (module-scoped) makes one small world every block runs in, the way the pages
  name it: `data/*.tfrecord` (eight 32x32 JPEG shapes with label, id, box and file name),
  `model.keras` (the demo's CNN, untrained), a tiny `demo/` that `python -m pipeline.demo`
  takes as generated, and the two runs the other blocks read: the demo run `./run_local.sh`
  makes (`out/demo/`) and the job of the block `SHARED_RUN` names (`out/expl`), run once
  here, both at once, and shared by every block that reads them.
- Python blocks get `model`, `x`, `y`, `boxes` and `images` (the pages' placeholders, said in
  each page's words) and run with the workspace as working directory; a block that runs the
  job itself (`python -m pipeline ...`) runs in a directory of its own, its inputs linked, so
  that it does not overwrite the shared run.
- `AFTER` holds the few checks that make a block's comments true (the shapes, the parameters
  it shows).

The whole module takes about two minutes on a 2-core machine: the job runs three times
(the demo, the shared run, the command of docs/job.md), each in a fresh process as a user
types it.
"""

import dataclasses
import fnmatch
import glob
import importlib
import importlib.util
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from typing import Callable, Dict, List, Tuple

import keras
import numpy as np
import pytest

from explain_lib import methods
from explain_lib import metrics as explain_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(
    os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "docs", "*.md")))
LANGUAGES = ("python", "bash", "text", "json")
RECORDS = 8
SIZE = 32
UNITS = 4
TIMEOUT = 600


# --- finding the blocks ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block: its page, the line of its opening fence, its language, its text."""

    page: str
    line: int
    language: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def read_page(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def blocks(page: str) -> List[Block]:
    """The fenced blocks of `page`, in order. A fence opens with three backticks and a
    language at the start of a line, and closes with three backticks alone."""
    found, opened, language, lines = [], None, None, []
    for number, line in enumerate(read_page(page).splitlines(), 1):
        if opened is None:
            if line.startswith("```"):
                opened, language, lines = number, line[3:].strip(), []
        elif line.rstrip() == "```":
            found.append(Block(page, opened, language, "\n".join(lines) + "\n"))
            opened = None
        else:
            lines.append(line)
    assert opened is None, f"{page}:{opened}: a fence is never closed"
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]


def block_with(snippet: str) -> Block:
    """The one block holding `snippet`."""
    (block,) = [block for block in ALL_BLOCKS if snippet in block.text]
    return block


# --- the world the blocks run in ---------------------------------------------------------------


def command_env() -> Dict[str, str]:
    """The environment of a page's commands: `python` is this interpreter (the project's
    environment), the project's packages come from this tree."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def start_bash(text: str, cwd: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-euo", "pipefail", "-c", text], cwd=cwd, env=command_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@dataclasses.dataclass
class Ran:
    """A finished command: its exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str

    def check(self, what: str) -> "Ran":
        assert self.returncode == 0, (
            f"{what} exited with status {self.returncode}:\n{self.stdout[-3000:]}\n"
            f"{self.stderr[-6000:]}")
        return self


def finish(process: subprocess.Popen) -> Ran:
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    return Ran(process.returncode, stdout, stderr)


def run_bash(text: str, cwd: str) -> Ran:
    return finish(start_bash(text, cwd))


def write_inputs(directory: str):
    """The pages' `data/*.tfrecord` (two files of JPEG records with `label`, `id`,
    `objects/bbox` and `filename`), `model.keras` and a tiny generated `demo/`; returns the
    images, labels and boxes."""
    from pipeline import demo

    images, labels, masks = demo.make_shapes(RECORDS, seed=3, size=SIZE, return_masks=True)
    boxes = demo.shape_boxes(masks)
    records = [demo.make_example(demo.encode_image(image), int(label), f"img-{i}",
                                 **{demo.BOX_KEY: boxes[i, 0].tolist(),
                                    "filename": f"img-{i}.jpg"})
               for i, (image, label) in enumerate(zip(images, labels))]
    for part in range(2):
        demo.write_records(os.path.join(directory, "data", f"part-{part}.tfrecord"),
                           records[part::2])
    keras.utils.set_random_seed(7)
    model = demo.make_model((SIZE, SIZE, 3), UNITS, width=4)
    keras.saving.save_model(model, os.path.join(directory, "model.keras"))
    # The demo as `pipeline.demo.ensure_demo` leaves it, so that it is taken as generated (the
    # real one trains for minutes): the same model and shapes, in the demo's layout.
    generated = demo.Demo.at(os.path.join(directory, "demo"))
    os.makedirs(os.path.dirname(generated.model), exist_ok=True)
    keras.saving.save_model(model, generated.model)
    demo.write_shapes(os.path.dirname(generated.inputs), "shapes", images, labels, shards=2,
                      boxes=boxes)
    with open(os.path.join(generated.directory, "VERSION"), "w") as f:
        f.write(demo.DEMO_VERSION)
    return images, labels, boxes


DEMO_COMMAND = "python -m pipeline.demo --demo_dir demo --out_dir out/demo"
"""What `./run_local.sh` runs once `.venv` exists (`check_setup_commands` reads it there)."""

SHARED_RUN = "--metrics deletion,insertion,pointing_game,energy_pointing_game"
"""The block whose job every reading block shares (docs/outputs.md, "Metrics in the job"):
its outputs are `out/expl*`, with metrics, a table and copied features."""


@dataclasses.dataclass
class Workspace:
    directory: str
    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    demo_run: Ran
    shared_run: Ran


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("docs"))
    images, labels, boxes = write_inputs(directory)
    demo = start_bash(DEMO_COMMAND, directory)
    shared = start_bash(block_with(SHARED_RUN).text, directory)
    return Workspace(directory, images, labels, boxes, finish(demo), finish(shared))


def namespace(space: Workspace) -> Dict[str, object]:
    """The placeholders the pages' Python blocks use: `model` (a Keras classifier), `x` and
    `images` (images it takes, (N, H, W, C) in [0, 255]), `y` (a class per image) and `boxes`
    (each image's ground-truth boxes, (N, M, 4))."""
    model = keras.saving.load_model(os.path.join(space.directory, "model.keras"), compile=False)
    x = space.images.astype("float32")
    return {"__name__": "docs", "model": model, "x": x, "images": x.copy(),
            "y": space.labels.copy(), "boxes": space.boxes.copy()}


def runs_a_job(block: Block) -> bool:
    """Whether a shell block runs the job itself (`python -m pipeline ...`)."""
    return bool(re.search(r"^\s*python -m pipeline\s", block.text, re.M))


# --- blocks checked rather than run ------------------------------------------------------------


def commands_of(text: str) -> List[str]:
    """A shell block's commands: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [" ".join(shlex.quote(word) for word in words) for words in lines if words]


BASE_ARGUMENTS = ["--input", "data/*.tfrecord", "--output", "out/expl", "--model", "model.keras"]
"""What a command's `...` stands for: the job's required options."""


def job_arguments(command: str) -> List[str]:
    """The arguments of a `python -m pipeline ...` command, `...` replaced by
    `BASE_ARGUMENTS`."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "pipeline"], command
    words = [word for word in words[3:] if word != "&"]
    if "..." in words:
        at = words.index("...")
        words[at:at + 1] = BASE_ARGUMENTS
    return words


def check_job_command(command: str):
    """The command's arguments as the launcher checks them before any work: each is an option
    of the job or of Beam (`check_arguments`), and they make valid settings (`job_settings`).
    Returns the parsed options and settings."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.job.options import check_arguments, job_settings

    argv = job_arguments(command)
    check_arguments(argv)
    options = PipelineOptions(argv)
    return options, job_settings(options)


def job_commands(block: Block) -> List[str]:
    commands = [c for c in commands_of(block.text) if c.startswith("python -m pipeline ")]
    assert commands, block.name
    return commands


def check_setup_commands(block: Block, space: Workspace):
    """The two commands are the scripts at the root, executable, and `./run_local.sh` runs
    the demo module the workspace runs (`DEMO_COMMAND`, on a tiny demo), the tests the suite
    with pytest."""
    assert commands_of(block.text) == ["./run_local.sh", "./run_tests.sh"]
    for script in ("run_local.sh", "run_tests.sh"):
        mode = os.stat(os.path.join(ROOT, script)).st_mode
        assert mode & stat.S_IXUSR, f"{script} is not executable"
    local = read_page("run_local.sh")
    assert "exec .venv/bin/" + DEMO_COMMAND in local
    assert 'exec .venv/bin/python -m pipeline "$@"' in local
    assert 'exec .venv/bin/python -m pytest "$@"' in read_page("run_tests.sh")
    space.demo_run.check(DEMO_COMMAND)


def check_local_runners(block: Block, space: Workspace):
    """Each command's options parse, and name the runner settings the page describes."""
    from apache_beam.options.pipeline_options import DirectOptions, PortableOptions

    several, portable = job_commands(block)
    options, _ = check_job_command(several)
    assert options.view_as(DirectOptions).direct_num_workers == 2
    assert options.view_as(DirectOptions).direct_running_mode == "multi_processing"
    options, _ = check_job_command(portable)
    assert options.view_as(PortableOptions).job_endpoint == "embed"


def check_portable_services(block: Block, space: Workspace):
    """The two service modules exist in this Beam, and the job's options parse."""
    from apache_beam.options.pipeline_options import PortableOptions

    for module in re.findall(r"python -m (apache_beam\S+)", block.text):
        assert importlib.util.find_spec(module), module
    (command,) = job_commands(block)
    options, _ = check_job_command(command)
    assert options.view_as(PortableOptions).environment_type == "EXTERNAL"
    assert options.view_as(PortableOptions).environment_config == "localhost:50000"


def check_tfds_command(block: Block, space: Workspace):
    (command,) = job_commands(block)
    _, settings = check_job_command(command)
    assert (settings.tfds, settings.split) == ("mnist:3.0.1", "test")


def check_dataflow_commands(block: Block, space: Workspace):
    """The image is built from the project's Dockerfile, pushed under the name the job gives
    `--sdk_container_image`, and the job's options (Beam's Dataflow options among them)
    parse as the launcher parses them."""
    from apache_beam.options.pipeline_options import (
        GoogleCloudOptions,
        SetupOptions,
        StandardOptions,
        WorkerOptions,
    )

    commands = commands_of(block.text)
    build = shlex.split(commands[0])
    assert build[:2] == ["docker", "build"] and build[-1] == "."
    assert os.path.exists(os.path.join(ROOT, build[build.index("-f") + 1]))
    image = build[build.index("-t") + 1]
    assert commands[1] == f"docker push {image}"
    (command,) = job_commands(block)
    options, settings = check_job_command(command)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(GoogleCloudOptions).project == "PROJECT"
    assert options.view_as(WorkerOptions).sdk_container_image == image
    assert options.view_as(SetupOptions).sdk_location == "container"
    assert (settings.method, settings.units_key, settings.batch_size) == ("gradcam", "label", 64)


def check_flink_command(block: Block, space: Workspace):
    from apache_beam.options.pipeline_options import FlinkRunnerOptions

    (command,) = job_commands(block)
    options, _ = check_job_command(command)
    flink = options.view_as(FlinkRunnerOptions)
    assert flink.flink_version in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    assert flink.flink_master == "HOST:8081"


def check_bigquery_commands(block: Block, space: Workspace):
    """The files the commands load are those the job's `--table` writes."""
    space.shared_run.check("the shared run")
    written = [os.path.basename(path) for path in
               glob.glob(os.path.join(space.directory, "out", "expl.table-*"))]
    assert written
    for pattern in re.findall(r"gs://bucket/out/(\S+?\.parquet)", block.text):
        assert all(fnmatch.fnmatch(name, pattern) for name in written), (pattern, written)


def _missing_keys(sample, real, path="") -> List[str]:
    """The keys of `sample` (a page's shortened JSON, "..." where more follows) that `real`
    lacks; a unit's number stands for any unit."""
    if not isinstance(sample, dict):
        return []
    if not isinstance(real, dict):
        return [path or "."]
    missing = []
    for key, value in sample.items():
        if key == "...":
            continue
        if key.isdigit() and key not in real and real:
            key = next(iter(real))
        if key not in real:
            missing.append(f"{path}.{key}")
        else:
            missing += _missing_keys(value, real[key], f"{path}.{key}")
    return missing


def check_manifest_excerpt(block: Block, space: Workspace):
    """Every key of the excerpt is in the manifest the shared run wrote."""
    space.shared_run.check("the shared run")
    with open(os.path.join(space.directory, "out", "expl.manifest.json")) as f:
        manifest = json.load(f)
    assert _missing_keys(json.loads(block.text), manifest) == []


CHECKED: Dict[str, Tuple[str, Callable[[Block, Workspace], None]]] = {
    "./run_local.sh      #": (
        "they create or update .venv through setup.py (the network), generate the demo (minutes "
        "of training) and run the whole suite; the workspace runs the demo module "
        "run_local.sh runs, on a tiny generated demo", check_setup_commands),
    "--direct_running_mode=multi_processing": (
        "each starts worker processes or a job service, a minute more; "
        "tests/pipeline/test_runners.py runs both", check_local_runners),
    "local_job_service_main": (
        "it starts two services that run until stopped; tests/pipeline/test_runners.py runs "
        "them with the job", check_portable_services),
    "--tfds mnist": (
        "it needs the prepared MNIST dataset, a download; tests/pipeline/test_tfds.py runs the "
        "job on a dataset prepared on the spot", check_tfds_command),
    "docker build": (
        "it needs Docker, a Google Cloud project and GPU quota; tests/test_packaging.py checks "
        "the image's Python and Beam", check_dataflow_commands),
    "--runner=FlinkRunner": (
        "it needs a Flink cluster and Beam's job-server jar (a download); "
        "tests/pipeline/test_runners.py translates the job for Flink", check_flink_command),
    "bq load": (
        "it needs BigQuery and a bucket; the DuckDB block queries the same files",
        check_bigquery_commands),
    '"quantile_levels"': (
        "an excerpt of a manifest, shown to the reader", check_manifest_excerpt),
}
"""Blocks checked rather than run: a snippet of the block -> (why it cannot run here, what
checks it)."""


# --- checks that make a block's comments true ---------------------------------------------------


def _after_readme_library(ns, space):
    assert ns["units"].shape == ns["scores"].shape == (RECORDS, 3)
    assert ns["maps"].shape == (RECORDS, SIZE, SIZE, 3)


def _after_registry(ns, space):
    comment = re.search(r"method\.parameters\s+# (\{.*\})", block_with(
        'methods.get("integrated_gradients")').text).group(1)
    assert repr(ns["method"].parameters) == comment


def _after_own_method(ns, space):
    assert ns["maps"].shape == (RECORDS, SIZE, SIZE, 2)
    assert "gradient_norm" in methods.REGISTRY  # (restored after the block)


def _after_beam(ns, space):
    assert glob.glob(os.path.join(space.directory, "out", "mine-*.tfrecord.gz"))


def _after_worker(ns, space):
    assert len(ns["explained"]) == RECORDS and ns["explained"][0].units.shape == (2,)


AFTER: Dict[str, Callable[[dict, Workspace], None]] = {
    'scores = explain_lib.evaluate("deletion", model, x, units, maps': _after_readme_library,
    'methods.get("integrated_gradients")': _after_registry,
    "def gradient_norm(": _after_own_method,
    "pipeline.WriteShards(\"out/mine\")": _after_beam,
    "pipeline.Worker.load(": _after_worker,
}


# --- the tests ----------------------------------------------------------------------------------


def checked_entry(block: Block):
    entries = [entry for snippet, entry in CHECKED.items() if snippet in block.text]
    assert len(entries) <= 1, f"{block.name} matches several CHECKED snippets"
    return entries[0] if entries else None


def test_every_block_is_run_or_checked():
    """Fences name a known language; each snippet of CHECKED and AFTER names one block; a
    text block is not a command in disguise."""
    for block in ALL_BLOCKS:
        assert block.language in LANGUAGES, (
            f"{block.name}: fence language {block.language!r}; use one of {LANGUAGES} (text "
            "for output shown to the reader)")
        if block.language == "json":
            assert checked_entry(block), f"{block.name}: a json block must be in CHECKED"
        if block.language == "text":
            assert not re.search(r"^\s*(python|\./|bq |docker )", block.text, re.M), (
                f"{block.name}: a command in a text block; make it a bash block")
    for snippet in list(CHECKED) + list(AFTER):
        matching = [block.name for block in ALL_BLOCKS if snippet in block.text]
        assert len(matching) == 1, f"snippet {snippet!r} matches {matching or 'no block'}"
    assert block_with(SHARED_RUN).language == "bash"


RUN_BLOCKS = [block for block in ALL_BLOCKS if block.language in ("python", "bash")
              or checked_entry(block)]


@pytest.fixture
def registries():
    """Blocks may register methods or metrics: the registries are restored after each."""
    saved = dict(methods.REGISTRY), dict(explain_metrics.REGISTRY)
    yield
    for registry, before in zip((methods.REGISTRY, explain_metrics.REGISTRY), saved):
        registry.clear()
        registry.update(before)


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda block: block.name)
@pytest.mark.slow
def test_block(block, workspace, registries, monkeypatch, capsys):
    checked = checked_entry(block)
    if checked:
        _, check = checked
        check(block, workspace)
    elif SHARED_RUN in block.text:
        ran = workspace.shared_run.check(f"{block.name} (the shared run)")
        assert f"records explained:     {RECORDS}" in ran.stdout, ran.stdout
        assert "table:        out/expl.table-*.parquet" in ran.stdout, ran.stdout
    elif block.language == "bash" and runs_a_job(block):
        # Its own directory, the inputs linked: the job writes out/expl, which the shared run
        # holds for the reading blocks.
        directory = os.path.join(workspace.directory, "runs", str(block.line))
        os.makedirs(directory)
        for name in ("data", "model.keras"):
            os.symlink(os.path.join(workspace.directory, name), os.path.join(directory, name))
        ran = run_bash(block.text, directory).check(block.name)
        assert "records read:" in ran.stdout, ran.stdout
    elif block.language == "bash":
        workspace.demo_run.check(DEMO_COMMAND)
        workspace.shared_run.check("the shared run")
        run_bash(block.text, workspace.directory).check(block.name)
    else:
        workspace.demo_run.check(DEMO_COMMAND)
        workspace.shared_run.check("the shared run")
        monkeypatch.chdir(workspace.directory)
        ns = namespace(workspace)
        exec(compile(block.text, block.name, "exec"), ns)  # noqa: S102 - the page's own code
        for snippet, after in AFTER.items():
            if snippet in block.text:
                after(ns, workspace)


@pytest.mark.slow
def test_the_readme_shows_what_the_demo_prints(workspace):
    """The README's printout of `./run_local.sh` is what the demo module prints (counts
    aside: the workspace's demo is smaller)."""
    shown = block_with("demo model: demo/model.keras")
    assert shown.page == "README.md" and shown.language == "text"
    printed = workspace.demo_run.check(DEMO_COMMAND).stdout

    def lines(text):
        return [re.sub(r"\d+", "N", line.rstrip()) for line in text.splitlines() if line.strip()]

    assert lines(printed) == lines(shown.text), printed


def test_the_options_page_holds_the_options_table():
    """docs/options.md's table is `pipeline.settings.options_table()`, and the page names the
    fields that code alone sets."""
    import pipeline.settings as settings

    page = read_page(os.path.join("docs", "options.md"))
    expected = settings.options_table()
    assert expected in page, (
        "docs/options.md's table of options is not pipeline.settings.options_table(): "
        "replace it with the output of\n  .venv/bin/python -c \"from pipeline.settings import "
        "options_table; print(options_table(), end='')\"\nwhich is:\n" + expected)
    code_only = [field.name for field in dataclasses.fields(settings.Settings)
                 if not field.metadata["command_line"]]
    for name in code_only:
        assert f"`{name}`" in page, f"docs/options.md does not name the field {name}"


def test_the_readme_is_a_guide():
    text = read_page("README.md")
    lines = text.splitlines()
    assert len(lines) <= 250, len(lines)
    long = [(number, len(line)) for number, line in enumerate(lines, 1) if len(line) > 100]
    assert long == [], long
    for command in ("./run_local.sh", "./run_tests.sh", './run_tests.sh -m "not slow"',
                    "python -m pipeline.summary", "python -m pipeline.report",
                    "docs/report.png", "benchmarks/RESULTS.md"):
        assert command in text, command


# --- links and names ---------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: str) -> set:
    text = re.sub(r"```.*?```", "", read_page(page), flags=re.S)
    return {slug(match) for match in re.findall(r"^#+ (.*)$", text, re.M)}


def code_spans(page: str) -> List[str]:
    """The inline code of `page` (outside its fenced blocks)."""
    text = re.sub(r"^```.*?^```", "", read_page(page), flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", text)


@pytest.mark.parametrize("page", PAGES)
def test_links_lead_somewhere(page):
    """Every relative link (and image) names a file of the project, and its anchor a heading
    of that file."""
    text = re.sub(r"^```.*?^```", "", read_page(page), flags=re.S | re.M)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        assert os.path.exists(os.path.join(ROOT, linked)), f"{page}: link to {target}"
        if anchor:
            assert anchor in anchors(linked), f"{page}: no heading {anchor!r} in {linked}"


def resolve(name: str):
    """The object a dotted name of the project names: its longest importable module, then
    attributes."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[end:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(name)


@pytest.mark.parametrize("page", PAGES)
def test_names_and_paths_in_code_spans_exist(page):
    """`pipeline.x.y` and `explain_lib.x.y` name modules and attributes that exist, paths
    (`tests/...`, `benchmarks/...`) files or folders that exist, `test_x` a test module."""
    test_modules = {os.path.splitext(os.path.basename(path))[0]
                    for path in glob.glob(os.path.join(ROOT, "tests", "**", "test_*.py"),
                                          recursive=True)}
    for span in code_spans(page):
        for name in re.findall(r"(?<![\w./-])(?:pipeline|explain_lib)(?:\.[A-Za-z_]\w*)+", span):
            try:
                resolve(name)
            except (AttributeError, ModuleNotFoundError) as error:
                pytest.fail(f"{page}: `{span}` names {name}, which does not exist ({error})")
        for path in re.findall(
                r"(?<![\w./-])(?:explain_lib|pipeline|tests|benchmarks|docker|docs|scripts)"
                r"/[\w./-]*", span):
            assert os.path.exists(os.path.join(ROOT, path.rstrip(".,"))), f"{page}: {path}"
        if re.fullmatch(r"test_[a-z0-9_]+", span):
            assert span in test_modules, f"{page}: no test module {span}"
