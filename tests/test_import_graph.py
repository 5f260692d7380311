"""No import cycles, lazy imports included, and every package exports a curated ``__all__``.

The graph is read with ``ast`` from the source tree (installed names ``hyperkd.*``). An import
inside a function counts like one at the top: a cycle hidden behind a lazy import is still a
cycle in the design. Importing ``a.b.c`` from outside ``a.b`` also runs ``a/b/__init__.py``, so
that edge is in the graph too.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {
    "hyperkd": REPO / "hyperkd",
    "hyperkd.pipeline": REPO / "pipeline",
    "hyperkd.model": REPO / "model",
    "hyperkd.flows": REPO / "flows",
    "hyperkd.catalogs": REPO / "catalogs",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for prefix, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([prefix, *parts])] = path
    return found


def _package_of(name: str, modules: dict[str, Path]) -> str:
    return name if modules[name].name == "__init__.py" else name.rpartition(".")[0]


def _targets(node: ast.AST, here: str, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom) or node.module is None:
        return []
    base = node.module
    if node.level:
        pkg = _package_of(here, modules).split(".")
        base = ".".join([*pkg[: len(pkg) - node.level + 1], node.module])
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """``module -> modules it imports`` inside hyperkd, parent ``__init__`` edges included."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        own_pkg = _package_of(name, modules)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for target in _targets(node, name, modules):
                if target not in modules or target == name:
                    continue
                graph[name].add(target)
                parent = target.rpartition(".")[0]
                # Importing into another package first runs that package's __init__.
                if parent in modules and not own_pkg.startswith(parent) and parent != name:
                    graph[name].add(parent)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles() -> None:
    assert find_cycles(import_graph()) == []


def test_the_cycle_check_can_fail() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


SUBPACKAGES = sorted(
    name
    for name, path in _modules().items()
    if path.name == "__init__.py"
    and name.count(".") == 2
    and name.split(".")[1] in {"pipeline", "model"}
)


def test_pipeline_and_model_show_their_parts() -> None:
    assert {n.split(".")[1] for n in SUBPACKAGES} == {"pipeline", "model"}
    assert len(SUBPACKAGES) >= 8


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_each_part_has_a_curated_public_api(package: str) -> None:
    if package.startswith("hyperkd.model"):
        pytest.importorskip("torch")
    module = importlib.import_module(package)
    exported = module.__all__
    assert exported, f"{package} exports nothing"
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert hasattr(module, name), f"{package}.__all__ names {name}, which it lacks"


def test_every_package_is_listed_for_installation() -> None:
    # A subpackage missing from pyproject's list works in the editable install and is silently
    # absent from a wheel.
    import tomllib

    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    packages = {name for name, path in _modules().items() if path.name == "__init__.py"}
    assert packages - listed == set()
