"""Headless Chromium for the pages the pipeline writes (the report, the comparison's page):
`load_in_chromium` loads a page with `PROBE` first in its <head>, which records errors and
console.error calls and, once the page has loaded, writes into the DOM how many images there
are and which did not decode (the pages themselves carry no script but their data).

run_tests.sh installs Debian's chromium when run as root with apt-get; without a browser the
tests that need one skip, saying why."""

import json
import re
import shutil
import subprocess

import pytest

PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
const consoleError = console.error;
console.error = (...args) => { window.__errors.push(args.join(" ")); consoleError(...args); };
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const root = document.documentElement;
  root.dataset.images = images.length;
  root.dataset.broken = JSON.stringify(broken);
  root.dataset.errors = JSON.stringify(window.__errors);
  root.dataset.checked = "yes";
});
</script>"""


def chromium_binary():
    """The first Chromium-like browser on the PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_or_skip() -> str:
    """The browser, or the test skipped, saying why."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("No chromium binary found (run_tests.sh installs Debian's chromium when "
                    "run as root with apt-get; it failed or was not possible here).")
    return binary


def run_chromium(binary, *args, timeout=180):
    """Headless Chromium with `args` (a page to dump or to screenshot), its log on stderr."""
    return subprocess.run(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--disable-extensions", "--virtual-time-budget=5000",
         "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=timeout)


def root_attributes(dom: str) -> dict:
    """The data- attributes a probe wrote on the page's <html> element, as Chromium dumped
    them (entities left as they are)."""
    root = re.search(r"<html[^>]*>", dom).group(0)
    return dict(re.findall(r'data-(\w+)="([^"]*)"', root))


def load_in_chromium(text: str, directory):
    """`text` (a page) loaded in headless Chromium from a copy in `directory` with `PROBE`
    first in its <head> (the test skipped without a browser). Asserts that it loaded, with
    no error and no broken image; returns the probe's attributes (`images`, ...), Chromium's
    run (the DOM on stdout, its log on stderr) and the copy's path."""
    binary = browser_or_skip()
    probed = directory / "probed.html"
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    dumped = run_chromium(binary, "--dump-dom", probed.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    attributes = root_attributes(dumped.stdout)
    assert attributes.get("checked") == "yes", dumped.stdout[:2000]
    assert json.loads(attributes["broken"].replace("&quot;", '"')) == []
    assert json.loads(attributes["errors"].replace("&quot;", '"')) == []
    return attributes, dumped, probed
