"""The GPU-scale science script runs end to end, in its reduced form, on the CPU: demo data from
the scene factory, ingest, tiles, teacher, and benchmarks/science.py's table with the baselines
and each student's row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("device", "region", "ingest", "tiles", "teacher", "science-1seed", "total")


@pytest.mark.slow
def test_science_gpu_script_reduced_runs_every_stage_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = os.environ | {
        "OUT": str(out),
        "WORK": str(tmp_path / "work"),
        "WHEELS_DIR": str(tmp_path / "no-wheels"),  # a .whl/ made for the device is not for here
        "PY": sys.executable,
        "BENCH_REDUCED": "1",
        "BUDGET_S": "600",
        "STUDENTS": "random kld-random",
    }
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "science_gpu.sh")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    starts = [ln.split(" ")[0].rstrip(":") for ln in summary.splitlines()]
    for name in STAGES:
        assert name in starts, summary
    for name in ("region", "ingest", "tiles", "teacher", "science-1seed"):
        assert f"{name} (rc 0," in summary, summary
    assert "'test':" in summary  # the tile store has a test split to score
    table = (out / "science_table.md").read_text()
    cells = [ln.split("|") for ln in table.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in cells[0]]
    student, psnr = header.index("student"), header.index("psnr")
    rows = {c[student].strip(): c[psnr].strip() for c in cells[1:]}
    expected = {"baseline: train_mean", "baseline: visible_mean", "baseline: interpolation"}
    expected |= {"random", "mse+ssim", "kld-random"}  # kld-random brings its reference, mse+ssim
    assert expected <= set(rows), table
    for name in expected:
        assert 5 < float(rows[name]) < 80, table  # a reflectance PSNR in dB, not nan
