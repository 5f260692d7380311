"""The GPU-scale science script runs end to end, in its reduced form, on the CPU: demo data from
the scene factory, ingest, tiles, teacher, and benchmarks/science.py's table with the baselines
and each student's row."""

from __future__ import annotations

import importlib.util
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


def _science() -> object:
    spec = importlib.util.spec_from_file_location("science", REPO / "benchmarks" / "science.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_recon_loss_mse_drops_ssim_from_arms_b_and_c(monkeypatch: pytest.MonkeyPatch) -> None:
    science = _science()
    paper, cheap = science.students("mse+ssim"), science.students("mse")  # type: ignore[attr-defined]
    assert paper["kld-teacher"].loss == "mse+ssim+kld" and "mse+ssim" in paper
    assert "mse+ssim" not in cheap
    assert {cheap[n].loss for n in ("kld-teacher", "kld-random", "hyperkd")} == {"mse+kld"}
    assert cheap["kld-random"].teacher == "random" and cheap["hyperkd"].sample
    assert {n: s for n, s in cheap.items() if s.arm == "A"} == {
        n: s for n, s in paper.items() if s.arm == "A"
    }
    assert science.references("mse")["B"] == "random"  # type: ignore[attr-defined]
    argv = ["science.py", "--tiles", "t", "--teacher", "x", "--out", "o", "--recon-loss", "mse",
            "--students", "mse+ssim"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        science.main()  # type: ignore[attr-defined]
    assert exit_info.value.code == 2


def test_a_run_folder_is_reused_only_with_its_own_settings(tmp_path: Path) -> None:
    science = _science()
    args = science.argparse.Namespace(  # type: ignore[attr-defined]
        tiles="t.zarr", preset="tiny", steps=2000, batch_size=32, lr=2e-3, spectral_dim=16,
        spectral_basis="fixed", mask_ratio=0.75, teacher="teacher", teacher_preset="tiny",
        random_teacher_preset="tiny", eval_seed=0, optimizer="adamw",
    )  # fmt: skip
    student = science.students("mse")["kld-random"]  # type: ignore[attr-defined]
    out = tmp_path / "kld-random_mse+kld" / "seed0"
    science._same_settings(out, science.settings(args, student))  # type: ignore[attr-defined]
    science._same_settings(out, science.settings(args, student))  # the same: reused
    args.steps = 3000
    with pytest.raises(science.OtherSettingsError, match="other steps"):  # type: ignore[attr-defined]
        science._same_settings(out, science.settings(args, student))  # type: ignore[attr-defined]
    args.steps, args.optimizer = 2000, "muon"
    with pytest.raises(science.OtherSettingsError, match="other optimizer"):  # type: ignore[attr-defined]
        science._same_settings(out, science.settings(args, student))  # type: ignore[attr-defined]
