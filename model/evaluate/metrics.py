"""Reconstruction metrics on reflectance scale: PSNR (two peaks), SSIM, SAM and normalised MSE.

Inputs are de-normalised first (``x * std + mean`` with the tile store's per-band statistics in
reflectance x 10000, then / 10000), so the numbers are in reflectance units and comparable
between runs with different normalisations.

- **PSNR** (dB): ``10 log10(1 / MSE)`` with the peak ``1.0`` reflectance (HySpecNet-style
  /10000 scaling, for comparison with published numbers), MSE over bands and the selected
  pixels. Band means run 0.05-0.4, so this peak flatters every predictor alike.
- **PSNR, band range** (``psnr_range``, dB): each band is divided by its dynamic range
  ``R_b`` (max - min over the valid pixels of the train split) first, then PSNR with peak 1:
  ``10 log10(1 / mean_b(MSE_b / R_b^2))``.
- **SSIM**: Gaussian-window SSIM (11 / 1.5, Wang et al. 2004) per band with ``data_range =
  R_b`` (1.0 reflectance when no range is given), averaged over the selected pixels, then over
  bands. With ``data_range = 1`` the stabilising constants dwarf the bands' variance.
- **SAM** (degrees): the angle between true and reconstructed spectra per pixel, averaged over
  the selected pixels.
- **MSE, normalised** (``mse_norm``): the squared error of the per-band z-scores the model
  sees, averaged over bands and the selected pixels: the training objective.

Each metric is computed twice per tile: on the **masked** patches (``psnr``, ``ssim``, ...,
the MAE task) and on the **full** decoder reconstruction (``psnr_full``, ...), every
patch as predicted. Pixels the tile store marks invalid are excluded from both. Dataset values
are means over tiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from hyperkd.model.train.losses import ssim_map

REFLECTANCE_SCALE = 10000.0
"""Tile stores hold reflectance x 10000."""
PEAK = 1.0
"""PSNR peak (and SSIM data range without a band range), reflectance units."""
METRICS = ("psnr", "psnr_range", "ssim", "sam", "mse_norm")
"""Every per-tile metric, in the order tables show them."""


def to_reflectance(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, C, H, W) per-band z-scores -> reflectance (0-1 units)."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    if m.shape[1] != x.shape[1] or s.shape[1] != x.shape[1]:
        raise ValueError(f"{x.shape[1]} bands but {m.shape[1]} means and {s.shape[1]} stds")
    return (x.float() * s + m) / REFLECTANCE_SCALE


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over (H, W) of (B, ..., H, W) values with (B, 1, H, W) weights -> (B, ...)."""
    w = weight.float()
    return (values * w).sum(dim=(-2, -1)) / w.sum(dim=(-2, -1)).clamp_min(1e-8)


def tile_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    band_range: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """PSNR, SSIM and SAM per tile over the pixels with ``weight`` > 0.

    Args:
        pred, target: (B, C, H, W) reflectance.
        weight: (B, 1, H, W) pixel selection (0/1).
        band_range: (C,) each band's dynamic range in reflectance, or None (peak 1.0).

    Returns:
        ``psnr`` and ``psnr_range`` (dB), ``ssim``, ``sam`` (degrees), each (B,); tiles with no
        selected pixel give NaN.
    """
    return _tile_scores(_pixel_maps(pred, target, band_range), weight)


def _pixel_maps(
    pred: torch.Tensor, target: torch.Tensor, band_range: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """The per-pixel errors :func:`tile_metrics` averages, computed once for any selection:
    ``sq`` and ``sq_rel`` (squared error over bands, raw and per band range) and ``sam``
    (degrees), each (B, 1, H, W), and ``ssim`` (B, C, H, W)."""
    pred, target = pred.float(), target.float()
    c = pred.shape[1]
    rng = (
        torch.full((c,), PEAK, device=pred.device)
        if band_range is None
        else band_range.to(pred.device, torch.float32).clamp_min(1e-6)
    ).view(1, c, 1, 1)
    sq = (pred - target) ** 2  # (B, C, H, W)
    dot = (pred * target).sum(dim=1, keepdim=True)  # (B, 1, H, W)
    norms = pred.norm(dim=1, keepdim=True) * target.norm(dim=1, keepdim=True)
    cos = (dot / norms.clamp_min(1e-12)).clamp(-1.0, 1.0)
    return {
        "sq": sq.mean(dim=1, keepdim=True),
        "sq_rel": (sq / rng**2).mean(dim=1, keepdim=True),
        "ssim": ssim_map(pred, target, rng),
        "sam": torch.rad2deg(torch.acos(cos)),
    }


def _tile_scores(maps: dict[str, torch.Tensor], weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """:func:`tile_metrics` from its :func:`_pixel_maps` and a selection (B, 1, H, W)."""
    empty = weight.float().sum(dim=(1, 2, 3)) == 0  # (B,)
    mse = _weighted_mean(maps["sq"], weight)[:, 0]  # (B,)
    psnr = 10 * torch.log10(PEAK**2 / mse.clamp_min(1e-12))
    mse_rel = _weighted_mean(maps["sq_rel"], weight)[:, 0]  # (B,)
    psnr_range = 10 * torch.log10(1.0 / mse_rel.clamp_min(1e-12))
    ssim = _weighted_mean(maps["ssim"], weight).mean(dim=1)  # (B,)
    sam = _weighted_mean(maps["sam"], weight)[:, 0]  # (B,)
    nan = torch.full_like(psnr, math.nan)
    values = {"psnr": psnr, "psnr_range": psnr_range, "ssim": ssim, "sam": sam}
    return {k: torch.where(empty, nan, v) for k, v in values.items()}


def reconstruction_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask_img: torch.Tensor,
    valid: torch.Tensor | None,
    mean: Sequence[float],
    std: Sequence[float],
    band_range: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Masked-patch and full-reconstruction metrics per tile.

    Args:
        pred: (B, C, H, W) the decoder's reconstruction, normalised like ``target``.
        target: (B, C, H, W) the normalised student tile.
        mask_img: (B, 1, H, W) 1 on masked patches.
        valid: (B, H, W) bool pixel validity, or None.
        mean, std: the tile store's per-band statistics (reflectance x 10000).
        band_range: (C,) each band's train-split dynamic range, reflectance; None = peak 1.

    Returns:
        ``psnr``/``psnr_range``/``ssim``/``sam``/``mse_norm`` on masked patches and the same
        with ``_full`` on the whole reconstruction, each (B,).
    """
    pred_r, target_r = to_reflectance(pred, mean, std), to_reflectance(target, mean, std)
    valid_w = torch.ones_like(mask_img) if valid is None else valid[:, None].to(mask_img.dtype)
    sq_norm = ((pred.float() - target.float()) ** 2).mean(dim=1, keepdim=True)  # (B, 1, H, W)
    maps = _pixel_maps(pred_r, target_r, band_range)  # shared by both selections
    out = {}
    for suffix, weight in (("", mask_img * valid_w), ("_full", valid_w)):
        per_tile = _tile_scores(maps, weight)
        per_tile["mse_norm"] = torch.where(
            weight.sum(dim=(1, 2, 3)) == 0,
            torch.full_like(per_tile["psnr"], math.nan),
            _weighted_mean(sq_norm, weight)[:, 0],
        )
        out |= {f"{k}{suffix}": v for k, v in per_tile.items()}
    return out


class MetricMeter:
    """Accumulates per-tile metrics and reports means over tiles (NaN tiles skipped)."""

    def __init__(self) -> None:
        self._values: dict[str, list[torch.Tensor]] = {}

    def update(self, per_tile: dict[str, torch.Tensor]) -> None:
        for key, value in per_tile.items():
            self._values.setdefault(key, []).append(value.detach().float().cpu())

    def values(self, key: str) -> list[float]:
        """Every tile's value of ``key`` in update order (NaN kept), for paired statistics."""
        chunks = self._values.get(key, [])
        return [float(v) for v in torch.cat(chunks)] if chunks else []

    def compute(self) -> dict[str, float]:
        out = {}
        for key, chunks in self._values.items():
            values = torch.cat(chunks)
            values = values[~torch.isnan(values)]
            out[key] = float(values.mean()) if values.numel() else math.nan
        return out
