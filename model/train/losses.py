"""HyperKD's loss: ``lambda * (MSE on masked patches + (1 - SSIM) on the reconstruction) + beta * KLD``.

Reconstruction terms work on the student tile normalised per band (z-scores with the tile
store's train statistics), and ignore pixels the tile store marks invalid.

- **MSE**: MAE's per-patch mean squared error, averaged over masked patches (weighted by each
  patch's valid pixels).
- **SSIM**: the composite reconstruction (predicted masked patches, original visible patches)
  against the tile, Gaussian window 11 / sigma 1.5 (Wang et al. 2004), per band, averaged over
  the masked valid pixels and then over bands (:mod:`hyperkd.model.train.ssim`, a fused
  kernel with a hand-written backward). The dynamic range ``L`` of each band is the
  target's range on that tile (z-scores have no fixed range). [ASSUMPTION]
- **KLD**: ``tau^2 * KL(softmax(t / tau) || softmax(s / tau))`` over the feature dimension,
  averaged over the student's visible tokens, where ``s`` is the student's block-8 token
  projected linearly to the teacher's width and ``t`` the teacher's block-8 token at the same
  position (the teacher sees the whole tile). Both are standardised over the feature dimension
  first (LayerNorm without affine), so ``tau`` acts on a fixed scale and the projection cannot
  shrink the student's features to fake a flat distribution. [ASSUMPTION: the paper's form is
  unknown, method.md §1.3.]

Defaults (all [ASSUMPTION], method.md §1.3): ``lambda = 1``, ``beta = 1``, ``tau = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hyperkd import defaults
from hyperkd.model.train.ssim import ssim_map, weighted_ssim

__all__ = [
    "LOSS_TERMS",
    "LossConfig",
    "feature_kld",
    "hyperkd_loss",
    "masked_component_mse",
    "masked_patch_mse",
    "ssim_map",
    "tile_range",
    "weighted_ssim",
]

LOSS_TERMS = defaults.LOSSES


@dataclass(frozen=True)
class LossConfig:
    """Which terms, and their weights."""

    terms: str = defaults.LOSS
    """``mse``, ``mse+ssim``, ``mse+kld`` or ``mse+ssim+kld`` (:data:`LOSS_TERMS`)."""
    recon_weight: float = 1.0
    """lambda, on MSE + (1 - SSIM)."""
    kd_weight: float = 1.0
    """beta, on the feature KLD."""
    temperature: float = 1.0
    """tau, the softmax temperature of the KLD."""

    def __post_init__(self) -> None:
        if self.terms not in LOSS_TERMS:
            raise ValueError(f"unknown loss {self.terms!r}: choose one of {', '.join(LOSS_TERMS)}")
        if self.temperature <= 0:
            raise ValueError(f"KLD temperature must be positive, got {self.temperature}")

    @property
    def use_ssim(self) -> bool:
        return "ssim" in self.terms

    @property
    def use_kd(self) -> bool:
        return "kld" in self.terms


def masked_patch_mse(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE over masked patches.

    Args:
        pred, target: (B, L, P*P*C) patch vectors (channels fastest).
        mask: (B, L), 1 for masked patches.
        valid: (B, L, P*P) pixel validity per patch, or None for all valid.
    """
    err = (pred.float() - target.float()) ** 2  # (B, L, P*P*C)
    if valid is None:
        per_patch = err.mean(dim=-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1)
    b, length, pix = valid.shape
    err = err.reshape(b, length, pix, -1).mean(dim=-1)  # (B, L, P*P) band-averaged per pixel
    weight = valid.float() * mask[..., None]  # (B, L, P*P)
    return (err * weight).sum() / weight.sum().clamp_min(1)


def masked_component_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    residual: torch.Tensor,
    bands: int,
    mask: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`masked_patch_mse` of a fixed-basis student, computed on its k components.

    With an orthonormal basis a pixel's band-space squared error is the components' squared
    error plus the pixel's distance to the subspace (:meth:`StudentMAE.project_bands`), so
    this equals the band-space MSE exactly, while touching k values per pixel instead of C.

    Args:
        pred, target: (B, L, P*P*k) predicted and true component patches (channels fastest).
        residual: (B, L, P*P) each pixel's squared distance to the subspace.
        bands: C, the band count the MSE averages over.
        mask: (B, L), 1 for masked patches.
        valid: (B, L, P*P) pixel validity per patch, or None for all valid.
    """
    b, length, pix = residual.shape
    err = ((pred.float() - target.float()) ** 2).reshape(b, length, pix, -1)  # (B, L, P*P, k)
    err = (err.sum(dim=-1) + residual.float()) / bands  # (B, L, P*P) band-averaged per pixel
    weight = mask[..., None].float().expand(-1, -1, pix)  # (B, L, P*P)
    if valid is not None:
        weight = weight * valid.float()
    return (err * weight).sum() / weight.sum().clamp_min(1)


def tile_range(target: torch.Tensor) -> torch.Tensor:
    """Per (tile, band) dynamic range of a (B, C, H, W) target, (B, C, 1, 1), at least 1e-3."""
    low, high = torch.aminmax(target.detach().float().flatten(2), dim=2)  # one pass
    return (high - low).clamp_min(1e-3)[..., None, None]


def feature_kld(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``tau^2 * KL(p_teacher || p_student)`` over the last (feature) dim, mean over tokens.

    Args:
        student: (B, K, D) projected student tokens.
        teacher: (B, K, D) teacher tokens at the same positions.
    """
    s = F.layer_norm(student.float(), student.shape[-1:])
    t = F.layer_norm(teacher.float(), teacher.shape[-1:])
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)  # (B, K)
    return kl.mean() * temperature**2


def hyperkd_loss(
    config: LossConfig,
    *,
    pred: torch.Tensor,
    target: torch.Tensor,
    recon: torch.Tensor | None,
    target_img: torch.Tensor,
    mask: torch.Tensor,
    mask_img: torch.Tensor,
    valid: torch.Tensor | None = None,
    valid_img: torch.Tensor | None = None,
    student_kd: torch.Tensor | None = None,
    teacher_kd: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    bands: int | None = None,
) -> dict[str, torch.Tensor]:
    """The total loss and each component (components detached, for logging).

    Args:
        pred, target: (B, L, P*P*C) predicted and true patches; with ``residual``, (B, L,
            P*P*k) component patches of a fixed-basis student (:func:`masked_component_mse`).
        recon, target_img: (B, C, H, W) composite reconstruction and tile; ``recon`` is read
            by the SSIM term only (None without it).
        mask: (B, L) masked patches; mask_img: (B, 1, H, W) the same per pixel.
        valid, valid_img: (B, L, P*P) and (B, 1, H, W) pixel validity, or None.
        student_kd, teacher_kd: (B, K, D_teacher) tokens for the KLD (``kld`` losses only).
        residual, bands: (B, L, P*P) distances to the basis and the band count C, for
            component patches; None for band patches.
    """
    if residual is None:
        mse = masked_patch_mse(pred, target, mask, valid)
    else:
        if bands is None:
            raise ValueError("component patches need the band count")
        mse = masked_component_mse(pred, target, residual, bands, mask, valid)
    recon_term = mse
    out: dict[str, torch.Tensor] = {"mse": mse.detach()}
    if config.use_ssim:
        if recon is None:
            raise ValueError("the SSIM term needs the composite reconstruction")
        weight = mask_img if valid_img is None else mask_img * valid_img.float()
        ssim = weighted_ssim(recon, target_img, weight, tile_range(target_img)).mean()
        recon_term = recon_term + (1.0 - ssim)
        out["ssim"] = ssim.detach()
    # Not ``1.0 * recon_term``: torch.compile (2.14) drops the grad of a loss written as
    # 1.0 times a tensor whose detached copy is also returned.
    loss = recon_term if config.recon_weight == 1 else config.recon_weight * recon_term
    if config.use_kd:
        if student_kd is None or teacher_kd is None:
            raise ValueError("the kld loss needs student and teacher features")
        kld = feature_kld(student_kd, teacher_kd, config.temperature)
        loss = loss + config.kd_weight * kld
        out["kld"] = kld.detach()
    out["loss"] = loss
    return out
