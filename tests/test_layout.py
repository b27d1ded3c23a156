"""The house keeps its shape: imports point one way, no cycles, no private names across modules,
files of one job each. Read from the source (AST), so a violation fails here before review."""

from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

PACKAGES = ("configs", "models", "train", "experiments")
# A layer may import only the layers after it in this list (configs are loaded by path).
MAY_IMPORT = {
    "models": {"models"},
    "train": {"train", "models"},
    "configs": {"configs"},
    "experiments": {"experiments", "train", "models", "configs"},
}
MAX_LINES = 300
# A function is read whole: longer ones are a list of named steps waiting to be written.
MAX_FUNCTION_LINES = 80
README_MAX_LINES = 200


def _python_files() -> list[str]:
    out = []
    for top in (*PACKAGES, "tests"):
        for folder, _, files in os.walk(os.path.join(REPO, top)):
            out += [os.path.join(folder, f) for f in files if f.endswith(".py")]
    return sorted(out)


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
    return rel.removesuffix(".__init__")


MODULES = {_module_name(p): p for p in _python_files() if not p.startswith(os.path.join(REPO, "tests"))}


def _resolve(name: str) -> str | None:
    """The project module `name` refers to (a module, or the module holding the name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: str) -> list[tuple[str, str | None, int]]:
    """(module imported, name taken from it or None, line) for every import, at any depth."""
    tree = ast.parse(open(path).read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                # `from pkg import submodule` imports a module; `from module import name` a name.
                out.append(
                    (full, None, node.lineno) if full in MODULES else (node.module, a.name, node.lineno)
                )
    return [(m, n, line) for m, n, line in out if m.split(".")[0] in PACKAGES]


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        graph[name] = {r for m, _, _ in _imports(path) if (r := _resolve(m)) and r != name}
    return graph


def test_layers_import_only_downwards():
    bad = []
    for name, path in MODULES.items():
        layer = name.split(".")[0]
        bad += [
            f"{name}:{line} imports {m}"
            for m, _, line in _imports(path)
            if m.split(".")[0] not in MAY_IMPORT[layer]
        ]
    assert not bad, "\n".join(bad)


# train/'s packages, top to bottom: a package imports only those below it (and models). The
# commands sit above all of them.
TRAIN_LAYERS = (
    ("train.inference",),
    ("train.loop",),
    ("train.config_checks",),
    ("train.checkpoint", "train.observe", "train.hf"),
    ("train.devices",),
    ("train.objectives", "train.data"),
    ("train.tokenizer",),
    ("train.flag_errors",),  # the commands' flag parsing
)
TRAIN_COMMANDS = ("train.main", "train.hf.export", "train.data.encode_worker")


def _train_package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_train_packages_import_only_downwards():
    rank = {pkg: i for i, layer in enumerate(TRAIN_LAYERS) for pkg in layer}
    assert set(rank) | {"train.main", "train"} == {
        _train_package(m) for m in MODULES if m.startswith("train")
    }
    bad = []
    for name, targets in _graph().items():
        if not name.startswith("train.") or name in TRAIN_COMMANDS:
            continue
        here = _train_package(name)
        for target in targets:
            there = _train_package(target)
            if target.startswith("train.") and there != here and rank[there] <= rank[here]:
                bad.append(f"{name} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [node, nxt]) if nxt in stack else nxt)
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for path in _python_files():
        for module, name, line in _imports(path):
            if name and name.startswith("_") and not name.startswith("__"):
                bad.append(f"{os.path.relpath(path, REPO)}:{line} imports {module}.{name}")
        # `import pkg.module as m` then `m._private`
        tree = ast.parse(open(path).read(), path)
        aliases = {
            a.asname or a.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for a in node.names
            if (isinstance(node, ast.Import) and a.name.split(".")[0] in PACKAGES)
            or (isinstance(node, ast.ImportFrom) and f"{node.module}.{a.name}" in MODULES)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{os.path.relpath(path, REPO)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_python_files_stay_small(path):
    n = sum(1 for _ in open(path))
    assert n <= MAX_LINES, f"{os.path.relpath(path, REPO)} has {n} lines: split it by job"


def test_functions_stay_short():
    long = []
    for path in _python_files():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name} has {n} lines")
    assert not long, "\n".join(long)


def test_public_classes_and_long_public_functions_say_what_they_are():
    """Every public class in train/ and models/, and every public function or method there of
    more than 20 lines, has a docstring."""
    missing = []
    for path in _python_files():
        if not os.path.relpath(path, REPO).startswith(("train", "models")):
            continue
        for node in ast.parse(open(path).read(), path).body:
            inner = node.body if isinstance(node, ast.ClassDef) else []
            for n in [node, *inner]:
                if not isinstance(n, ast.ClassDef | ast.FunctionDef) or n.name.startswith("_"):
                    continue
                long = isinstance(n, ast.ClassDef) or n.end_lineno - n.lineno + 1 > 20
                if long and ast.get_docstring(n) is None:
                    missing.append(f"{os.path.relpath(path, REPO)}:{n.lineno} {n.name}")
    assert not missing, "no docstring:\n" + "\n".join(missing)


def test_ruff_is_clean():
    """`ruff check` with the project's rules, complexity and statement counts included."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_readme_stays_short_and_keeps_its_quick_start():
    text = open(os.path.join(REPO, "README.md")).read()
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "## Quick start" in text and "python -m pytest" in text


def test_the_layout_test_sees_a_violation(tmp_path):
    """The checks above are not vacuous: the graph holds the known edges, and a planted cycle
    and a private import are found by the same functions."""
    graph = _graph()
    assert "models.registry" in graph["train.loop.build"]
    assert "train.loop.build" in graph["train.loop.trainer"]
    assert not any(m.startswith(("train", "experiments")) for m in graph["models.registry"])
    planted = tmp_path / "planted.py"
    planted.write_text("from train.loop.step import _private\nimport models.masks as mm\nmm._x\n")
    assert ("train.loop.step", "_private", 1) in _imports(str(planted))


def test_the_docs_stand_alone_every_link_is_inside_the_repository():
    """README.md and docs/ link only to files of this repository (a clone has nothing beside
    it), and every such link resolves; web links are allowed."""
    pages = [os.path.join(REPO, "README.md"), *glob.glob(os.path.join(REPO, "docs", "*.md"))]
    broken = []
    for page in pages:
        text = open(page).read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"`(\.\./[^`]+)`", text):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0]))
            if not path.startswith(REPO + os.sep) or not os.path.exists(path):
                broken.append(f"{os.path.relpath(page, REPO)}: {target}")
    assert not broken, "links outside the repository or to nothing:\n" + "\n".join(broken)
