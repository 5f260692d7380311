"""The train split of a run: opened, seeded, and cached in RAM in the form the task reads.

A split that fits in RAM (``memory_cache``) is decoded once and served from tensors
(:mod:`hyperkd.model.data.memory`). What the cache keeps depends on the task: a teacher its six
bands; a fixed-basis student its k spectral components and their residual
(:meth:`StudentMAE.project_bands`), so the whole split never sits in RAM at C bands and each
step gathers and rotates k + 1 channels instead of C.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from hyperkd.model.train.config import DistillConfig, TeacherPretrainConfig
from hyperkd.model.train.distributed import (
    DistEnv,
    LoaderFactory,
    seed_everything,
    setup_distributed,
)
from hyperkd.model.train.tasks import DistillationTask
from hyperkd.pipeline.store.guard import check_output

__all__ = ["cache_train_split", "component_cache", "open_train_split", "train_pixels"]


def open_train_split(
    config: DistillConfig | TeacherPretrainConfig, env: DistEnv | None, dataset: Any
) -> tuple[DistEnv, Any]:
    """The process group, the train split (unless given) and the seeds of a run."""
    from hyperkd.model.data.dataset import TileDataset

    train = config.train
    kind = "teacher" if isinstance(config, TeacherPretrainConfig) else "student"
    check_output(train.out, kind, [config.tiles, getattr(config, "teacher", None)])
    env = env or setup_distributed(train.device)
    if dataset is None:
        dataset = TileDataset(
            config.tiles, split="train", augment=train.augment,
            storage_options=config.storage_options,
        )  # fmt: skip
    seed_everything(train.seed)
    return env, dataset


def cache_train_split(
    config: DistillConfig | TeacherPretrainConfig,
    env: DistEnv,
    dataset: Any,
    loader_factory: LoaderFactory | None,
    *,
    fields: tuple[str, ...] | None = None,
    transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    student_channels: int | None = None,
) -> tuple[Any, LoaderFactory | None]:
    """The train split and its loader: a split that fits in RAM (``memory_cache``) is decoded
    once, through ``transform``, and served from tensors (:mod:`hyperkd.model.data.memory`);
    otherwise the tile loader reads it every epoch. ``fields``, ``student_channels``: what the
    cache keeps, for its size (a teacher's six bands; a fixed-basis student's components)."""
    from hyperkd.model.data.dataset import TileDataset

    train = config.train
    if loader_factory is not None or train.memory_cache == "off":
        return dataset, loader_factory
    if not isinstance(dataset, TileDataset):
        return dataset, loader_factory
    from hyperkd.model.data.memory import MemoryTiles, fits_in_memory, memory_loader_factory

    if train.memory_cache == "auto" and not fits_in_memory(
        dataset, student_channels=student_channels, fields=fields
    ):
        return dataset, loader_factory
    cached = MemoryTiles(dataset, fields=fields, transform=transform)
    return cached, memory_loader_factory(
        cached, train.batch_size, seed=train.seed, augment=train.augment,
        rank=env.rank, world_size=env.world_size,
    )  # fmt: skip


def component_cache(task: DistillationTask) -> dict[str, Any]:
    """How a fixed-basis student's split is cached: its k components and residual instead of
    the C bands (the loss needs nothing else, :attr:`DistillationTask.component_loss`)."""
    if not task.component_loss:
        return {}
    student = task.student

    def project(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v for k, v in batch.items() if k != "student"}
        out["student_components"], out["student_residual"] = student.project_bands(
            batch["student"]
        )  # (B, k, T, T), (B, T, T)
        return out

    return {"transform": project, "student_channels": student.config.spectral_dim + 1}


def train_pixels(dataset: Any, tiles: int = 32, pixels: int = 200_000) -> torch.Tensor:
    """(N, C) valid normalised spectra from up to ``tiles`` train tiles spread over the split."""
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(tiles, len(dataset))).round())
    parts = []
    for i in picks.astype(int):
        sample = dataset[int(i)]
        x = sample["student"].flatten(1).T  # (H*W, C)
        parts.append(x[sample["valid"].flatten()])
    spectra = torch.cat(parts)  # (N, C)
    step = max(1, spectra.shape[0] // pixels)
    return spectra[::step]
