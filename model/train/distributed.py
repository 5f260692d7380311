"""Where a training process runs: its rank, device and process group, and its epoch loaders.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1) a process joins a group, gloo on the CPU and NCCL
on CUDA; each rank reads its own shard of every epoch, and rank 0 alone writes files.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

Batch = dict[str, torch.Tensor]
LoaderFactory = Callable[[int], Iterable[Batch]]
"""epoch -> this rank's batches for that epoch, in a deterministic order."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) before models are built."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_distributed(device: str = "auto") -> DistEnv:
    """Join the ``torchrun`` process group if there is one (gloo on CPU, NCCL on CUDA)."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return DistEnv(rank=rank, world_size=world, device=dev, owns_group=owns)


def default_loader_factory(
    dataset: Any, batch_size: int, *, seed: int, env: DistEnv, num_workers: int | None
) -> LoaderFactory:
    """Epoch loaders from the tile loader (:func:`hyperkd.model.data.loader.make_loader`).

    One loader (its workers persist); each epoch sets the sampler's epoch, so the order of
    epoch ``e`` depends only on ``(seed, e)`` and this rank's shard, as exact resume needs.
    """
    from hyperkd.model.data.loader import make_loader

    loader = make_loader(
        dataset,
        batch_size,
        shuffle=True,
        seed=seed,
        num_workers=num_workers,
        drop_last=True,
        rank=env.rank,
        world_size=env.world_size,
    )

    def factory(epoch: int) -> Iterable[Batch]:
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        return loader

    return factory


def gather(t: torch.Tensor, env: DistEnv) -> list[torch.Tensor]:
    """``t`` from every rank, on the CPU, in rank order (a collective: every rank calls it)."""
    if env.world_size == 1:
        return [t]
    x = t.to(env.device)
    out = [torch.empty_like(x) for _ in range(env.world_size)]
    dist.all_gather(out, x)
    return [o.cpu() for o in out]


def mean_over_ranks(values: dict[str, torch.Tensor], env: DistEnv) -> dict[str, float]:
    """Each scalar's mean over the ranks, as floats (a collective where there are several)."""
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    if env.world_size > 1:
        dist.all_reduce(stacked)
        stacked /= env.world_size
    return dict(zip(keys, stacked.tolist(), strict=True))
