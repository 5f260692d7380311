"""The layering rule, read from the source: imports point inward.

pipeline/ imports no torch and no prefect; model/ imports no prefect; only flows/ holds Prefect
decorators. Imports are read with ``ast``, so lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "pipeline": {
        "torch",
        "torchvision",
        "timm",
        "prefect",
        "prefect_dask",
        "hyperkd.model",
        "hyperkd.flows",
    },
    "model": {"prefect", "prefect_dask", "hyperkd.flows"},
    "catalogs": {
        "torch",
        "prefect",
        "xarray",
        "hyperkd.pipeline",
        "hyperkd.model",
        "hyperkd.flows",
    },
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _violations(layer: str) -> list[str]:
    bad = []
    for path in sorted((REPO / layer).rglob("*.py")):
        for line, module in _imports(path):
            for banned in FORBIDDEN[layer]:
                if module == banned or module.startswith(banned + "."):
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_inward(layer: str) -> None:
    assert (REPO / layer).is_dir()
    assert _violations(layer) == []


def test_only_flows_hold_prefect_decorators() -> None:
    offenders = []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in {"flows", "tests", ".venv"} or "site-packages" in rel.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for dec in node.decorator_list:
                    target = dec.func if isinstance(dec, ast.Call) else dec
                    name = (
                        target.attr
                        if isinstance(target, ast.Attribute)
                        else getattr(target, "id", "")
                    )
                    if name in {"flow", "task"}:
                        offenders.append(f"{rel}:{node.lineno} @{name}")
    assert offenders == []


def test_the_layering_check_catches_a_violation(tmp_path: Path) -> None:
    # The check must be able to fail: a planted torch import is reported.
    planted = tmp_path / "bad.py"
    planted.write_text("def f():\n    import torch.nn as nn\n")
    assert _imports(planted) == [(2, "torch.nn")]
