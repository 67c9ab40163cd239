"""The package's layering: no import circle between its modules, each module imports on its own
in a fresh interpreter, and ``Segment`` and ``Cache`` reach no private name of another module.

Read from the source (``ast``), not from a running interpreter, so a circle that today's import
order happens to survive is caught too. An import inside ``if TYPE_CHECKING:`` does not count:
it never runs.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import shmfs

PACKAGE = Path(shmfs.__file__).parent


def _modules() -> dict[str, Path]:
    """Every Python module of the package, by dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _bound_names(tree: ast.Module) -> set[str]:
    """The names a module binds at its top level (what ``from it import name`` can find)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}
BOUND = {name: _bound_names(tree) for name, tree in TREES.items()}


def _runtime_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of ``body`` and what it nests, except ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _runtime_imports(node.orelse)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from _runtime_imports([child])
                elif isinstance(child, ast.excepthandler):
                    yield from _runtime_imports(child.body)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The package modules an import statement of ``module`` runs."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names if alias.name in MODULES)
        return
    base = node.module or ""
    if node.level:
        package = module.split(".")
        if MODULES[module].name != "__init__.py":
            package.pop()
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    if base not in MODULES:
        return
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if submodule in MODULES:
            yield submodule
        elif alias.name in BOUND[base] or alias.name == "*":
            yield base
        # else: a submodule with no Python source (the C extension), which imports nothing here


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, tree in TREES.items():
        graph[module] = {
            target
            for node in _runtime_imports(tree.body)
            for target in _targets(module, node)
            if target != module
        }
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in order:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], order[target])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return found


def test_the_graph_sees_the_imports() -> None:
    graph = _graph()
    assert "shmfs.segment" in graph["shmfs"]
    assert "shmfs.coder" in graph["shmfs.segment"]
    assert "shmfs.segment" in graph["shmfs.cache"]  # from shmfs.segment import Segment, attach
    assert "shmfs.phpserial" in graph["shmfs.codecs"]  # deferred, in a function, still counted


def test_a_circle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]


def test_no_import_circle() -> None:
    assert _circles(_graph()) == []


def test_each_module_imports_alone_in_a_fresh_interpreter() -> None:
    # ``__main__`` runs the CLI when imported: the CLI's tests run it. A few interpreters at a
    # time: one after the other, the ~80 of them cost a minute of a loaded machine.
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    waiting = [name for name in sorted(MODULES) if not name.endswith("__main__")]
    running: dict[str, subprocess.Popen[bytes]] = {}
    failed = {}
    try:
        while waiting or running:
            while waiting and len(running) < 4:
                module = waiting.pop()
                running[module] = subprocess.Popen(
                    [sys.executable, "-c", f"import {module}"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            module, process = next(iter(running.items()))
            _, stderr = process.communicate(timeout=60)
            del running[module]
            if process.returncode:
                failed[module] = stderr.decode(errors="replace")[-2000:]
    finally:
        for process in running.values():
            process.kill()
            process.wait()
    assert failed == {}


def _private_reaches(tree: ast.Module) -> list[str]:
    """``x._name`` where ``x`` is not ``self`` or ``cls`` and ``_name`` is not a method this
    module defines: a private name of another module."""
    own = {
        item.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for item in node.body
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in own
            and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"})
        ):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_private_reach_check_sees_one() -> None:
    tree = ast.parse(
        "class S:\n    def _mine(self): ...\n"
        "def f(seg):\n    return seg._hot.get(1), self._x._y, self._ok, seg._mine()\n"
    )
    assert sorted(reach.split(": ")[1] for reach in _private_reaches(tree)) == [
        "seg._hot",
        "self._x._y",
    ]


@pytest.mark.parametrize(
    "module", ["shmfs.segment", *(name for name in MODULES if name.startswith("shmfs.cache"))]
)
def test_segment_and_cache_reach_no_private_name(module: str) -> None:
    assert _private_reaches(TREES[module]) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_over_400_lines_says_why_in_its_docstring(module: str) -> None:
    """A module longer than about 400 lines says why it is not split ("... 400 lines ...")."""
    length = len(MODULES[module].read_text().splitlines())
    docstring = ast.get_docstring(TREES[module]) or ""
    assert length <= 420 or "400 lines" in " ".join(docstring.split()), (
        f"{module} is {length} lines: split it, or say in its docstring why not"
    )
