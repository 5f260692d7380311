"""Labelled pixels of a tile store split, and per-pixel features gathered at them.

Downstream methods are all scored on the same pixels: :func:`split_sample` picks them once per
split (valid, labelled, optionally of chosen classes of another label, capped per tile), then
:func:`gather` evaluates any per-pixel feature function there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from hyperkd.model.data.dataset import TileDataset, collate_tiles
from hyperkd.model.evaluate import probes


def usable(fields: Mapping[str, Any], only: tuple[str, tuple[int, ...]] | None) -> Any:
    """(..., T, T) bool: pixels that are valid and, with ``only``, of the chosen classes."""
    valid = fields["valid"]
    if only is None:
        return valid
    codes = fields[f"label_{only[0]}"]
    if isinstance(codes, torch.Tensor):
        return valid & torch.isin(codes, torch.as_tensor(only[1], dtype=codes.dtype))
    return np.asarray(valid, dtype=bool) & np.isin(np.asarray(codes), only[1])


def split_sample(
    ds: TileDataset,
    label: str,
    classes: bool,
    max_pixels: int,
    seed: int,
    only: tuple[str, tuple[int, ...]] | None,
) -> probes.PixelSample:
    """The split's labelled pixels (see :func:`hyperkd.model.evaluate.probes.sample_pixels`)."""
    labels, valids = [], []
    names = {"valid", f"label_{label}"} | ({f"label_{only[0]}"} if only else set())
    for i in range(len(ds)):
        raw = ds.read_raw(i, sorted(names))  # not the student and teacher bands
        labels.append(np.asarray(raw[f"label_{label}"]))
        valids.append(usable(raw, only))
    return probes.sample_pixels(labels, valids, classes=classes, max_pixels=max_pixels, seed=seed)


def _batches(
    ds: TileDataset, positions: np.ndarray, batch: int
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(tile positions, stacked normalised student tiles (B, C, T, T))."""
    for start in range(0, len(positions), batch):
        chunk = positions[start : start + batch]
        yield chunk, collate_tiles(ds.__getitems__(chunk.tolist()))["student"]


FeatureFn = Callable[[torch.Tensor], torch.Tensor]
"""(B, C, T, T) normalised tiles -> (B, F, T, T) per-pixel features (or outputs)."""


@torch.no_grad()
def gather(
    ds: TileDataset, sample: probes.PixelSample, fn: FeatureFn, batch: int, device: torch.device
) -> np.ndarray:
    """``fn``'s per-pixel outputs at the sampled pixels: (N, F) float32, in sample order."""
    out: np.ndarray | None = None
    for chunk, imgs in _batches(ds, np.unique(sample.tiles), batch):
        maps = fn(imgs.to(device)).float().cpu()  # (B, F, T, T)
        flat = maps.flatten(2).numpy()  # (B, F, T*T)
        for j, tile in enumerate(chunk):
            rows = np.flatnonzero(sample.tiles == tile)
            if out is None:
                out = np.empty((len(sample), flat.shape[1]), np.float32)
            out[rows] = flat[j][:, sample.pixels[rows]].T
    return out if out is not None else np.zeros((0, 0), np.float32)
