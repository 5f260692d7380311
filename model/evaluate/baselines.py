"""Predictors that learn nothing, scored on the same tiles and masks as a model.

Every model number in ``hyperkd evaluate`` sits beside these three (all work on the normalised
tile, (B, C, H, W), and predict every pixel of every patch):

- ``train_mean``: every pixel is the train split's per-band mean (``band_mean``, normalised
  units; for the student it is 0, since the store normalises with its train statistics).
- ``visible_mean``: every pixel is the tile's mean spectrum over the valid pixels of its
  visible patches.
- ``interpolation``: every masked patch is the inverse-distance-squared mix of the mean
  spectra of the tile's visible patches (distance between patch centres, in patches); a
  visible patch predicts its own mean spectrum.

Tiles without a valid visible pixel fall back to ``train_mean``. The split statistics the
metrics need (per-band mean, minimum and maximum over the valid pixels of the train split)
come from :func:`split_band_stats`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

BASELINES = ("train_mean", "visible_mean", "interpolation")
"""The predictors that learn nothing, weakest first: the order of every table that lists them."""


def in_table_order(baselines: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``baselines`` (name -> metrics, e.g. read back from a ``metrics.json`` whose keys are
    sorted) as ``(name, metrics)`` pairs in :data:`BASELINES` order, unknown names last."""
    rank = {name: i for i, name in enumerate(BASELINES)}
    return sorted(baselines.items(), key=lambda item: rank.get(item[0], len(rank)))


@dataclass(frozen=True)
class BandStats:
    """Per-band statistics of one split, in the normalised units the model sees, (C,) each."""

    mean: torch.Tensor
    minimum: torch.Tensor
    maximum: torch.Tensor
    n_tiles: int


def split_band_stats(
    batches: Iterable[dict[str, torch.Tensor]],
    keys: tuple[str, ...] = ("student",),
    max_tiles: int | None = None,
) -> dict[str, BandStats]:
    """Mean, minimum and maximum per band of each ``batch[key]`` (B, C, H, W) over valid pixels.

    ``max_tiles`` stops after that many tiles (the loader's order), to bound the cost on
    large stores; :attr:`BandStats.n_tiles` records how many tiles the statistics saw.
    """
    acc: dict[str, list[torch.Tensor]] = {}
    n = 0
    for batch in batches:
        valid = batch.get("valid")
        for key in keys:
            part = _band_sums(batch[key], valid)
            a = acc.get(key)
            acc[key] = part if a is None else [
                a[0] + part[0], a[1] + part[1], a[2].minimum(part[2]), a[3].maximum(part[3]),
            ]  # fmt: skip
        n += int(batch[keys[0]].shape[0])
        if max_tiles is not None and n >= max_tiles:
            break
    out = {}
    for key in keys:
        if key not in acc or float(acc[key][1][0]) == 0:
            raise ValueError("no valid pixel to compute split statistics from")
        total, count, lo, hi = acc[key]
        out[key] = BandStats((total / count).float(), lo.float(), hi.float(), n)
    return out


def _band_sums(x: torch.Tensor, valid: torch.Tensor | None) -> list[torch.Tensor]:
    """Per band of ``x`` (B, C, H, W) over the pixels ``valid`` (B, H, W) marks (all: None):
    the sum (float64), the pixel count, the minimum and the maximum, (C,) each.

    Sums accumulate in float64 without a float64 copy of the batch, and min and max stay in
    the input's dtype (they are exact there); a batch with every pixel valid skips the masking.
    """
    dims = (0, 2, 3)
    if valid is None or bool(valid.all()):
        pixels = float(x.shape[0] * x.shape[2] * x.shape[3])
        count = torch.full((x.shape[1],), pixels, dtype=torch.float64, device=x.device)
        return [
            x.sum(dim=dims, dtype=torch.float64), count,
            x.amin(dim=dims).double(), x.amax(dim=dims).double(),
        ]  # fmt: skip
    keep = valid[:, None]  # (B, 1, H, W)
    count = keep.sum(dtype=torch.float64)
    return [
        torch.where(keep, x, 0).sum(dim=dims, dtype=torch.float64), count.expand(x.shape[1]),
        torch.where(keep, x, torch.inf).amin(dim=dims).double(),
        torch.where(keep, x, -torch.inf).amax(dim=dims).double(),
    ]  # fmt: skip


def patch_means(
    imgs: torch.Tensor, valid: torch.Tensor | None, patch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean spectrum and valid-pixel count of every patch.

    Args:
        imgs: (B, C, H, W); valid: (B, H, W) bool or None.

    Returns:
        means (B, C, h, w) (0 where a patch has no valid pixel) and counts (B, h, w).
    """
    b, c, hp, wq = imgs.shape
    h, w = hp // patch, wq // patch
    x = imgs.float().reshape(b, c, h, patch, w, patch)  # (B, C, h, p, w, q)
    if valid is None:
        wgt = torch.ones(b, 1, h, patch, w, patch, device=imgs.device)
    else:
        wgt = valid.float().reshape(b, 1, h, patch, w, patch)  # (B, 1, h, p, w, q)
    counts = wgt.sum(dim=(3, 5))  # (B, 1, h, w)
    means = (x * wgt).sum(dim=(3, 5)) / counts.clamp_min(1)  # (B, C, h, w)
    return means, counts[:, 0]


def _to_pixels(per_patch: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, h, w) patch values -> (B, C, h*P, w*P), constant inside each patch."""
    return per_patch.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


def train_mean(imgs: torch.Tensor, band_mean: torch.Tensor) -> torch.Tensor:
    """Every pixel = the train split's per-band mean (C,), as (B, C, H, W)."""
    return band_mean.to(imgs.device, torch.float32).view(1, -1, 1, 1).expand_as(imgs).clone()


def visible_mean(
    imgs: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor | None,
    patch: int,
    band_mean: torch.Tensor,
) -> torch.Tensor:
    """Every pixel = the tile's mean spectrum over its visible patches' valid pixels.

    ``mask``: (B, L) with 1 on masked patches, grid order. Returns (B, C, H, W).
    """
    means, counts = patch_means(imgs, valid, patch)  # (B, C, h, w), (B, h, w)
    seen = (1 - mask.float()).view_as(counts) * counts  # (B, h, w) visible valid pixels
    total = seen.sum(dim=(1, 2))  # (B,)
    spectrum = (means * seen[:, None]).sum(dim=(2, 3)) / total.clamp_min(1)[:, None]  # (B, C)
    fallback = band_mean.to(imgs.device, torch.float32).view(1, -1)
    spectrum = torch.where(total[:, None] > 0, spectrum, fallback)
    return spectrum[:, :, None, None].expand_as(imgs).clone()


def interpolation(
    imgs: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor | None,
    patch: int,
    band_mean: torch.Tensor,
) -> torch.Tensor:
    """Masked patches = inverse-distance-squared mix of the visible patches' mean spectra.

    Visible patches predict their own mean spectrum; tiles with no valid visible patch fall
    back to ``band_mean``. Returns (B, C, H, W).
    """
    means, counts = patch_means(imgs, valid, patch)  # (B, C, h, w), (B, h, w)
    b, c, h, w = means.shape
    rows = torch.arange(h, device=imgs.device, dtype=torch.float32)
    cols = torch.arange(w, device=imgs.device, dtype=torch.float32)
    yy, xx = torch.meshgrid(rows, cols, indexing="ij")
    centres = torch.stack([yy.flatten(), xx.flatten()], dim=1)  # (L, 2) patch units
    d2 = torch.cdist(centres, centres) ** 2  # (L, L)
    source = (1 - mask.float()) * (counts.flatten(1) > 0).float()  # (B, L) usable visible
    weight = source[:, None, :] / d2.clamp_min(1e-12)[None]  # (B, L target, L source)
    weight = torch.where(d2[None] == 0, torch.zeros_like(weight), weight)
    norm = weight.sum(dim=2, keepdim=True)  # (B, L, 1)
    flat = means.flatten(2).transpose(1, 2)  # (B, L, C)
    mixed = weight @ flat / norm.clamp_min(1e-12)  # (B, L, C)
    fallback = band_mean.to(imgs.device, torch.float32).view(1, 1, -1).expand_as(mixed)
    mixed = torch.where(norm > 0, mixed, fallback)
    own = source[..., None] > 0  # a usable visible patch keeps its own mean
    pred = torch.where(own, flat, mixed)  # (B, L, C)
    return _to_pixels(pred.transpose(1, 2).reshape(b, c, h, w), patch)


def predictors(
    band_mean: torch.Tensor,
) -> dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, int], torch.Tensor]]:
    """Name -> ``f(imgs, mask, valid, patch) -> (B, C, H, W)`` for every baseline."""
    return {
        "train_mean": lambda imgs, mask, valid, patch: train_mean(imgs, band_mean),
        "visible_mean": lambda imgs, mask, valid, patch: visible_mean(
            imgs, mask, valid, patch, band_mean
        ),
        "interpolation": lambda imgs, mask, valid, patch: interpolation(
            imgs, mask, valid, patch, band_mean
        ),
    }
