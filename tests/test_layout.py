"""The layout's promises (issue 24), checked on the code itself: MnasNet's records import
without Paddle; ppcls.weights sits below the models, the data and the engine; nothing
outside the MnasNet package knows its stem ReLU or the weights' sources; no import cycles."""

import ast
import os
import re
import subprocess
import sys

import pytest

from tools.import_graph import cycles, import_graph, loop_through

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNASNET = "ppcls.arch.backbone.model_zoo.mnasnet"


def python(code):
    """Run `code` in a fresh interpreter at the repository root; its stdout."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# --------------------------------------------------------------- records without Paddle
def test_variant_records_import_without_paddle():
    python(f"import sys, {MNASNET}.variants as v; assert v.VARIANTS; "
           "assert 'paddle' not in sys.modules, 'paddle imported'")


def test_the_registry_and_builders_load_without_paddle_until_a_model_is_built():
    out = python("import sys; from ppcls.arch import available_models, check_arch; "
                 f"from {MNASNET}.variants import VARIANT_BY_NAME; "
                 "check_arch({'Arch': {'name': 'MnasNet_small', 'class_num': 10}}); "
                 "print('paddle' in sys.modules, available_models() == sorted(VARIANT_BY_NAME))")
    assert out.split() == ["False", "True"]


# ------------------------------------------------------------ weights below the models
def test_weights_imports_nothing_of_the_models_data_or_engine():
    """Counted from the source, imports inside functions included, and followed through
    every module they reach."""
    graph = import_graph()
    reached, todo = set(), [m for m in graph if m == "ppcls.weights" or
                            m.startswith("ppcls.weights.")]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += [e.target for e in graph[module]]
    above = sorted(m for m in reached if m.startswith(("ppcls.arch", "ppcls.data",
                                                        "ppcls.engine", "ppcls.export")))
    assert above == []


def test_importing_every_weights_module_loads_no_model_data_or_engine_module():
    out = python("import sys, pkgutil, importlib, ppcls.weights as w\n"
                 "for m in pkgutil.iter_modules(w.__path__): "
                 "importlib.import_module('ppcls.weights.' + m.name)\n"
                 "print(sorted(m for m in sys.modules if m.startswith(("
                 "'ppcls.arch', 'ppcls.data', 'ppcls.engine', 'ppcls.export'))))")
    assert out.strip() == "[]"


# ----------------------------------------------- MnasNet's knowledge in its own package
FOREIGN = re.compile(r"stem_relu|torchvision|(?<![a-z])timm(?![a-z])|reproduction", re.I)
# Tools that run torch, torchvision and timm themselves, to compare with them or to make
# the test fixtures from them: naming those libraries is their job.
LIBRARY_TOOLS = {"benchmark_cpu.py", "benchmark_loader.py", "make_parity_fixture.py",
                 "make_transform_fixture.py"}
# Packages where not even a comment or docstring names them.
WHOLLY_GENERIC = ("ppcls/weights/", "ppcls/export/")


def _sources():
    for top in ("ppcls", "tools", "deploy"):
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            for name in names:
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT)
                if (name.endswith(".py") and not rel.startswith(MNASNET.replace(".", "/"))
                        and not (top == "tools" and name in LIBRARY_TOOLS)):
                    yield rel


def _docstrings(tree):
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return {id(n.body[0].value) for n in nodes if n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}


def code_words(source):
    """The names and string literals the code uses (not its comments and docstrings)."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings:
                yield node.value
        elif isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, (ast.arg, ast.keyword)) and node.arg:
            yield node.arg
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, ast.alias):
            yield node.name
            yield node.asname or ""


def test_no_module_outside_the_mnasnet_package_names_its_stem_relu_or_weight_sources():
    named = []
    for rel in _sources():
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            source = f.read()
        words = [source] if rel.startswith(WHOLLY_GENERIC) else code_words(source)
        found = sorted({m.group(0).lower() for w in words for m in FOREIGN.finditer(w)})
        if found:
            named.append(f"{rel}: {', '.join(found)}")
    assert named == []


# ------------------------------------------------------------ tools are not a library
def test_nothing_in_ppcls_or_deploy_imports_the_tools():
    importing = []
    for top in ("ppcls", "deploy"):
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            for name in (n for n in names if n.endswith(".py")):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                           for a in n.names]
                modules += [n.module or "" for n in ast.walk(tree)
                            if isinstance(n, ast.ImportFrom) and not n.level]
                if any(m == "tools" or m.startswith("tools.") for m in modules):
                    importing.append(os.path.relpath(path, ROOT))
    assert importing == []


# ------------------------------------------------------------------ no import cycles
# Cycles known to remain, each to be removed from this list by the change that breaks it
# (issue 24 removed the last: the config checks' 11 modules).
ALLOWED_CYCLES = []


def test_no_import_cycles_in_ppcls():
    graph = import_graph()
    new = [f"{', '.join(c)} (e.g. {' -> '.join(loop_through(graph, c))})"
           for c in cycles(graph) if c not in ALLOWED_CYCLES]
    assert new == []


@pytest.mark.parametrize("cycle", ALLOWED_CYCLES, ids=lambda c: f"{len(c)}-modules")
def test_each_allowed_cycle_still_exists(cycle):
    """A cycle that is gone is removed from ALLOWED_CYCLES, so it cannot come back."""
    assert cycle in cycles(import_graph()), "this cycle is gone: remove it from ALLOWED_CYCLES"


def test_import_graph_counts_imports_inside_functions(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import pkg.b\n")
    (package / "b.py").write_text("def f():\n    from pkg import a\n")
    (package / "c.py").write_text("from pkg.a import x\n")
    graph = import_graph("pkg", str(tmp_path))
    assert [(e.target, e.lazy) for e in graph["pkg.b"]] == [("pkg", True), ("pkg.a", True)]
    assert cycles(graph) == [("pkg.a", "pkg.b")]
    assert loop_through(graph, ("pkg.a", "pkg.b")) == ["pkg.a", "pkg.b", "pkg.a"]


# ------------------------------------------------------------------ one exit-code rule
def _entry_points():
    for top in ("tools", "deploy"):
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            for name in sorted(n for n in names if n.endswith(".py")):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                if any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)
                       for n in tree.body):
                    yield os.path.relpath(path, ROOT), tree


def test_every_tool_exits_through_cli_run():
    """Problems a user can fix are one line and exit code 2 in every tool (ppcls.utils.cli)."""
    outside = []
    for rel, tree in _entry_points():
        imported = any(isinstance(n, ast.ImportFrom) and n.module == "ppcls.utils.cli"
                       and any(a.name == "run" for a in n.names) for n in ast.walk(tree))
        called = any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "run"
                     for n in ast.walk(tree))
        if not (imported and called):
            outside.append(rel)
    assert outside == []
