"""explain_lib's imports run one way: no module imports one above it, and none imports itself
back through others (an import cycle).

The layers, bottom to top (read from the import statements of every module, those inside
functions included):

0. `utils` and `io`: they import nothing of explain_lib (`io`, the codec of stored maps,
   knows no engine, so the pipeline's readers need none).
1. `filters`, `inspection` (on utils), `analysis` (on io) and `strategies` (numpy, sklearn).
2. `methods`: the explaining functions, their registry and helpers.
3. `metrics`: they score maps, and may call methods (fidelity perturbs with their blur) but
   never the engine: a metric that explains (`model_randomization`) is given `explain` by
   `evaluate`.
4. `engine`: `data` (the data adapter), `loop` (the compiled steps, their cache, the
   callbacks), `explaining` and `evaluating` on top of them.
5. `shortcuts` and the package's `__init__`.

A module may import its own layer and those below; within a layer only the cycle check
applies. A package's `__init__` belongs to its package's layer.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "explain_lib"

LAYERS = (
    ("explain_lib.utils", "explain_lib.io"),
    ("explain_lib.filters", "explain_lib.inspection", "explain_lib.analysis",
     "explain_lib.strategies"),
    ("explain_lib.methods",),
    ("explain_lib.metrics",),
    ("explain_lib.engine",),
    ("explain_lib.shortcuts", "explain_lib"),
)
"""Module-name prefixes by layer, bottom first (see the module docstring)."""


def modules():
    """{module name: its file} for every module of explain_lib (packages by their
    `__init__`)."""
    found = {}
    for folder, _, files in os.walk(os.path.join(REPO, PACKAGE)):
        for filename in files:
            if not filename.endswith(".py"):
                continue
            path = os.path.join(folder, filename)
            parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(path, known):
    """The explain_lib modules `path` imports, at any depth of its code (imports inside
    functions count: they run all the same). `from package import name` is an import of the
    module `package.name` when there is one, else of `package` itself."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; name the module in full"
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known
                     else node.module for alias in node.names]
        else:
            continue
        imported.update(name for name in names
                        if name == PACKAGE or name.startswith(PACKAGE + "."))
    return imported


def layer_of(module):
    """The layer of a module: that of the longest prefix naming it."""
    best = None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (level, prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


@pytest.fixture(scope="module")
def graph():
    known = modules()
    return {name: imports_of(path, known) for name, path in known.items()}


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_no_module_imports_a_layer_above_its_own(graph):
    upward = sorted(
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in graph.items() for target in targets
        if layer_of(target) > layer_of(module)
    )
    assert not upward, "\n".join(upward)


def test_no_metric_or_method_knows_the_engine(graph):
    for module, targets in graph.items():
        if module.startswith(("explain_lib.metrics", "explain_lib.methods")):
            assert not {t for t in targets if t.startswith("explain_lib.engine")}, module


def test_there_is_no_import_cycle(graph):
    cycles = []
    state = {}  # module -> "open" while on the path, "done" once explored

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if target == module:
                continue  # a package's __init__ naming its own attribute
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_checks_see_imports_inside_functions(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("def f():\n    from explain_lib.engine import explaining\n")
    known = {"explain_lib.engine", "explain_lib.engine.explaining"}
    assert imports_of(str(source), known) == {"explain_lib.engine.explaining"}
    assert layer_of("explain_lib.engine.explaining") > layer_of("explain_lib.metrics.common")
