"""An in-memory tile cache: a split that fits in RAM is read once, then served from tensors.

The demo's and the science benchmark's tile stores are a few hundred MB at most; reading them
from Zarr every epoch costs more CPU than a tiny student's step. :class:`MemoryTiles` decodes
every tile of a :class:`~hyperkd.model.data.dataset.TileDataset` once (the same fields and
normalisation) and :func:`memory_loader_factory` yields shuffled batches from it, with the
flips/rot90s applied to whole batches in torch.

Order and augmentation depend only on ``(seed, epoch)`` (numpy's ``default_rng``), so the
trainer's exact resume holds: epoch ``e`` yields the same batches whenever it is replayed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from hyperkd.defaults import MASKINGS

__all__ = ["MemoryTiles", "fits_in_memory", "memory_loader_factory", "tile_bytes"]

DEFAULT_BUDGET = 2 * 1024**3
"""Bytes a cache may take by default (decoded float32 student + teacher + maps)."""

_SPATIAL_SKIP = ("tile_id",)


def tile_bytes(
    info: Any, *, student_channels: int | None = None, fields: Sequence[str] | None = None
) -> int:
    """Decoded bytes of one cached tile: float32 student and teacher, maps, valid mask, labels.

    ``student_channels``: float32 channels kept for the student (default: its C bands; a
    fixed-basis student keeps k components and a residual). ``fields``: only the sample keys
    named (a task's ``batch_fields``; any ``student*`` key counts the student's channels once),
    or None for all.
    """
    t, g = info.tile_size, info.tile_size // info.patch_size
    student = 4 * (info.n_bands if student_channels is None else student_channels) * t * t
    sizes = {"teacher": 4 * 6 * t * t, "valid": t * t, "tile_id": 8}
    sizes |= {f"significance_{kind}": 4 * g * g for kind in MASKINGS if kind != "random"}
    sizes |= {f"label_{name}": 8 * t * t for name in info.labels}
    if fields is None:
        return student + sum(sizes.values())
    keeps_student = any(k.startswith("student") for k in fields)
    return student * keeps_student + sum(sizes.get(k, 0) for k in fields)


def fits_in_memory(
    dataset: Any,
    budget: int = DEFAULT_BUDGET,
    *,
    student_channels: int | None = None,
    fields: Sequence[str] | None = None,
) -> bool:
    """Whether ``dataset`` decoded whole (as :func:`tile_bytes` counts) stays under ``budget``."""
    size = tile_bytes(dataset.info, student_channels=student_channels, fields=fields)
    return len(dataset) * size <= budget


class MemoryTiles:
    """Every tile of a dataset, decoded once; ``tiles[key]`` is (N, ...) per field.

    Behaves like the dataset it copies for the trainer: ``info``, ``tile_ids``, ``len()``
    and ``ds[i]`` (one sample dict, not augmented).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 16,
        fields: Sequence[str] | None = None,
        transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        """``fields``: the sample keys to keep (None = all). A teacher run keeps ``teacher``
        and ``valid`` only, so its batches do not gather and rotate 218 student bands.
        ``transform``: maps each decoded batch to what is kept (a fixed-basis student's
        projection, :meth:`StudentMAE.project_bands`), so the full bands of the whole split
        never sit in RAM at once."""
        from hyperkd.model.data.loader import make_loader

        self.info = dataset.info
        self.tile_ids = np.asarray(dataset.tile_ids)
        if getattr(dataset, "augment", False):
            # Cache the tiles as stored: the batches draw their own flips/rot90s, and a random
            # one baked in per tile would make the cache depend on torch's RNG.
            dataset = copy.copy(dataset)
            dataset.augment = False
        chunks: dict[str, list[torch.Tensor]] = {}
        loader = make_loader(dataset, batch_size, shuffle=False, drop_last=False, num_workers=0)
        for batch in loader:
            if transform is not None:
                batch = transform(batch)
            for key, value in batch.items():
                if fields is None or key in fields:
                    chunks.setdefault(key, []).append(value.clone())
        if not chunks:
            raise ValueError("no tiles to cache")
        self.tiles = {key: torch.cat(parts) for key, parts in chunks.items()}

    @classmethod
    def from_tensors(
        cls, tiles: dict[str, torch.Tensor], info: Any = None, tile_ids: Sequence[int] | None = None
    ) -> MemoryTiles:
        """A cache over tensors already decoded, ``tiles[key]`` (N, ...) per field."""
        cache = cls.__new__(cls)
        n = len(next(iter(tiles.values())))
        if any(len(v) != n for v in tiles.values()):
            raise ValueError("every cached field needs the same number of tiles")
        cache.info, cache.tiles = info, dict(tiles)
        cache.tile_ids = np.arange(n) if tile_ids is None else np.asarray(tile_ids)
        return cache

    def __len__(self) -> int:
        return len(self.tile_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[i] for key, value in self.tiles.items()}

    def batch(
        self, positions: np.ndarray, choices: np.ndarray | None = None
    ) -> dict[str, torch.Tensor]:
        """The tiles at ``positions``, each flipped/rotated by its ``choices`` entry (0-7:
        ``k, flip = divmod(choice, 2)``, as :class:`TileDataset` draws them; None: none).

        Each sample is copied once, from a rotated/flipped numpy *view* of the cache (numpy
        views may have negative strides; torch's ``flip`` and ``rot90`` copy) straight into
        the batch, instead of a gather, a clone and per-choice copies.
        """
        index = np.asarray(positions, dtype=np.int64)
        if choices is None or not np.any(choices):
            return {key: value[torch.from_numpy(index)] for key, value in self.tiles.items()}
        out = {}
        for key, value in self.tiles.items():
            batch = value.new_empty((len(index), *value.shape[1:]))
            source, target = value.numpy(), batch.numpy()  # shared memory, no copies
            for slot, (i, choice) in enumerate(zip(index.tolist(), choices.tolist(), strict=True)):
                sample = source[i]
                if key not in _SPATIAL_SKIP and choice:
                    k, flip = divmod(int(choice), 2)
                    sample = np.rot90(sample, k, axes=(-2, -1))
                    sample = sample[..., ::-1] if flip else sample
                target[slot] = sample
            out[key] = batch
        return out


def memory_loader_factory(
    tiles: MemoryTiles,
    batch_size: int,
    *,
    seed: int,
    augment: bool,
    rank: int = 0,
    world_size: int = 1,
):  # type: ignore[no-untyped-def]
    """``epoch -> batches`` for :func:`hyperkd.model.train.trainer.fit`, from RAM.

    Each rank takes one contiguous run of ``len // world_size`` positions of the epoch's
    permutation (like :class:`~hyperkd.model.data.loader.TileSampler`), full batches only.
    """
    n = len(tiles)
    per_rank = n // world_size

    def factory(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([seed, epoch, 17])
        order = rng.permutation(n)[rank * per_rank : (rank + 1) * per_rank]
        choices = rng.integers(0, 8, size=n)[rank * per_rank : (rank + 1) * per_rank]
        for start in range(0, per_rank - batch_size + 1, batch_size):
            sl = slice(start, start + batch_size)
            yield tiles.batch(order[sl], choices[sl] if augment else None)

    return factory
