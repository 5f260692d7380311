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

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
"""(B, C, T, T) normalised tiles -> (B, F, T, T) per-pixel features (or outputs)."""


def usable(fields: Mapping[str, Any], only: tuple[str, tuple[int, ...]] | None) -> Any:
    """(..., T, T) bool: pixels that are valid and, with ``only``, of the chosen classes."""
    valid = fields["valid"]
    if only is None:
        return valid
    codes = fields[f"label_{only[0]}"]
    if isinstance(codes, torch.Tensor):
        return valid & torch.isin(codes, torch.as_tensor(only[1], dtype=codes.dtype))
    return np.asarray(valid, dtype=bool) & np.isin(np.asarray(codes), only[1])


def patch_labels(label: Any, use: Any, patch: int, classes: bool) -> Any:
    """Each pixel's label replaced by its patch's: the majority class (ties: the smaller code)
    or the mean value over the patch's usable labelled pixels; 0 (classes) or NaN where a
    patch has none. ``label``/``use``: (..., T, T) numpy or torch; returns the same type."""
    tensor = isinstance(label, torch.Tensor)
    lab = label.numpy() if tensor else np.asarray(label)
    ok = probes.labelled(lab, np.asarray(use), classes)
    *lead, t, _ = lab.shape
    g = t // patch
    blocks = lambda a: a.reshape(*lead, g, patch, g, patch).swapaxes(-3, -2)  # noqa: E731
    lab_b, ok_b = blocks(lab), blocks(ok)  # (..., g, g, P, P)
    if classes:
        codes = np.unique(lab[ok])
        per_patch = np.zeros(ok_b.shape[:-2], lab.dtype)  # (..., g, g): 0 = no label
        if len(codes):
            counts = np.stack([((lab_b == c) & ok_b).sum(axis=(-2, -1)) for c in codes], -1)
            per_patch = np.where(counts.sum(-1) > 0, codes[counts.argmax(-1)], 0).astype(lab.dtype)
    else:
        n = ok_b.sum(axis=(-2, -1))
        total = np.where(ok_b, lab_b, 0).sum(axis=(-2, -1))
        per_patch = np.where(n > 0, total / np.maximum(n, 1), np.nan).astype(lab.dtype)
    out = per_patch.repeat(patch, axis=-2).repeat(patch, axis=-1)  # (..., T, T)
    return torch.from_numpy(np.ascontiguousarray(out)) if tensor else out


def split_sample(
    ds: TileDataset,
    label: str,
    classes: bool,
    max_pixels: int,
    seed: int,
    only: tuple[str, tuple[int, ...]] | None,
    patch: int | None = None,
) -> probes.PixelSample:
    """The split's labelled pixels (see :func:`hyperkd.model.evaluate.probes.sample_pixels`),
    with ``patch``: labelled with their patch's majority class or mean (:func:`patch_labels`)."""
    labels, valids = [], []
    names = {"valid", f"label_{label}"} | ({f"label_{only[0]}"} if only else set())
    for i in range(len(ds)):
        raw = ds.read_raw(i, sorted(names))  # not the student and teacher bands
        lab, use = np.asarray(raw[f"label_{label}"]), usable(raw, only)
        labels.append(lab if patch is None else patch_labels(lab, use, patch, classes))
        valids.append(use)
    return probes.sample_pixels(labels, valids, classes=classes, max_pixels=max_pixels, seed=seed)


def patch_mean_spectra(imgs: torch.Tensor, patch: int) -> torch.Tensor:
    """Raw spectra at the encoder's resolution: (B, C, T, T) -> each patch's mean spectrum,
    resampled bilinearly to pixels like the encoder's tokens, (B, C, T, T)."""
    means = torch.nn.functional.avg_pool2d(imgs, patch)  # (B, C, T/P, T/P)
    return torch.nn.functional.interpolate(
        means, size=imgs.shape[-2:], mode="bilinear", align_corners=False
    )


WITHOUT_ENCODER = ("raw-spectra", "patch-mean-spectra")
"""Downstream methods whose features are spectra, not an encoder's."""


def features_without_encoder(name: str, patch: int) -> FeatureFn:
    """``raw-spectra``: the pixel's normalised spectrum; ``patch-mean-spectra``: its patch's
    mean spectrum (:func:`patch_mean_spectra`)."""
    if name == "raw-spectra":
        return lambda x: x
    if name == "patch-mean-spectra":
        return lambda x: patch_mean_spectra(x, patch)
    raise ValueError(f"no features for method {name!r}")


def _batches(
    ds: TileDataset, positions: np.ndarray, batch: int
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(tile positions, stacked normalised student tiles (B, C, T, T))."""
    for start in range(0, len(positions), batch):
        chunk = positions[start : start + batch]
        yield chunk, collate_tiles(ds.__getitems__(chunk.tolist()))["student"]


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
