"""The written form of a ``hyperkd downstream`` result: its table, markdown and files.

A result (:func:`hyperkd.model.evaluate.downstream.run_downstream`) holds one row per method
and mode; ``downstream_<name>.json`` keeps it whole and ``downstream_<name>.md`` shows it as a
table with its notes. The report (:mod:`hyperkd.model.report.page`) draws the same table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hyperkd.model.train.checkpoint import atomic_write_text

__all__ = ["markdown_table", "table", "write_results"]


def table(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per method and mode) of a result, as display strings."""
    metrics = list(result["metrics"])
    names = {"accuracy": "overall accuracy", "macro_f1": "macro-F1", "r2": "R²", "rmse": "RMSE"}
    unit = " (g/kg)" if result["task"] == "soc" else ""
    head = [
        "method",
        "mode",
        *(names[m] + (unit if m == "rmse" else "") for m in metrics),
        "time (s)",
    ]
    rows = [
        [r["method"], r["mode"], *(f"{r[m]:.3f}" for m in metrics), f"{r['seconds']:.1f}"]
        for r in result["results"]
    ]
    return head, rows


def markdown_table(result: Mapping[str, Any]) -> str:
    """The results as a markdown table (one row per method and mode)."""
    head, rows = table(result)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def write_results(out: Path, result: Mapping[str, Any]) -> None:
    """``downstream_<name>.json`` and ``.md`` in ``out``; the name is the result's ``name``
    (:func:`hyperkd.model.evaluate.downstream.result_name`). Each file is replaced atomically,
    the markdown first and the JSON (the record the report reads) last, so a killed run leaves
    the previous result or the new one, never a truncated file."""
    name = result["name"]
    unit = " (g/kg)" if result["task"] == "soc" else ""
    text = [
        f"# Downstream: {name}{unit}",
        "",
        f"Label `{result['label']}` of `{result['data']}`; trained on {result['n_train_pixels']} {result['train_split']} "
        f"pixels, scored on {result['n_eval_pixels']} {result['eval_split']} pixels.",
        "",
        markdown_table(result),
        "",
        *(f"- {note}" for note in result["notes"]),
    ]
    atomic_write_text(out / f"downstream_{name}.md", "\n".join(text).rstrip() + "\n")
    atomic_write_text(out / f"downstream_{name}.json", json.dumps(result, indent=1) + "\n")
