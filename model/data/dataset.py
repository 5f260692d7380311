"""Read the tile store (docs/tiles.md) as a PyTorch dataset; the sampler and the DataLoader
are in :mod:`hyperkd.model.data.loader`.

The hot path is plain zarr: one chunk read per array per tile, an int16 -> float32
normalisation in two numpy passes, no xarray. All chunk reads of a batch are in flight at once
on an event loop, and each tile is normalised by a decode thread as soon as it has arrived
(:mod:`hyperkd.model.data.reader`; decompression and numpy both release the GIL). Store
handles, loop and threads are opened lazily per process, so a dataset built in the trainer
forks into DataLoader workers safely.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hyperkd.model.data.buffers import BufferPool
from hyperkd.model.data.reader import TileReader
from hyperkd.pipeline.tiles import TileStoreInfo, as_str, open_store, read_info

__all__ = [
    "TileDataset",
    "TileStoreInfo",
    "collate_tiles",
    "default_workers",
    "denormalise_student",
    "read_info",
]


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


def _decode_threads(requested: int | None) -> int:
    """Decode threads: ``requested``, else the cores here, or 1 in a DataLoader worker."""
    if requested is not None:
        return requested
    return 1 if torch.utils.data.get_worker_info() is not None else default_workers()


def _empty_shared(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in shared memory, for a batch built in a DataLoader worker.

    Allocating the batch in shared memory up front (as torch's own collate does) saves the
    copy into shared memory that sending a batch to the trainer would otherwise cost.
    """
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
    every spatial field alike. ``read_threads`` threads read and decode the tiles of a batch
    together (default: the cores in the main process, 1 inside a DataLoader worker, where
    the workers already run side by side).

    ``raw=True`` leaves ``student`` and ``teacher`` as stored: int16 reflectance x 10000,
    nodata included, half the bytes of float32 to move to a GPU. :meth:`normalise_batch`
    then turns a batch into exactly what ``raw=False`` gives, on the batch's device.
    """

    def __init__(
        self,
        url: str,
        split: str | None = "train",
        bands: Sequence[int] | None = None,
        augment: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        read_threads: int | None = None,
        raw: bool = False,
    ) -> None:
        if read_threads is not None and read_threads < 1:
            raise ValueError(f"read_threads must be at least 1, got {read_threads}")
        self.url = url
        self.raw = raw
        self.read_threads = read_threads
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
        names = ["student", "teacher", "significance_gabor", "significance_wavelet", "valid"]
        names += [f"label_{k}" for k in self.info.labels]
        threads = partial(_decode_threads, read_threads)  # evaluated in the reading process
        self._reader = TileReader(url, names, self.storage_options, threads)
        self._buffers = BufferPool()
        self._plan: np.ndarray | None = None
        self._planned = 0
        self._device_affine: dict[tuple[str, str, str], torch.Tensor] = {}

    def as_raw(self) -> TileDataset:
        """The same tiles (split, bands, augmentation) in ``raw`` mode."""
        return TileDataset(
            self.url, self.split, None if self.bands is None else self.bands.tolist(),
            self.augment, self.storage_options, self.read_threads, raw=True,
        )  # fmt: skip

    def normalise_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A collated ``raw`` batch -> the fields ``raw=False`` gives, computed where the batch
        is (a GPU): float32 ``(B, C, T, T)`` student and ``(B, 6, T, T)`` teacher, normalised,
        0 where ``valid`` is False. Other fields pass through; without ``raw``, the batch does.
        """
        if not self.raw:
            return batch
        out = dict(batch)
        invalid = ~batch["valid"][:, None]  # (B, 1, T, T)
        for key in ("student", "teacher"):
            x = batch[key]
            scale, shift = (self._affine_on(key, part, x.device) for part in ("scale", "shift"))
            # x * scale + shift in float32, as _normalise does on the CPU
            out[key] = (x.float() * scale + shift).masked_fill_(invalid, 0.0)
        return out

    def _affine_on(self, key: str, part: str, device: torch.device) -> torch.Tensor:
        """The (C, 1, 1) scale or shift of ``key`` on ``device``, cached."""
        slot = (key, part, str(device))
        if slot not in self._device_affine:
            pair = self._student if key == "student" else self._teacher
            self._device_affine[slot] = torch.from_numpy(pair[part == "shift"]).to(device)
        return self._device_affine[slot]

    def __len__(self) -> int:
        return len(self.tile_ids)

    async def aread_raw(self, i: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The stored arrays ``names`` (default: all) of sample ``i``, undecoded (int16
        student/teacher): plain integer reads, one chunk per array, all in flight at once."""
        return await self._reader.read(int(self.tile_ids[i]), names)

    def read_raw(self, i: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """:meth:`aread_raw`, from synchronous code."""
        return self._reader.run(self.aread_raw(i, names))

    def plan_reads(self, order: Sequence[int] | None) -> None:
        """The positions the coming ``__getitems__`` calls will ask for, in order (or None).

        While the calls follow the plan, each one also starts reading the batch after it, so
        that batch's reads overlap this one's decoding and whatever the caller does with it.
        A call off the plan drops the plan. Only used outside DataLoader workers (which
        prefetch on their own); :func:`hyperkd.model.data.loader.make_loader` sets it each epoch
        when it has no workers.
        """
        self._plan = None if order is None else np.asarray(order, dtype=np.int64)
        self._planned = 0

    def _next_planned(self, positions: list[int]) -> list[int]:
        """The batch the plan puts after ``positions`` ([] at its end or off the plan)."""
        plan, start, n = self._plan, self._planned, len(positions)
        if plan is None or plan[start : start + n].tolist() != positions:
            self._plan = None
            return []
        self._planned = start + n
        return plan[start + n : start + 2 * n].tolist()

    def _layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Per-sample shape and dtype of every field of ``ds[i]`` except ``tile_id``."""
        T, G = self.info.tile_size, self.info.tile_size // self.info.patch_size
        c = self.info.n_bands if self.bands is None else len(self.bands)
        image = torch.int16 if self.raw else torch.float32
        fields = {
            "student": ((c, T, T), image),
            "teacher": ((len(self.info.teacher_bands), T, T), image),
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
        if self.raw:  # normalised later, on the device (normalise_batch)
            out["student"][...] = student
            out["teacher"][...] = raw["teacher"]
        else:
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

    @staticmethod
    def _draw_augmentation() -> int:
        """One of the 8 flips/rotations, from torch's RNG (0 = identity)."""
        return int(torch.randint(0, 8, ()).item())

    def _augment(self, fields: dict[str, np.ndarray], choice: int) -> dict[str, np.ndarray]:
        """Flip/rot90 ``choice`` (see :meth:`_draw_augmentation`) of every spatial field."""
        k, flip = divmod(choice, 2)
        out = {}
        for key, value in fields.items():
            value = np.rot90(value, k, axes=(-2, -1))
            out[key] = np.ascontiguousarray(value[..., ::-1] if flip else value)
        return out

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = self._check(i)
        fields = {
            k: np.empty(shape, dtype=torch.empty((), dtype=dtype).numpy().dtype)
            for k, (shape, dtype) in self._layout().items()
        }
        self._decode(self.read_raw(i), fields)
        if self.augment:
            fields = self._augment(fields, self._draw_augmentation())
        out = {key: torch.from_numpy(value) for key, value in fields.items()}
        out["tile_id"] = torch.tensor(int(self.tile_ids[i]), dtype=torch.int64)
        return out

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """A batch of samples decoded straight into one collated buffer per field.

        Every tile's chunk reads are in flight at once, and each tile is decoded into its
        slot on a decode thread as it arrives; augmentations are drawn here, in order, so
        they do not depend on read order or thread timing. Returns the samples as views of
        the batch; :func:`collate_tiles` hands the batch on without copying (torch's default
        collate also works, with one copy). Outside workers, batch memory comes from a pool
        that takes it back once the trainer has dropped the batch.
        """
        in_worker = torch.utils.data.get_worker_info() is not None
        empty = _empty_shared if in_worker else self._buffers.empty
        n = len(indices)
        batch = {k: empty((n, *shape), dtype) for k, (shape, dtype) in self._layout().items()}
        views = {k: v.numpy() for k, v in batch.items()}
        positions = [self._check(int(i)) for i in indices]
        choices = [self._draw_augmentation() if self.augment else 0 for _ in positions]

        def fill(slot: int, tile: dict[str, np.ndarray]) -> None:
            out = {k: v[slot] for k, v in views.items()}
            if choices[slot]:
                fields = {k: np.empty_like(v) for k, v in out.items()}
                self._decode(tile, fields)
                for k, v in self._augment(fields, choices[slot]).items():
                    out[k][...] = v
            else:
                self._decode(tile, out)

        then = [] if in_worker else self._next_planned(positions)
        self._reader.read_batch(self.aread_raw, positions, fill, then)  # re-raises a failed read
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


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
