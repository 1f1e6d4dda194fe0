"""`python -m pipeline.report`: the numbers of the page equal those computed from the run's own
files, and the page loads in a real headless Chromium with every picture decoded and no
console error."""

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from explain_lib import metrics as explain_metrics
from pipeline import demo, pictures, report
from tests.pipeline.browser import (
    browser_or_skip,
    chromium_binary,
    load_in_chromium,
    root_attributes,
    run_chromium,
)
from tests.pipeline.conftest import SIZE, run_job, write

TOP_K = 2
EXAMPLES = 3


@pytest.fixture(scope="module")
def job(tmp_path_factory, model_path):
    """A real run: 8 shapes with their boxes and one record whose image does not decode
    (a dead letter of stage decode), top-2 units explained with Grad-CAM, scored by deletion
    and the pointing game (ground truth: the boxes)."""
    tmp_path = tmp_path_factory.mktemp("report")
    images, labels, masks = demo.make_shapes(8, seed=21, size=SIZE, return_masks=True)
    boxes = demo.shape_boxes(masks)
    records = [demo.make_example(demo.encode_image(image), int(label), f"s{i}",
                                 **{demo.BOX_KEY: boxes[i].ravel().tolist()})
               for i, (image, label) in enumerate(zip(images, labels))]
    records.append(demo.make_example(b"not an image", 0, "broken",
                                     **{demo.BOX_KEY: boxes[0].ravel().tolist()}))
    pattern = write(tmp_path, "inputs", records)
    run = run_job(tmp_path, pattern, model_path, "--method", "gradcam", "--top_k", str(TOP_K),
                  "--metrics", "deletion,pointing_game", "--boxes_key", demo.BOX_KEY,
                  "--metric_params", '{"deletion": {"n_steps": 4}}')
    assert len(run.explanations) == 8 and len(run.dead_letters) == 1
    return run, pattern


@pytest.fixture(scope="module")
def page(job, tmp_path_factory):
    run, pattern = job
    out = str(tmp_path_factory.mktemp("page") / "report.html")
    assert report.main([run.output, "--out", out, "--examples",
                        str(EXAMPLES), "--labels", ",".join(demo.CLASSES)]) == 0
    return out


def _embedded(page: str) -> dict:
    text = open(page, encoding="utf-8").read()
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>',
                      text, re.S)
    return json.loads(found.group(1).replace("<\\/", "</"))


def _image(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


@pytest.mark.slow
def test_counts_and_units_are_the_runs(job, page):
    run, _ = job
    data = _embedded(page)
    manifest = report.compute_report(run.output).manifest
    assert data["counts"] == manifest["counts"]
    assert (data["counts"]["read"], data["counts"]["explained"]) == (9, 8)
    assert data["records"] == len(run.explanations) == 8
    assert data["dead_letters"] == {stage: n for stage, n in
                                    manifest["counts"]["dead_letters"].items() if n}
    assert data["dead_letters"] == {"decode": 1}
    units = {}
    for decoded in run.explanations.values():
        for unit in decoded["units"].tolist():
            units[str(unit)] = units.get(str(unit), 0) + 1
    assert data["unit_counts"] == units
    assert sum(units.values()) == 8 * TOP_K
    # The stage's count and its message are on the page itself.
    text = open(page, encoding="utf-8").read()
    assert 'data-stage="decode">1<' in text
    (letter,) = run.dead_letters
    assert f"<td class=\"text\">{letter.error[:300]}</td><td>1</td>" in text


def test_metric_values_best_and_worst_are_the_records(job, page):
    run, _ = job
    data = report.compute_report(run.output, examples=EXAMPLES)
    # Default ranking: the first metric of --metrics, deletion, where lower is better.
    assert data.metric == "deletion" and data.higher_is_better is False
    assert explain_metrics.get("deletion").higher_is_better is False
    every = {name: np.concatenate([d["metrics"][name] for d in run.explanations.values()])
             for name in ("deletion", "pointing_game")}
    for name, scores in every.items():
        assert len(scores) == 8 * TOP_K
        np.testing.assert_allclose(np.sort(data.values[name]),
                                   np.sort(scores[np.isfinite(scores)]), rtol=1e-6)
        assert data.missing[name] == int((~np.isfinite(scores)).sum())
    first = {i: float(d["metrics"]["deletion"][0]) for i, d in run.explanations.items()}
    ranked = sorted(first, key=lambda i: first[i])  # lowest deletion first: the best
    assert [e.score for e in data.best] == pytest.approx([first[i] for i in ranked[:EXAMPLES]])
    assert [e.score for e in data.worst] == pytest.approx(
        [first[i] for i in ranked[::-1][:EXAMPLES]])
    for example in data.best + data.worst:
        decoded = run.explanations[example.id]
        assert example.score == pytest.approx(first[example.id])
        assert example.unit == int(decoded["units"][0])
        # The job keeps the map it explained, before the codec: within the codec's bound of
        # the stored one.
        np.testing.assert_allclose(example.map, decoded["maps"][..., 0], rtol=0,
                                   atol=float(decoded["max_error"][0]))
        assert example.image.dtype == np.uint8 and example.image.shape == (SIZE, SIZE, 3)
    # The page shows those records, in that order, with their ids.
    embedded = _embedded(page)
    assert [e["id"] for e in embedded["best"]] == [e.id for e in data.best]
    assert [e["id"] for e in embedded["worst"]] == [e.id for e in data.worst]
    assert embedded["metric"] == "deletion"
    # Another ranking asked for by name; an unknown one is refused with exit status 2.
    by_probability = report.compute_report(run.output, metric="probability", examples=2)
    probabilities = {i: float(d["probabilities"][0]) for i, d in run.explanations.items()}
    assert [e.id for e in by_probability.best] == sorted(
        probabilities, key=lambda i: -probabilities[i])[:2]
    assert report.main([run.output, "--metric", "nope", "--out", os.devnull]) == 2


def test_mean_maps_are_the_mean_of_the_decoded_maps(job, page):
    run, _ = job
    data = report.compute_report(run.output)
    maps, bounds = {}, {}
    for decoded in run.explanations.values():
        for k, unit in enumerate(decoded["units"].tolist()):
            maps.setdefault(unit, []).append(decoded["maps"][..., k])
            bounds.setdefault(unit, []).append(decoded["max_error"][k])
    assert sorted(data.mean_maps) == sorted(maps)
    for unit, stack in maps.items():
        assert data.map_counts[unit] == len(stack)
        # The mean of the maps as explained, before the codec: within the mean of the
        # codec's bounds of the mean of the stored maps.
        np.testing.assert_allclose(data.mean_maps[unit], np.mean(stack, axis=0), rtol=0,
                                   atol=float(np.mean(bounds[unit])) * (1 + 1e-6))
    # The page's picture of each mean map is matplotlib's inferno over the mean's range.
    text = open(page, encoding="utf-8").read()
    shown = re.findall(r'class="mean-map" data-unit="(\d+)" data-scale="(\d+)" '
                       r'alt="[^"]*" src="([^"]+)"', text)
    assert len(shown) == len(maps)
    for unit, scale, uri in shown:
        picture = _image(uri)[:, :, :3]
        expected = pictures.colorize(data.mean_maps[int(unit)], "inferno")
        np.testing.assert_array_equal(picture[::int(scale), ::int(scale)], expected)


def test_a_fresh_process_reads_two_small_files_without_tensorflow_or_beam(job, page, tmp_path):
    """The command as the README gives it, in a new process: the same page, built from the
    manifest and the overview alone (neither TensorFlow nor Beam imported). Drawn again on
    the inputs' images (`--images`), the page is the same: the job kept those pixels."""
    run, pattern = job
    out = str(tmp_path / "fresh.html")
    arguments = [run.output, "--out", out, "--examples", str(EXAMPLES),
                 "--labels", ",".join(demo.CLASSES)]
    script = ("import sys\n"
              "from pipeline import report\n"
              f"code = report.main({arguments!r})\n"
              "heavy = sorted({'tensorflow', 'keras', 'apache_beam'} & set(sys.modules))\n"
              "assert not heavy, heavy\n"
              "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert open(out, "rb").read() == open(page, "rb").read()
    redrawn = str(tmp_path / "redrawn.html")
    assert report.main([run.output, "--images", pattern, "--out", redrawn, "--examples",
                        str(EXAMPLES), "--labels", ",".join(demo.CLASSES)]) == 0
    assert open(redrawn, "rb").read() == open(page, "rb").read()


def test_a_run_without_an_overview_is_refused_with_its_reason(job, tmp_path, capsys):
    run, _ = job
    for name in ("manifest.json", "overview.npz"):
        shutil.copy(f"{run.output}.{name}", tmp_path / f"old.{name}")
    moved = str(tmp_path / "old")
    assert report.main([moved, "--out", str(tmp_path / "a.html")]) == 0
    os.remove(f"{moved}.overview.npz")
    assert report.main([moved, "--out", str(tmp_path / "b.html")]) == 2
    assert "No overview at" in capsys.readouterr().err
    assert report.main([run.output, "--examples", "13", "--out", os.devnull]) == 2
    assert "keeps the 12 best and worst" in capsys.readouterr().err


def test_size_stays_bounded(job, page):
    run, _ = job
    assert os.path.getsize(page) < 1_000_000
    text = open(page, encoding="utf-8").read()
    # Every picture is embedded: no reference to a file or the network.
    assert all(src.startswith("data:image/") for src in re.findall(r'src="([^"]+)"', text))
    assert len(re.findall(r"<img ", text)) == 1 + len(_embedded(page)["unit_counts"]) + \
        2 * EXAMPLES  # histograms, mean maps, best and worst


# --- in a real browser -------------------------------------------------------------------------

@pytest.mark.slow
def test_the_page_loads_in_headless_chromium(page, tmp_path):
    text = open(page, encoding="utf-8").read()
    attributes, dumped, probed = load_in_chromium(text, tmp_path)
    assert int(attributes["images"]) == len(re.findall(r"<img ", text)) > 0
    # Nothing the browser logged about the page itself is an error (uncaught exceptions and
    # failed loads are logged as CONSOLE lines naming the page).
    console = [line for line in dumped.stderr.splitlines()
               if ":CONSOLE" in line and "probed.html" in line]
    assert not [line for line in console if re.search(r"Uncaught|Error|Failed", line)], console

    screenshot = tmp_path / "report.png"
    shot = run_chromium(chromium_binary(), f"--screenshot={screenshot}",
                        "--window-size=1200,2000", probed.as_uri())
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    picture = Image.open(screenshot)
    picture.verify()  # a valid PNG ...
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), np.int16)
    assert pixels.shape == (2000, 1200, 3)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not blank


HOSTILE_IDS = ["<!--<script", "</script><script>document.documentElement.dataset.pwned='1'"
               "</script>", "quote\"s and 'apostrophes' & <b>tags</b>", "line\u2028separator",
               "para\u2029graph", "plain"]


@pytest.mark.slow
def test_hostile_ids_neither_break_the_page_nor_run(tmp_path, model_path, shapes):
    """Ids are data: in the embedded JSON, the attributes and the captions they must stay
    text. The page's JSON parses back to the same ids, and no script of theirs runs."""
    binary = browser_or_skip()
    images, labels = shapes
    records = [demo.make_example(demo.encode_image(images[i], "png"), int(labels[i]), id_)
               for i, id_ in enumerate(HOSTILE_IDS)]
    run = run_job(tmp_path, write(tmp_path, "hostile", records), model_path, "--units_key",
                  "label")
    assert sorted(run.explanations) == sorted(HOSTILE_IDS)
    out = str(tmp_path / "report.html")
    assert report.main([run.output, "--out", out, "--examples", str(len(HOSTILE_IDS))]) == 0
    text = open(out, encoding="utf-8").read()
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>',
                      text, re.S)
    shown = {e["id"] for e in json.loads(found.group(1))["best"]}
    assert shown == set(HOSTILE_IDS)  # every record is among the best
    probe = """<script>
window.addEventListener("load", () => {
  const root = document.documentElement;
  try {
    const data = JSON.parse(document.getElementById("report-data").textContent);
    root.dataset.ids = JSON.stringify(data.best.map(e => e.id).sort());
  } catch (error) { root.dataset.ids = "unparsed: " + error; }
  root.dataset.captions = JSON.stringify(
    Array.from(document.querySelectorAll("figure.example")).map(f => f.dataset.id).sort());
  root.dataset.checked = "yes";
});
</script>"""
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("<head>", "<head>" + probe, 1), encoding="utf-8")
    dumped = run_chromium(binary, "--dump-dom", probed.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    attributes = {name: html.unescape(value)
                  for name, value in root_attributes(dumped.stdout).items()}
    assert attributes.get("checked") == "yes", dumped.stdout[:2000]
    assert "pwned" not in attributes, dumped.stdout[:2000]
    assert json.loads(attributes["ids"]) == sorted(HOSTILE_IDS)
    # The best and the worst, each id once on each side.
    assert json.loads(attributes["captions"]) == sorted(HOSTILE_IDS * 2)
