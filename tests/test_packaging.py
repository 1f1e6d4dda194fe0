"""What Dataflow workers receive: the source distribution built from setup.py (the way Beam
builds it for --setup_file) holds both packages and every module they import."""

import ast
import os
import subprocess
import sys
import tarfile

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
            "pipeline/__init__.py", "pipeline/handler.py", "setup.py"} <= names
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
