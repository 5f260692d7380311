"""The GPU training-step script runs end to end, in its reduced form, on the CPU; and the
compiled training step keeps its gradients (torch.compile is the default on CUDA)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _run_script(tmp_path: Path, stages: str) -> str:
    env = os.environ | {
        "OUT": str(tmp_path / "out"),
        "TILES": str(tmp_path / "tiles.zarr"),
        "PY": sys.executable,
        "BENCH_REDUCED": "1",
        "BENCH_STAGES": stages,
        "BUDGET_S": "600",
    }
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_train_step.sh")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return (tmp_path / "out" / "summary.txt").read_text()


def test_gpu_script_reduced_fed_stage_runs_on_cpu(tmp_path: Path) -> None:
    summary = _run_script(tmp_path, "b32-eager-fed")
    line = next(ln for ln in summary.splitlines() if ln.startswith("b32-eager-fed"))
    assert "(rc 0," in line, summary
    assert "tiny/ratio_to_mae=" in line and "fed/in_gpu=" in line, summary
    ratio = float(line.split("fed/in_gpu=")[1].split()[0])
    assert 0 < ratio < 10
    assert (tmp_path / "tiles.zarr").is_dir()  # the store was built there, from the repo


@pytest.mark.slow
def test_gpu_script_reduced_runs_every_stage_on_cpu(tmp_path: Path) -> None:
    stages = (
        "b32-eager-fed",
        "b256-eager",
        "b256-compiled",
        "b256-compiled-matrix",
        "b32-compiled-fed",
    )
    summary = _run_script(tmp_path, " ".join(stages))
    for name in stages:
        assert f"{name} (rc 0," in summary, summary


@pytest.mark.slow
@pytest.mark.parametrize("terms", ["mse", "mse+ssim+kld"])
def test_compiled_distillation_step_has_gradients(terms: str) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import argparse

    import train_step

    args = argparse.Namespace(tile=32, patch=8, bands=8)
    cpu = torch.device("cpu")
    batch = train_step.make_batch(2, 8, 32, 8, cpu)
    task = train_step.build("tiny", terms != "mse", args, cpu)
    mask = task.make_mask(batch, torch.Generator().manual_seed(0))
    eager = task(batch, mask)["loss"]
    compiled = torch.compile(task)(batch, mask)["loss"]
    assert compiled.requires_grad
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    (grad_eager,) = torch.autograd.grad(eager, task.student.patch_embed.proj.weight)
    (grad_compiled,) = torch.autograd.grad(compiled, task.student.patch_embed.proj.weight)
    torch.testing.assert_close(grad_compiled, grad_eager, rtol=1e-3, atol=1e-6)
