"""The evaluate-metrics benchmark runs end to end in a reduced form: its before and after
versions agree (it asserts so before timing) and it prints both ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_evaluate_metrics_benchmark_prints_its_ratios() -> None:
    args = ["--batch", "4", "--tiles", "8", "--tile", "32", "--bands", "40",
            "--steps", "1", "--repeats", "1", "--threads", "1"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "evaluate_metrics.py"), *args],
        cwd=REPO / "benchmarks", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    last = dict(kv.split("=") for kv in done.stdout.strip().splitlines()[-1].split())
    assert set(last) == {"metrics", "band_stats"}
    assert all(float(v) > 0 for v in last.values()), last
