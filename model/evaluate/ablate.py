"""``hyperkd ablate``: the paper's ablation grid at an equal budget, resumable.

Cells: masking {random, gabor, wavelet} x loss {mse, mse+ssim, mse+ssim+kld}, named
``<masking>-<loss>`` (e.g. ``gabor-mse+ssim+kld``), plus ``no-teacher``: the student trained
without the teacher (gabor masking, ``mse+ssim``). Without a KLD term no teacher takes part, so
``no-teacher`` is the same training as ``gabor-mse+ssim``; it is trained once and
``cells/no-teacher`` is a relative symlink to ``cells/gabor-mse+ssim`` (column ``trained_as``).

Equal budget: every cell trains the same preset for the same number of steps, batch size,
optimizer and learning rate, from the same seed (weights, data order and masking noise),
through the trainer's library API (:func:`hyperkd.model.train.runs.run_distill`), into
``OUT/cells/<cell>/student/``. Each cell is then scored like ``hyperkd evaluate``
(:func:`hyperkd.model.evaluate.reconstruction.evaluate`) on the test split (``val`` if the
store has no test tile) with *one* masking for all cells (random, ratio 0.75, seed ``seed``),
so every cell reconstructs the same masked patches; results go to
``OUT/cells/<cell>/evaluate/metrics.json``.

Resumable: ``OUT/cells/<cell>/cell.json`` records the cell's settings; a cell whose
``evaluate/metrics.json`` exists with the same settings is skipped, a cell killed mid-training
resumes from its last checkpoint, and a cell recorded with other settings is an error (choose
another ``--out``). Results: ``OUT/ablation.csv`` and ``OUT/ablation.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperkd.defaults import OPTIMIZER, optimizer_setting
from hyperkd.model.evaluate.baselines import in_table_order
from hyperkd.model.nets.masking import MASKINGS, Masking
from hyperkd.model.train.checkpoint import atomic_write_text, latest_checkpoint
from hyperkd.model.train.config import DistillConfig, EvaluateConfig, OptimConfig, TrainConfig
from hyperkd.model.train.losses import LossConfig
from hyperkd.pipeline.store.guard import check_output

_log = logging.getLogger(__name__)

GRID_LOSSES = ("mse", "mse+ssim", "mse+ssim+kld")
"""The paper's ablation of the loss: each term added in turn."""
NO_TEACHER = "no-teacher"
NO_TEACHER_AS = "gabor-mse+ssim"
"""The grid cell that is the no-teacher student."""
CSV_COLUMNS = (
    "cell", "masking", "loss", "trained_as", "psnr", "ssim", "sam", "psnr_full", "ssim_full", "sam_full",
    "psnr_range", "mse_norm",
    "wall_s", "steps", "seed", "eval_split", "n_tiles",
)  # fmt: skip


@dataclass(frozen=True)
class Cell:
    name: str
    masking: str
    loss: str

    @property
    def uses_teacher(self) -> bool:
        return LossConfig(self.loss).use_kd


def grid() -> list[Cell]:
    """The nine grid cells (masking-major order)."""
    return [Cell(f"{m}-{loss}", m, loss) for m in MASKINGS for loss in GRID_LOSSES]


@dataclass(frozen=True)
class AblationConfig:
    """``hyperkd ablate``: one budget for every cell."""

    tiles: str
    out: str
    teacher: str | None
    """Teacher run directory or official Prithvi file; required by the ``+kld`` cells."""
    teacher_preset: str = "prithvi-eo-1.0-100m"
    preset: str = "tiny"
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    """Peak learning rate (warm-up + cosine as in the trainer); the same for every cell."""
    optimizer: str = OPTIMIZER
    """``adamw`` or ``muon`` (:mod:`hyperkd.model.train.optim`), the same for every cell."""
    seed: int = 0
    eval_batch_size: int = 8
    device: str = "auto"
    num_workers: int | None = 0
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                "ablation steps and batch size must be >= 1 and the learning rate positive"
            )
        self.optim()  # checks the optimizer's name before any cell trains

    def optim(self) -> OptimConfig:
        """Every cell's optimizer and peak learning rate."""
        return OptimConfig(lr=self.lr, optimizer=self.optimizer)


def cell_settings(cfg: AblationConfig, cell: Cell) -> dict[str, Any]:
    """Everything that determines a cell's result (``cell.json``); equal settings -> skip."""
    return {
        "cell": cell.name,
        "masking": cell.masking,
        "loss": cell.loss,
        "tiles": cfg.tiles,
        "teacher": cfg.teacher if cell.uses_teacher else None,
        "teacher_preset": cfg.teacher_preset if cell.uses_teacher else None,
        "preset": cfg.preset,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "eval": {"masking": dataclasses.asdict(Masking()), "seed": cfg.seed},
    } | optimizer_setting(cfg.optimizer)


def _eval_split(cfg: AblationConfig) -> str:
    from hyperkd.model.data.dataset import read_info

    splits = read_info(cfg.tiles, cfg.storage_options).splits
    for split in ("test", "val"):
        if splits.get(split, 0) > 0:
            return split
    raise ValueError(f"tile store {cfg.tiles} has no test or val tile to evaluate the cells on")


def run_cell(cfg: AblationConfig, cell: Cell, split: str) -> dict[str, Any]:
    """Train (or resume) and evaluate one cell; skipped when already done with equal settings."""
    from hyperkd.model.train.runs import run_distill

    folder = Path(cfg.out) / "cells" / cell.name
    settings = cell_settings(cfg, cell)
    record_path, metrics_path = folder / "cell.json", folder / "evaluate" / "metrics.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record["settings"] != settings:
            raise ValueError(
                f"cell {cell.name} in {cfg.out} was run with other settings; choose another --out"
            )
        if metrics_path.is_file() and "wall_s" in record:
            _log.info("cell %s: done, skipped", cell.name)
            return {**json.loads(metrics_path.read_text()), "wall_s": record["wall_s"]}
    else:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record_path, json.dumps({"settings": settings}, indent=1, sort_keys=True))
    t0 = time.perf_counter()
    # The run and its evaluation are siblings: an evaluation never writes inside its input.
    run = folder / "student"
    if not (run / "model.safetensors").is_file() or not (run / "config.json").is_file():
        distill = _distill_config(cfg, cell, run)
        _log.info("cell %s: training %d steps", cell.name, cfg.steps)
        run_distill(distill)
        record = {"settings": settings, "wall_s": time.perf_counter() - t0}
        atomic_write_text(record_path, json.dumps(record, indent=1, sort_keys=True))
    record = json.loads(record_path.read_text())
    train_s = float(record.get("wall_s", math.nan))
    metrics = _evaluate_cell(cfg, run, folder / "evaluate", split)
    _log.info("cell %s: PSNR %.2f dB in %.0f s", cell.name, metrics.get("psnr", math.nan), train_s)
    return {**metrics, "wall_s": train_s}


def _distill_config(cfg: AblationConfig, cell: Cell, run: Path) -> DistillConfig:
    """The cell's training into ``run``: the ablation's one budget, the cell's masking and loss
    (its teacher only when the loss has a KLD term); resumed from the last checkpoint a killed
    run left there."""
    train = TrainConfig(
        out=str(run),
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        optim=cfg.optim(),
        log_every=max(1, cfg.steps // 50),
        checkpoint_every=max(1, cfg.steps // 4),
        resume=latest_checkpoint(run) is not None,
        device=cfg.device,
        num_workers=cfg.num_workers,
        progress=False,
    )
    return DistillConfig(
        tiles=cfg.tiles,
        train=train,
        teacher=cfg.teacher if cell.uses_teacher else None,
        teacher_preset=cfg.teacher_preset,
        preset=cfg.preset,
        masking=Masking(cell.masking),
        loss=LossConfig(cell.loss),
        storage_options=cfg.storage_options,
    )


def _evaluate_cell(cfg: AblationConfig, run: Path, out: Path, split: str) -> dict[str, Any]:
    """``hyperkd evaluate`` of the student in ``run`` on ``split`` into ``out``, with the one
    masking every cell is scored on (the default: random, ratio 0.75, seed ``cfg.seed``)."""
    from hyperkd.model.evaluate.reconstruction import evaluate

    return evaluate(
        EvaluateConfig(
            checkpoint=str(run),
            tiles=cfg.tiles,
            out=str(out),
            split=split,
            batch_size=cfg.eval_batch_size,
            seed=cfg.seed,
            device=cfg.device,
            storage_options=cfg.storage_options,
        )
    )


def _link_no_teacher(out: Path) -> None:
    link = out / "cells" / NO_TEACHER
    if link.is_symlink() or link.exists():
        if link.is_symlink() and os.readlink(link) == NO_TEACHER_AS:
            return
        raise ValueError(f"{link} exists and is not a link to {NO_TEACHER_AS}")
    link.symlink_to(NO_TEACHER_AS, target_is_directory=True)


def run_ablation(cfg: AblationConfig) -> list[dict[str, Any]]:
    """Run every cell (skipping finished ones) and write ``ablation.csv`` and ``ablation.md``."""
    out = Path(cfg.out)
    check_output(out, "files", [cfg.tiles, cfg.teacher])
    split = _eval_split(cfg)
    if cfg.teacher is None:
        raise ValueError("the mse+ssim+kld cells distil from a teacher: pass --teacher")
    if not Path(cfg.teacher).exists():
        raise FileNotFoundError(f"no teacher at {cfg.teacher}")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    results: dict[str, dict[str, Any]] = {}
    for cell in grid():
        results[cell.name] = run_cell(cfg, cell, split)
    _link_no_teacher(out)
    for cell in [*grid(), Cell(NO_TEACHER, "gabor", "mse+ssim")]:
        trained_as = NO_TEACHER_AS if cell.name == NO_TEACHER else cell.name
        m = results[trained_as]
        row = {
            "cell": cell.name,
            "masking": cell.masking,
            "loss": cell.loss,
            "trained_as": trained_as,
        }
        row |= {k: m.get(k, math.nan) for k in _METRICS}
        row |= {
            "wall_s": m["wall_s"],
            "steps": cfg.steps,
            "seed": cfg.seed,
            "eval_split": split,
            "n_tiles": m.get("n_tiles"),
        }
        rows.append(row)
    # Every cell is scored on the same masks, so the baselines are one set of rows, in their
    # declared order: a rerun reads them back from metrics.json, whose keys are sorted.
    first = results[grid()[0].name].get("baselines", {})
    for name, m in in_table_order(first):
        rows.append(
            {"cell": f"baseline: {name}", "masking": "", "loss": "", "trained_as": "",
             "wall_s": math.nan, "steps": "", "seed": "", "eval_split": split,
             "n_tiles": results[grid()[0].name].get("n_tiles")}
            | {k: m.get(k, math.nan) for k in _METRICS}
        )  # fmt: skip
    write_tables(out, rows, cfg)
    return rows


_METRICS = ("psnr", "ssim", "sam", "psnr_full", "ssim_full", "sam_full", "psnr_range", "mse_norm")


def write_tables(out: Path, rows: list[dict[str, Any]], cfg: AblationConfig) -> None:
    """``ablation.csv`` (every column) and ``ablation.md`` (the summary table)."""
    lines = []
    with (out / "ablation.csv.tmp").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()}
            )
    os.replace(out / "ablation.csv.tmp", out / "ablation.csv")
    lines += [
        "# Ablation",
        "",
        f"Tile store `{cfg.tiles}`; preset `{cfg.preset}`, {cfg.steps} steps of batch {cfg.batch_size}, "
        f"{cfg.optimizer} at lr {cfg.lr:g}, seed {cfg.seed} for every cell. Metrics on the masked patches of the "
        f"{rows[0]['eval_split']} split ({rows[0]['n_tiles']} tiles), random masking 0.75 with the same "
        "masks for every cell, and so are the baselines (predictors that learn nothing) at the "
        "bottom; reflectance 0-1.",
        "",
        "| cell | masking | loss | PSNR (dB) | SSIM | SAM (°) | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        wall = "" if math.isnan(r["wall_s"]) else f"{r['wall_s']:.1f}"
        lines.append(
            f"| {r['cell']} | {r['masking']} | {r['loss']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
            f"{r['sam']:.2f} | {wall} |"
        )
    lines += [
        "",
        f"`{NO_TEACHER}` is the same training as `{NO_TEACHER_AS}` (no KLD term, so no teacher).",
    ]
    atomic_write_text(out / "ablation.md", "\n".join(lines) + "\n")
