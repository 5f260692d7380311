"""Frozen configuration for training and evaluation, built once at the edge (the CLI).

Defaults follow MAE's pretraining recipe (facebookresearch/mae ``main_pretrain.py``,
method.md §4): AdamW, betas (0.9, 0.95), weight decay 0.05, ``lr = blr * effective_batch / 256``
with ``blr = 1.5e-4``, linear warm-up then a half-cycle cosine to ``min_lr``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from hyperkd.defaults import OPTIMIZER, OPTIMIZERS, SPECTRAL_BASES
from hyperkd.model.nets.masking import Masking
from hyperkd.model.train.losses import LossConfig


@dataclass(frozen=True)
class OptimConfig:
    """AdamW (or Muon, :mod:`hyperkd.model.train.optim`) with MAE's schedule."""

    optimizer: str = OPTIMIZER
    """``adamw`` or ``muon`` (Muon on the hidden matrices, AdamW on the rest, at the same lr
    and weight decay)."""
    blr: float = 1.5e-4
    """Base learning rate; the actual rate is ``blr * effective_batch / 256``."""
    lr: float | None = None
    """Absolute learning rate; overrides ``blr`` when set."""
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    """Applied to weight matrices only (not biases, norms or tokens), as in MAE."""
    warmup_fraction: float = 0.05
    """Share of the steps spent warming up linearly (MAE: 40 of 800 epochs)."""
    min_lr: float = 0.0
    clip_grad: float | None = 1.0
    """Max global gradient norm; None disables clipping."""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"
            )

    def peak_lr(self, effective_batch: int) -> float:
        return self.lr if self.lr is not None else self.blr * effective_batch / 256

    def lr_at(self, step: int, total_steps: int, effective_batch: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
        peak = self.peak_lr(effective_batch)
        warmup = (
            max(1, round(self.warmup_fraction * total_steps)) if self.warmup_fraction > 0 else 0
        )
        if step < warmup:
            return peak * (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return self.min_lr + (peak - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class TrainConfig:
    """The loop: length, batch, seeds, checkpoints, logging, speed switches."""

    out: str
    """Run directory: checkpoints, ``metrics.jsonl``, ``model.safetensors``, ``config.json``."""
    steps: int | None = None
    """Optimizer steps; exactly one of ``steps`` and ``epochs``."""
    epochs: int | None = None
    batch_size: int = 8
    """Per process; the effective batch is ``batch_size * world_size``."""
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = False
    compile: bool | None = None
    """``torch.compile`` the task; ``None``: on CUDA, where it pays (2.8x at batch 256 on an
    H200, benchmarks/RESULTS.md), not on the CPU (slow to compile, and the SSIM kernel there
    is already fused)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    num_workers: int | None = None
    progress: bool = True
    augment: bool = True
    """One random flip/rot90 per tile and step (all spatial fields alike)."""
    memory_cache: str = "auto"
    """``auto`` (hold the split in RAM when it fits, :mod:`hyperkd.model.data.memory`), ``on``
    or ``off`` (read the tile store every epoch)."""

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of --steps and --epochs")
        if (self.steps is not None and self.steps < 1) or (
            self.epochs is not None and self.epochs < 1
        ):
            raise ValueError("--steps/--epochs must be at least 1")
        if self.batch_size < 1 or self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("batch size, log and checkpoint intervals must be at least 1")
        if self.memory_cache not in ("auto", "on", "off"):
            raise ValueError(f"memory_cache must be auto, on or off, got {self.memory_cache!r}")


@dataclass(frozen=True)
class DistillConfig:
    """``hyperkd train``: the student MAE, distilled from a teacher."""

    tiles: str
    train: TrainConfig
    teacher: str | None = None
    """Run directory of ``train-teacher``, or an official Prithvi ``.pt``; None for ``mse`` only."""
    teacher_preset: str = "prithvi-eo-1.0-100m"
    """Architecture of an official ``.pt`` teacher (run directories carry their own)."""
    preset: str = "tiny"
    masking: Masking = field(default_factory=Masking)
    loss: LossConfig = field(default_factory=LossConfig)
    storage_options: dict[str, Any] | None = None
    spectral_dim: int = 0
    """Spectral components per pixel of the student's embedding and head (0: all bands); see
    :attr:`hyperkd.model.nets.mae.MAEConfig.spectral_dim`."""
    spectral_basis: str = "learned"
    """``learned`` or ``fixed`` (frozen principal components: the loss runs on the components,
    about 4x cheaper steps); see :attr:`hyperkd.model.nets.mae.MAEConfig.spectral_basis`."""

    def __post_init__(self) -> None:
        if self.spectral_basis not in SPECTRAL_BASES:
            raise ValueError(
                f"unknown spectral basis {self.spectral_basis!r}: choose one of "
                f"{', '.join(SPECTRAL_BASES)}"
            )
        if self.spectral_basis == "fixed" and not self.spectral_dim:
            raise ValueError("a fixed spectral basis needs spectral_dim > 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("storage_options")  # may hold credentials; never written to disk
        return d


@dataclass(frozen=True)
class TeacherPretrainConfig:
    """``hyperkd train-teacher``: MAE pretraining of the Prithvi architecture on teacher tiles."""

    tiles: str
    train: TrainConfig
    preset: str = "tiny"
    mask_ratio: float = 0.75
    storage_options: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("storage_options")
        return d


@dataclass(frozen=True)
class EvaluateConfig:
    """``hyperkd evaluate``: reconstruction metrics of a student run on a split."""

    checkpoint: str
    tiles: str
    out: str
    split: str = "test"
    masking: Masking = field(default_factory=Masking)
    """Evaluation masking; random with a fixed seed by default, so runs are comparable."""
    batch_size: int = 8
    seed: int = 0
    device: str = "auto"
    teacher: str | None = None
    """Teacher run directory or Prithvi file: also score it, in teacher space, on the same masks."""
    teacher_preset: str = "prithvi-eo-1.0-100m"
    per_tile: bool = True
    """Also write every tile's masked-patch scores (paired statistics, bootstraps)."""
    storage_options: dict[str, Any] | None = None
