"""Patch masking for the MAEs: ``random`` (MAE's) and significance-guided ``gabor``/``wavelet``.

Every strategy reduces to one per-patch *keep order*: patches sorted ascending by a noise score
are kept first (MAE's ``argsort(noise)`` convention), and the rest are masked.

- ``random``: the noise is uniform, as in MAE and Prithvi.
- ``gabor``/``wavelet`` (guided): the noise is the tile's significance map itself, so exactly the
  ``round(r * L)`` patches with the *highest* significance are masked (ties broken by patch
  index, so a tile is always masked the same way). HyperKD masks the most structured patches; r = 0.75 is the paper's ratio.
- ``sample=True`` (guided only): the masked set is drawn without replacement with probability
  proportional to ``exp(z / temperature)``, where ``z`` is the tile's significance standardised
  over its patches (Gumbel-top-k). High significance stays likely to be masked, but a tile is not
  masked the same way every epoch; ``temperature -> 0`` recovers the deterministic top-r%,
  ``temperature -> inf`` tends to random masking. [ASSUMPTION: the paper does not say.]
  :func:`top_r_overlap` measures where a temperature sits between the two: the share of
  masked patches that lie in the top-r set (1 for deterministic, about r for random).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hyperkd import defaults

MASKINGS = defaults.MASKINGS


@dataclass(frozen=True)
class PatchMask:
    """Which patches an MAE keeps, per sample. ``L`` patches, ``K`` kept."""

    ids_keep: torch.Tensor
    """(B, K) int64: indices of the kept (visible) patches, in keep order."""
    ids_restore: torch.Tensor
    """(B, L) int64: inverse permutation, puts the decoder's tokens back in grid order."""
    mask: torch.Tensor
    """(B, L) float: 1 for masked (removed) patches, 0 for visible ones, in grid order."""

    @property
    def num_keep(self) -> int:
        return int(self.ids_keep.shape[1])


def mask_from_noise(noise: torch.Tensor, num_keep: int) -> PatchMask:
    """Keep the ``num_keep`` patches with the lowest noise. ``noise``: (B, L)."""
    batch, length = noise.shape
    # Stable sort, so equal scores break ties by patch index and guided masks are reproducible.
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)  # (B, L) ascending: keep first
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L)
    ids_keep = ids_shuffle[:, :num_keep]  # (B, K)
    mask = torch.ones(batch, length, device=noise.device)
    mask[:, :num_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)  # (B, L) back in grid order
    return PatchMask(ids_keep=ids_keep, ids_restore=ids_restore, mask=mask)


def num_masked(length: int, ratio: float) -> int:
    """Patches masked out of ``length`` at ``ratio``: ``round(ratio * length)``, at least one
    visible and one masked patch."""
    return min(max(round(ratio * length), 1), length - 1)


@dataclass(frozen=True)
class Masking:
    """A masking strategy. Call it with a batch to get a :class:`PatchMask`."""

    kind: str = "random"
    """``random``, ``gabor`` or ``wavelet``."""
    ratio: float = 0.75
    """Fraction of patches masked (the paper's 75 %)."""
    sample: bool = False
    """Guided only: draw the masked set with a temperature instead of taking the top r%."""
    temperature: float = 1.0
    """Softmax temperature on the standardised significance when ``sample`` is set."""

    def __post_init__(self) -> None:
        if self.kind not in MASKINGS:
            raise ValueError(f"unknown masking {self.kind!r}: choose one of {', '.join(MASKINGS)}")
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"mask ratio must lie strictly between 0 and 1, got {self.ratio}")
        if self.sample and self.temperature <= 0:
            raise ValueError(f"masking temperature must be positive, got {self.temperature}")

    @property
    def significance_key(self) -> str | None:
        """The batch key holding this strategy's significance map, or None for ``random``."""
        return None if self.kind == "random" else f"significance_{self.kind}"

    def __call__(
        self,
        batch_size: int,
        num_patches: int,
        *,
        significance: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> PatchMask:
        """Mask ``num_patches`` patches for each of ``batch_size`` samples.

        Args:
            significance: guided kinds only, (B, h, w) or (B, L) patch scores in grid order.
            generator: CPU generator for the noise, so training can checkpoint its state.
            device: where the returned indices live.
        """
        num_keep = num_patches - num_masked(num_patches, self.ratio)
        if self.kind == "random":
            noise = torch.rand(batch_size, num_patches, generator=generator)
            return mask_from_noise(noise.to(device), num_keep)
        if significance is None:
            raise ValueError(f"{self.kind} masking needs the tile's {self.significance_key}")
        score = significance.reshape(significance.shape[0], -1).float().cpu()  # (B, L)
        if score.shape != (batch_size, num_patches):
            raise ValueError(
                f"{self.significance_key} has {tuple(score.shape)} patch scores, "
                f"the model has ({batch_size}, {num_patches}) patches"
            )
        if not torch.isfinite(score).all():
            raise ValueError(f"{self.significance_key} holds non-finite scores")
        if self.sample:
            z = (score - score.mean(1, keepdim=True)) / score.std(1, keepdim=True).clamp_min(1e-12)
            uniform = torch.rand(batch_size, num_patches, generator=generator)
            gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
            score = z / self.temperature + gumbel  # Gumbel-top-k on the logits z / T
        return mask_from_noise(score.to(device), num_keep)  # low score kept, top r% masked


def top_r_overlap(
    masking: Masking,
    significance: torch.Tensor,
    *,
    draws: int = 8,
    generator: torch.Generator | None = None,
) -> float:
    """Mean share of the masked patches that lie in each tile's top-r set (highest
    significance), over ``draws`` mask draws of the tiles ``significance`` (B, h, w).

    1.0 for deterministic guided masking; about ``ratio`` for random masking.
    """
    score = significance.reshape(significance.shape[0], -1).float()  # (B, L)
    b, length = score.shape
    k = num_masked(length, masking.ratio)
    top = torch.zeros(b, length)
    top.scatter_(1, torch.argsort(-score, dim=1, stable=True)[:, :k], 1.0)  # (B, L) top-r set
    shares = []
    for _ in range(draws):
        mask = masking(b, length, significance=significance, generator=generator).mask  # (B, L)
        shares.append(float((mask * top).sum() / mask.sum()))
    return sum(shares) / len(shares)
