"""The demo-step benchmark runs end to end in a reduced form and prints its five ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_steps_benchmark_prints_its_ratios() -> None:
    args = ["--batch", "4", "--tiles", "8", "--tile", "32", "--bands", "40", "--rank", "4",
            "--steps", "1", "--repeats", "1", "--threads", "1"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "demo_steps.py"), *args],
        cwd=REPO / "benchmarks", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    last = dict(kv.split("=") for kv in done.stdout.strip().splitlines()[-1].split())
    assert set(last) == {
        "teacher/fused",
        "student/fused",
        "student/decoder",
        "student/both",
        "batch/fields",
    }
    assert all(float(v) > 0 for v in last.values()), last
