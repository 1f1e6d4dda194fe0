"""The pipeline's layers, walked from its import statements (module-level and inside
functions): each module imports only modules of its own layer or the layers below, the
imports have no cycle, and no function imports a module of the project except where
`LAZY` says why.

Bottom to top:

    base       counters (the metrics' names), commands (the commands' one way of failing)
    settings   the job's settings, declared once
    io         files on any filesystem: reading, framing, writing, dead letters, retries
    results    what the job keeps: table, aggregates, ids, overview, manifest
    worker     one worker's stages and its RunInference handler
    job        settings to a Beam pipeline: options, checks, transforms, launcher, recording
    commands   python -m pipeline (the package, __main__), summary, report, render,
               pictures, demo, compare
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LAYERS = (
    ("pipeline.counters", "pipeline.commands"),
    ("pipeline.settings",),
    ("pipeline.io",),
    ("pipeline.results",),
    ("pipeline.worker",),
    ("pipeline.job",),
    ("pipeline", "pipeline.__main__", "pipeline.summary", "pipeline.report", "pipeline.render",
     "pipeline.pictures", "pipeline.demo", "pipeline.compare"),
)

LAZY = {
    ("pipeline.report", "pipeline.render"):
        "the report reads the input records again (TensorFlow) only with --images; it "
        "otherwise starts without TensorFlow or Beam",
}
"""(module, imported module) -> why the import is inside a function."""


def _modules():
    """{module name: path} of every module of the pipeline package."""
    found = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "pipeline")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(path, module):
    """(imported project module, whether at module level) of every import in `path`."""
    tree = ast.parse(open(path).read())
    top = {id(node) for node in tree.body}
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in ("pipeline", "explain_lib"):
                yield name, id(node) in top


def _layer(module):
    """The index of `module`'s layer in `LAYERS` (the longest prefix that names it)."""
    best = None
    for index, members in enumerate(LAYERS):
        for member in members:
            if module == member or module.startswith(member + ".") and member != "pipeline":
                if best is None or len(member) > len(best[1]):
                    best = (index, member)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def _graph():
    graph = {}
    for module, path in MODULES.items():
        graph[module] = {name for name, _ in _imports(path, module) if name in MODULES}
    return graph


def test_every_module_has_a_layer_and_imports_none_above_it():
    upward = []
    for module, imported in _graph().items():
        for name in imported:
            if _layer(name) > _layer(module):
                upward.append(f"{module} -> {name}")
    assert not upward, "imports from a higher layer: " + ", ".join(sorted(upward))


def test_the_imports_have_no_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(module, trail):
        state[module] = "open"
        for name in sorted(graph[module]):
            if state.get(name) == "open":
                cycles.append(" -> ".join(trail[trail.index(name):] + [name]))
            elif name not in state:
                visit(name, trail + [name])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_no_function_imports_a_project_module_without_a_reason():
    inside = sorted({(module, name) for module, path in MODULES.items()
                     for name, at_top in _imports(path, module) if not at_top})
    unexplained = [f"{module} -> {name}" for module, name in inside
                   if (module, name) not in LAZY]
    assert not unexplained, "imports inside functions: " + ", ".join(unexplained)
    assert set(LAZY) <= set(inside), "LAZY lists an import that is no longer inside a function"


def test_the_walk_sees_the_imports_it_checks():
    """The checks above can fail: the walk finds module-level and function-level imports,
    and an import of the job from the worker would be upward."""
    edges = dict(((module, name), top) for module, path in MODULES.items()
                 for name, top in _imports(path, module))
    assert edges[("pipeline.job.transforms", "pipeline.worker.handler")] is True
    assert edges[("pipeline.report", "pipeline.render")] is False
    assert _layer("pipeline.job.options") > _layer("pipeline.worker.handler")
