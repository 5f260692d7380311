"""Feed a :class:`~hyperkd.model.data.dataset.TileDataset` to the trainer: a shard-local, DDP-aware
sampler and a DataLoader with defaults that work out of the box (docs/tiles.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from hyperkd.model.data.dataset import TileDataset, collate_tiles, default_workers

__all__ = ["TileSampler", "make_loader", "make_sampler", "to_device"]


class TileSampler(Sampler[int]):
    """Epoch order over a :class:`TileDataset`, shard-local and split across DDP ranks.

    Shuffling keeps locality when the store is sharded: the order of shards is shuffled,
    then the tiles inside each shard, so a worker reads a shard's tiles together. Each rank
    takes one contiguous run of ``len(dataset) // world_size`` positions of the epoch order,
    so ranks never overlap and all ranks run the same number of steps (DDP needs that). The
    ``len(dataset) % world_size`` positions at the end of the order are skipped that epoch;
    with ``shuffle=True`` those are different tiles each epoch. With one rank nothing is
    skipped. Call ``set_epoch(e)`` before each epoch; the order depends on ``(seed, e)``.
    """

    def __init__(
        self,
        dataset: TileDataset | int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shard_tiles: int | None = None,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if isinstance(dataset, TileDataset):
            self._tile_ids = dataset.tile_ids
            shard_tiles = shard_tiles if shard_tiles is not None else dataset.info.shard_tiles
        else:
            self._tile_ids = np.arange(int(dataset), dtype=np.int64)
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.shard_tiles = shard_tiles
        self.epoch = 0
        self.on_epoch: Callable[[np.ndarray], None] | None = None
        """Called with this rank's order each time an epoch's iteration starts."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._tile_ids) // self.world_size

    def epoch_order(self) -> np.ndarray:
        """All dataset positions in this epoch's order (every rank computes the same)."""
        n = len(self._tile_ids)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch])
        if not self.shard_tiles:
            return rng.permutation(n).astype(np.int64)
        shard_of = self._tile_ids // self.shard_tiles
        groups = [np.flatnonzero(shard_of == s) for s in np.unique(shard_of)]
        return np.concatenate(
            [rng.permutation(groups[g]) for g in rng.permutation(len(groups))]
        ).astype(np.int64)

    def __iter__(self):  # type: ignore[no-untyped-def]
        size = len(self)
        mine = self.epoch_order()[self.rank * size : (self.rank + 1) * size]
        if self.on_epoch is not None:
            self.on_epoch(mine)
        return iter(mine.tolist())


def make_sampler(
    dataset: TileDataset, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1
) -> TileSampler:
    """The :class:`TileSampler` for ``dataset`` (shard size read from the store)."""
    return TileSampler(dataset, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)


def _worker_init(worker_id: int) -> None:
    # Decoding and normalising run one tile per worker; extra intra-op threads would only
    # fight the other workers for cores.
    torch.set_num_threads(1)


def make_loader(
    dataset: TileDataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int | None = None,
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
    prefetch_factor: int = 4,
    timeout: float = 300.0,
) -> DataLoader:
    """A DataLoader that works out of the box for the tile store.

    Workers default to the number of cores, stay alive across epochs and prefetch
    ``prefetch_factor`` batches each; memory is pinned when CUDA is present. A worker that
    raises re-raises in the trainer; one that stalls for ``timeout`` seconds raises instead
    of hanging the run. With ``num_workers=0`` the dataset itself reads the next batch while
    the trainer uses the current one (:meth:`TileDataset.plan_reads`). Call
    ``loader.sampler.set_epoch(e)`` every epoch.
    """
    workers = default_workers() if num_workers is None else int(num_workers)
    sampler = TileSampler(dataset, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
    if workers == 0:
        # No worker prefetches, so the dataset reads one batch ahead itself (plan_reads).
        sampler.on_epoch = dataset.plan_reads
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        timeout=timeout if workers > 0 else 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        collate_fn=collate_tiles,
    )


Batch = dict[str, torch.Tensor]


def to_device(
    batches: Iterable[Batch],
    device: torch.device,
    transform: Callable[[Batch], Batch] | None = None,
) -> Iterator[Batch]:
    """The tensors of each batch on ``device``, then ``transform``-ed there (e.g.
    :meth:`TileDataset.normalise_batch`); non-tensor fields are dropped.

    On CUDA, batch ``n + 1`` is copied (and transformed) on a side stream while the caller
    computes on batch ``n``: a copy issued on the compute stream would wait for the step
    before it and stall the step after it. Host memory should be pinned (``make_loader`` pins
    on CUDA) for the copy to run asynchronously.
    """
    if device.type != "cuda":
        for batch in batches:
            moved = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
            yield transform(moved) if transform else moved
        return
    stream = torch.cuda.Stream(device)

    def issue(batch: Batch) -> tuple[Batch, torch.cuda.Event]:
        with torch.cuda.stream(stream):
            moved = {
                k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)
            }
            moved = transform(moved) if transform else moved
            done = torch.cuda.Event()
            done.record(stream)
        return moved, done

    pending: tuple[Batch, torch.cuda.Event] | None = None
    for batch in batches:
        ready, pending = pending, issue(batch)
        if ready is not None:
            yield _handed_over(*ready, device)
    if pending is not None:
        yield _handed_over(*pending, device)


def _handed_over(batch: Batch, done: torch.cuda.Event, device: torch.device) -> Batch:
    """Make the compute stream wait for this batch's copies only (``done``), and tell the
    caching allocator that its memory is now used on the compute stream."""
    current = torch.cuda.current_stream(device)
    current.wait_event(done)
    for value in batch.values():
        value.record_stream(current)
    return batch
