"""The source itself: no module binds one top-level name twice (a merge that keeps both
sides of a hunk leaves such copies, and the second silently wins)."""

import ast
import collections
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = ("explain_lib", "pipeline", "benchmarks", "tests")


def top_level_bindings(tree: ast.Module) -> collections.Counter:
    """How many times each name is bound by a top-level def, class or assignment (names
    bound under `if`/`try` are left out: those are alternatives)."""
    names = collections.Counter()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] += 1
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    names[target.id] += 1
    return names


def source_files():
    for folder in FOLDERS:
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.join(directory, name)


def test_no_module_binds_a_top_level_name_twice():
    twice = {}
    for path in source_files():
        with open(path, encoding="utf-8") as file:
            counts = top_level_bindings(ast.parse(file.read()))
        names = sorted(name for name, count in counts.items() if count > 1)
        if names:
            twice[os.path.relpath(path, ROOT)] = names
    assert not twice


def test_the_check_sees_a_name_bound_twice():
    tree = ast.parse("A = 1\ndef f(): pass\nA = 1\nclass f: pass\nif True:\n    B = 1\nB = 2\n")
    assert {name for name, count in top_level_bindings(tree).items() if count > 1} == {"A", "f"}
