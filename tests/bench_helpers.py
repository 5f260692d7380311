"""Running a benchmark script in a reduced form, as its tests do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_ratios(script: str, args: list[str], timeout: int = 300) -> dict[str, float]:
    """Run ``benchmarks/<script>`` with ``args`` (from that folder, as its docs do) and return
    the ``name=ratio`` pairs of its last line; fails the test on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=BENCHMARKS, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    return {k: float(v) for k, v in (kv.split("=") for kv in last.split())}
