"""Stream the tile store (docs/tiles.md) into PyTorch: dataset, DDP-aware sampler, loader.

The hot path is plain zarr: one chunk read per array per tile, an int16 -> float32
normalisation in two numpy passes, no xarray. Store handles are opened lazily per process,
so a dataset built in the trainer forks into DataLoader workers safely.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hyperkd.pipeline.tile_verify import as_str, open_store

__all__ = [
    "TileDataset",
    "TileSampler",
    "TileStoreInfo",
    "collate_tiles",
    "denormalise_student",
    "make_loader",
    "make_sampler",
    "read_info",
]

_INFO_ATTRS = (
    "hyperkd:tiles_version",
    "tile_size",
    "patch_size",
    "student_mean",
    "student_std",
    "params_hash",
)


@dataclass(frozen=True)
class TileStoreInfo:
    """What a trainer needs to know about a tile store, from its root attributes."""

    n_tiles: int
    n_bands: int
    """C, the student bands in the store."""
    tile_size: int
    """T, pixels."""
    patch_size: int
    """P, pixels; significance maps are ``(T/P, T/P)``."""
    student_mean: tuple[float, ...]
    """Per band, reflectance x 10000, over the train tiles' valid pixels."""
    student_std: tuple[float, ...]
    band_wavelength: tuple[float, ...]
    """Centre wavelength per student band, nm."""
    teacher_bands: tuple[str, ...]
    teacher_mean: tuple[float, ...]
    """Prithvi constants, reflectance x 10000."""
    teacher_std: tuple[float, ...]
    labels: dict[str, dict[str, Any]]
    """Label name -> record (``dtype``, ``kind``, ``classes``...)."""
    splits: dict[str, int]
    """Split name -> tile count."""
    shard_tiles: int | None = None
    """Tiles per Zarr shard of ``student`` (``None`` when unsharded)."""


def read_info(url: str, storage_options: Mapping[str, Any] | None = None) -> TileStoreInfo:
    """The :class:`TileStoreInfo` of the store at ``url`` (local path or fsspec URL).

    Raises ``ValueError`` when the store is incomplete (a build that did not finish never
    gets its root attributes).
    """
    try:
        root = open_store(url, storage_options)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no tile store at {url}") from exc
    attrs = dict(root.attrs)
    missing = [k for k in _INFO_ATTRS if k not in attrs]
    if missing or "student" not in root:
        raise ValueError(
            f"{url} is not a complete tile store (missing {', '.join(missing) or 'student'})"
        )
    student = root["student"]
    shards = getattr(student, "shards", None)
    return TileStoreInfo(
        n_tiles=int(student.shape[0]),
        n_bands=int(student.shape[1]),
        tile_size=int(attrs["tile_size"]),
        patch_size=int(attrs["patch_size"]),
        student_mean=tuple(float(v) for v in attrs["student_mean"]),
        student_std=tuple(float(v) for v in attrs["student_std"]),
        band_wavelength=tuple(float(v) for v in attrs.get("band_wavelength", ())),
        teacher_bands=tuple(attrs.get("teacher_bands", ())),
        teacher_mean=tuple(float(v) for v in attrs["teacher_mean"]),
        teacher_std=tuple(float(v) for v in attrs["teacher_std"]),
        labels={k: dict(v) for k, v in attrs.get("labels", {}).items()},
        splits={k: int(v) for k, v in attrs.get("splits", {}).items()},
        shard_tiles=int(shards[0]) if shards else None,
    )


def _affine(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(x - mean) / std`` as ``x * scale + shift``, float32 ``(C, 1, 1)`` each."""
    m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return (1.0 / s).astype(np.float32)[:, None, None], (-m / s).astype(np.float32)[:, None, None]


def _normalise(
    raw: np.ndarray, scale: np.ndarray, shift: np.ndarray, valid: np.ndarray, out: np.ndarray
) -> None:
    """int16 ``(C, T, T)`` -> float32 ``out``, normalised, 0 where the pixel is not valid.

    Two passes over the tile (cast-and-scale, shift) and no temporary: the writes land
    straight in the batch buffer.
    """
    np.multiply(raw, scale, out=out, dtype=np.float32)
    out += shift
    if not valid.all():
        np.copyto(out, np.float32(0), where=~valid)


def _empty(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor; in shared memory inside a DataLoader worker.

    Allocating the batch in shared memory up front (as torch's own collate does) saves the
    copy into shared memory that sending a batch to the trainer would otherwise cost.
    """
    if not shared:
        return torch.from_numpy(np.empty(shape, dtype=torch.empty((), dtype=dtype).numpy().dtype))
    numel = int(np.prod(shape))
    template = torch.empty(0, dtype=dtype)
    storage = template._typed_storage()._new_shared(numel, device="cpu")
    return template.new(storage).view(shape)


class _Batch(list):
    """Samples that are views into one already-collated batch (``.batch``)."""

    batch: dict[str, torch.Tensor]


def collate_tiles(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Collate for :class:`TileDataset`: a batch read by ``__getitems__`` is passed through
    without a copy; anything else goes to torch's default collate."""
    if isinstance(samples, _Batch):
        return samples.batch
    return torch.utils.data.default_collate(samples)


class TileDataset(Dataset):
    """The tiles of one split (or all) of a tile store, as dicts of tensors.

    ``ds[i]`` holds ``student`` float32 ``(C, T, T)`` normalised with the store's statistics,
    ``teacher`` float32 ``(6, T, T)`` normalised with the Prithvi constants (both 0 where
    ``valid`` is False, nodata included), ``significance_gabor``/``significance_wavelet``
    float32 ``(T/P, T/P)``, ``valid`` bool ``(T, T)``, ``label_<name>`` ``(T, T)`` (int64
    classes, 0 = unlabeled; float32 continuous, NaN = no value) and ``tile_id`` int64.

    ``split=None`` takes every tile; ``bands`` picks student bands by index into the C
    bands; ``augment`` applies one random flip/rot90 (torch's RNG, seeded per worker) to
    every spatial field alike.
    """

    def __init__(
        self,
        url: str,
        split: str | None = "train",
        bands: Sequence[int] | None = None,
        augment: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.split = split
        self.augment = augment
        self.storage_options = dict(storage_options) if storage_options else None
        self.info = read_info(url, storage_options)
        root = open_store(url, storage_options)
        if split is None:
            self.tile_ids = np.arange(self.info.n_tiles, dtype=np.int64)
        else:
            if split not in self.info.splits:
                raise ValueError(
                    f"unknown split {split!r}: the store has {sorted(self.info.splits)}"
                )
            self.tile_ids = np.flatnonzero(as_str(root["index/split"][:]) == split).astype(np.int64)
        del root  # nothing opened here may reach a forked worker
        c = self.info.n_bands
        self.bands = None if bands is None else np.asarray(bands, dtype=np.int64)
        if self.bands is not None and (
            self.bands.size == 0 or self.bands.min() < 0 or self.bands.max() >= c
        ):
            raise ValueError(f"band indices must lie in 0..{c - 1}, got {list(self.bands)}")
        keep = self.bands if self.bands is not None else slice(None)
        mean, std = (
            np.asarray(self.info.student_mean)[keep],
            np.asarray(self.info.student_std)[keep],
        )
        self._student = _affine(mean, std)
        self._teacher = _affine(self.info.teacher_mean, self.info.teacher_std)
        self._label_kind = {k: v.get("kind", "classes") for k, v in self.info.labels.items()}
        self._arrays: dict[str, Any] | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.tile_ids)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"], state["_pid"] = None, None
        return state

    def _open(self) -> dict[str, Any]:
        """Array handles for this process (reopened after a fork)."""
        if self._arrays is None or self._pid != os.getpid():
            root = open_store(self.url, self.storage_options)
            names = ["student", "teacher", "significance_gabor", "significance_wavelet", "valid"]
            names += [f"label_{k}" for k in self.info.labels]
            self._arrays = {name: root[name] for name in names}
            self._pid = os.getpid()
        return self._arrays

    def read_raw(self, i: int) -> dict[str, np.ndarray]:
        """The stored arrays of sample ``i``, undecoded (int16 student/teacher).

        Plain integer reads, one chunk per array. (Batched orthogonal or concurrent async
        reads were tried and were slower on a busy 2-core machine: benchmarks/RESULTS.md.)
        """
        j = int(self.tile_ids[i])
        return {name: arr[j] for name, arr in self._open().items()}

    def _layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Per-sample shape and dtype of every field of ``ds[i]`` except ``tile_id``."""
        T, G = self.info.tile_size, self.info.tile_size // self.info.patch_size
        c = self.info.n_bands if self.bands is None else len(self.bands)
        fields = {
            "student": ((c, T, T), torch.float32),
            "teacher": ((6, T, T), torch.float32),
            "significance_gabor": ((G, G), torch.float32),
            "significance_wavelet": ((G, G), torch.float32),
            "valid": ((T, T), torch.bool),
        }
        for name, kind in self._label_kind.items():
            fields[f"label_{name}"] = ((T, T), torch.int64 if kind == "classes" else torch.float32)
        return fields

    def _decode(self, raw: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> None:
        """Stored arrays of one tile -> the sample's fields, written into ``out``."""
        valid = raw["valid"]
        student = raw["student"] if self.bands is None else raw["student"][self.bands]
        _normalise(student, *self._student, valid, out["student"])
        _normalise(raw["teacher"], *self._teacher, valid, out["teacher"])
        for key in ("significance_gabor", "significance_wavelet", "valid"):
            out[key][...] = raw[key]
        for name in self._label_kind:
            out[f"label_{name}"][...] = raw[f"label_{name}"]

    def _check(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"tile index {i} out of range for {len(self)} tiles")
        return i % len(self)

    def _augment(self, fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One random flip/rot90 (torch's RNG), the same for every spatial field."""
        k, flip = divmod(int(torch.randint(0, 8, ()).item()), 2)
        out = {}
        for key, value in fields.items():
            value = np.rot90(value, k, axes=(-2, -1))
            out[key] = np.ascontiguousarray(value[..., ::-1] if flip else value)
        return out

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = self._check(i)
        fields = {
            k: _empty(shape, dtype, False).numpy() for k, (shape, dtype) in self._layout().items()
        }
        self._decode(self.read_raw(i), fields)
        if self.augment:
            fields = self._augment(fields)
        out = {key: torch.from_numpy(value) for key, value in fields.items()}
        out["tile_id"] = torch.tensor(int(self.tile_ids[i]), dtype=torch.int64)
        return out

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """A batch of samples decoded straight into one collated buffer per field.

        Returns the samples as views of the batch; :func:`collate_tiles` hands the batch on
        without copying (torch's default collate also works, with one copy).
        """
        shared = torch.utils.data.get_worker_info() is not None
        n = len(indices)
        batch = {
            k: _empty((n, *shape), dtype, shared) for k, (shape, dtype) in self._layout().items()
        }
        views = {k: v.numpy() for k, v in batch.items()}
        positions = [self._check(int(i)) for i in indices]
        for slot, i in enumerate(positions):
            tile = self.read_raw(i)
            out = {k: v[slot] for k, v in views.items()}
            if self.augment:
                fields = {k: np.empty_like(v) for k, v in out.items()}
                self._decode(tile, fields)
                for k, v in self._augment(fields).items():
                    out[k][...] = v
            else:
                self._decode(tile, out)
        ids = self.tile_ids[np.asarray(positions, dtype=np.int64)]
        batch["tile_id"] = torch.from_numpy(ids.astype(np.int64))
        samples = _Batch({k: v[slot] for k, v in batch.items()} for slot in range(n))
        samples.batch = batch
        return samples


def denormalise_student(
    x: torch.Tensor, info: TileStoreInfo, bands: Sequence[int] | None = None
) -> torch.Tensor:
    """Normalised student ``(..., C, T, T)`` back to reflectance x 10000 (float32)."""
    keep = list(bands) if bands is not None else slice(None)
    mean = torch.as_tensor(
        np.asarray(info.student_mean)[keep], dtype=torch.float32, device=x.device
    )
    std = torch.as_tensor(np.asarray(info.student_std)[keep], dtype=torch.float32, device=x.device)
    return x * std[:, None, None] + mean[:, None, None]


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


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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
    of hanging the run. Call ``loader.sampler.set_epoch(e)`` every epoch.
    """
    workers = default_workers() if num_workers is None else int(num_workers)
    sampler = TileSampler(dataset, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
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
