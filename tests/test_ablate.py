"""``hyperkd ablate``: the masking x loss grid plus no-teacher, equal budget, resumable; on the demo
tiles and on the real Potsdam EnMAP tiles."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from eval_helpers import ablation as run_ablation
from eval_helpers import demo_run, potsdam_run, torch_threads

from hyperkd.cli import main
from hyperkd.model.evaluate.ablate import (
    NO_TEACHER,
    NO_TEACHER_AS,
    AblationConfig,
    _distill_config,
    cell_settings,
    grid,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return demo_run(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def ablation(demo: dict[str, str]) -> Path:
    return Path(run_ablation(demo))


def test_grid_is_the_papers() -> None:
    cells = grid()
    assert len(cells) == 9
    assert {(c.masking, c.loss) for c in cells} == {
        (m, loss)
        for m in ("random", "gabor", "wavelet")
        for loss in ("mse", "mse+ssim", "mse+ssim+kld")
    }
    assert [c.uses_teacher for c in cells].count(True) == 3


def test_ablate_writes_every_cell_with_equal_budget(ablation: Path) -> None:
    with (ablation / "ablation.csv").open() as f:
        rows = list(csv.DictReader(f))
    baselines = ["baseline: train_mean", "baseline: visible_mean", "baseline: interpolation"]
    assert [r["cell"] for r in rows] == [c.name for c in grid()] + [NO_TEACHER] + baselines
    for r in rows:
        assert float(r["psnr"]) > 0 and 0 < float(r["sam"]) < 90 and -1 <= float(r["ssim"]) <= 1
        assert r["eval_split"] in ("test", "val") and r["n_tiles"] == rows[0]["n_tiles"]
    rows, base = rows[:-3], {r["cell"]: r for r in rows[-3:]}
    assert all(r["steps"] == "2" and r["seed"] == "0" for r in rows)
    # the baselines are scored on the cells' masks: as in every cell's own metrics.json
    cell = json.loads(
        (ablation / "cells" / rows[0]["cell"] / "evaluate" / "metrics.json").read_text()
    )
    interp = float(base["baseline: interpolation"]["psnr"])
    assert interp == pytest.approx(cell["baselines"]["interpolation"]["psnr"], abs=1e-3)
    no_teacher = rows[-1]
    same = next(r for r in rows if r["cell"] == NO_TEACHER_AS)
    assert no_teacher["trained_as"] == NO_TEACHER_AS and no_teacher["psnr"] == same["psnr"]
    assert os.readlink(ablation / "cells" / NO_TEACHER) == NO_TEACHER_AS
    # every cell: same budget and seeds, its own masking and loss, evaluated on the same masks
    settings = [
        json.loads((ablation / "cells" / c.name / "cell.json").read_text())["settings"]
        for c in grid()
    ]
    budget = {
        json.dumps({k: s[k] for k in ("preset", "steps", "batch_size", "lr", "seed", "eval")})
        for s in settings
    }
    assert len(budget) == 1
    for cell, s in zip(grid(), settings, strict=True):
        run = json.loads((ablation / "cells" / cell.name / "student" / "config.json").read_text())[
            "run"
        ]
        assert (
            (run["masking"]["kind"], run["loss"]["terms"])
            == (cell.masking, cell.loss)
            == (s["masking"], s["loss"])
        )
        assert (run["teacher"] is not None) == cell.uses_teacher
        metrics = json.loads(
            (ablation / "cells" / cell.name / "evaluate" / "metrics.json").read_text()
        )
        assert metrics["masking"]["kind"] == "random"
    table = (ablation / "ablation.md").read_text()
    assert "| cell | masking | loss | PSNR (dB) | SSIM | SAM (°) | wall time (s) |" in table
    assert table.count("\n| ") == 1 + 10 + 3  # header, cells, no-teacher, baselines


def test_ablate_rerun_skips_finished_cells(
    ablation: Path, demo: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    stamps = {
        p: p.stat().st_mtime_ns for p in (ablation / "cells").glob("*/student/model.safetensors")
    }
    table = (ablation / "ablation.csv").read_text()
    argv = [
        "ablate",
        "--tiles",
        demo["tiles"],
        "--teacher",
        demo["teacher"],
        "--out",
        str(ablation),
    ]
    assert main([*argv, "--steps", "2", "--batch-size", "2", "--device", "cpu"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained
    assert "| gabor-mse+ssim+kld | gabor | mse+ssim+kld |" in capsys.readouterr().out
    # the same rows in the same order: the rerun reads the cells' metrics back from disk
    assert (ablation / "ablation.csv").read_text() == table
    # other settings in the same directory: refused, nothing overwritten
    for other in (["--steps", "3"], ["--optimizer", "muon"]):
        assert main([*argv, *other, "--batch-size", "2", "--device", "cpu"]) == 2
        assert "was run with other settings" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_ablate_trains_every_cell_with_the_chosen_optimizer(tmp_path: Path) -> None:
    cell = grid()[0]
    adamw = AblationConfig(tiles="t.zarr", out=str(tmp_path), teacher=None)
    muon = dataclasses.replace(adamw, optimizer="muon")
    # AdamW cells keep the settings recorded before the choice existed; Muon cells differ.
    assert "optimizer" not in cell_settings(adamw, cell)
    assert cell_settings(muon, cell) == cell_settings(adamw, cell) | {"optimizer": "muon"}
    train = _distill_config(muon, cell, tmp_path / "run").train
    assert (train.optim.optimizer, train.optim.lr) == ("muon", adamw.lr)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        dataclasses.replace(adamw, optimizer="sgd")


def test_ablate_resumes_a_half_finished_cell(ablation: Path, demo: dict[str, str]) -> None:
    """A cell whose evaluation is missing is evaluated again without retraining."""
    cell = ablation / "cells" / "random-mse"
    metrics = cell / "evaluate" / "metrics.json"
    before = json.loads(metrics.read_text())
    weights = (cell / "student" / "model.safetensors").stat().st_mtime_ns
    metrics.unlink()
    argv = [
        "ablate",
        "--tiles",
        demo["tiles"],
        "--teacher",
        demo["teacher"],
        "--out",
        str(ablation),
    ]
    assert main([*argv, "--steps", "2", "--batch-size", "2", "--device", "cpu"]) == 0
    assert json.loads(metrics.read_text())["psnr"] == pytest.approx(before["psnr"])
    assert (cell / "student" / "model.safetensors").stat().st_mtime_ns == weights


def test_ablate_kld_cells_need_a_teacher(
    demo: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "ablate",
        "--tiles",
        demo["tiles"],
        "--out",
        str(tmp_path / "abl"),
        "--steps",
        "1",
        "--batch-size",
        "2",
    ]
    assert main([*argv, "--device", "cpu"]) == 2
    assert "distil from a teacher: pass --teacher" in capsys.readouterr().err
    assert not (tmp_path / "abl").exists()


def test_ablate_on_real_potsdam_tiles(
    sample_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = potsdam_run(sample_data, tmp_path_factory.mktemp("potsdam"))
    out = Path(run_ablation(run, steps=1))
    with (out / "ablation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 13 and all(float(r["psnr"]) > 0 for r in rows)
    assert {r["n_tiles"] for r in rows} == {rows[0]["n_tiles"]} and int(rows[0]["n_tiles"]) > 0
