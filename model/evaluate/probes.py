"""Downstream building blocks: per-pixel features, linear probes and their metrics (numpy/torch).

Evaluation unit: **the labelled pixel**. Labels in the tile store are per pixel (``label_<name>``
``(T, T)``), so every method is scored on the same pixels of the same tiles:

- **encoder features**: the encoder's patch tokens after its final LayerNorm, with *no* masking
  (all ``L`` patches visible), resampled bilinearly from the ``(T/P, T/P)`` token grid to the
  ``(T, T)`` pixel grid. A linear probe on these features is exactly a linear segmentation head
  on the tokens with bilinearly upsampled outputs (both steps are linear).
- **raw spectra**: the pixel's normalised student spectrum (per-band z-scores).

Probes (numpy/torch, no scikit-learn): features are standardised with the train pixels' mean/std, then

- classification: multinomial logistic regression, full-batch L-BFGS, L2 penalty ``l2`` on the
  weights, over the classes present in the train labels (label 0 = unlabeled is never a target);
- regression: ridge regression in closed form, ``w = (X'X + alpha n I)^-1 X'y`` on centred data.

Metrics: overall accuracy and macro-F1 (mean over the classes present in the truth or the
predictions, sklearn's convention) for classes; R^2 and RMSE (label units) for regression.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyperkd.model.nets.mae import StudentMAE
from hyperkd.model.nets.masking import PatchMask


def no_mask(batch_size: int, num_patches: int, device: torch.device | str = "cpu") -> PatchMask:
    """A :class:`PatchMask` that keeps every patch in grid order."""
    ids = torch.arange(num_patches, device=device).expand(batch_size, -1)
    zeros = torch.zeros(batch_size, num_patches, device=device)
    return PatchMask(ids_keep=ids, ids_restore=ids, mask=zeros)


def token_maps(model: StudentMAE, imgs: torch.Tensor) -> torch.Tensor:
    """Unmasked encoder tokens as a map: (B, C, T, T) -> (B, D, T/P, T/P)."""
    latent, _ = model.forward_encoder(imgs, no_mask(imgs.shape[0], model.num_patches, imgs.device))
    h, w = model.grid
    return latent[:, 1:, :].transpose(1, 2).reshape(imgs.shape[0], -1, h, w)  # drop CLS


def pixel_features(model: StudentMAE, imgs: torch.Tensor) -> torch.Tensor:
    """Per-pixel encoder features: (B, C, T, T) -> (B, D, T, T), tokens resampled bilinearly."""
    maps = token_maps(model, imgs)
    return F.interpolate(maps, size=imgs.shape[-2:], mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class PixelSample:
    """Which pixels of which tiles a split is scored on, and their labels."""

    tiles: np.ndarray
    """(N,) int64, position of each pixel's tile in the dataset."""
    pixels: np.ndarray
    """(N,) int64, flat pixel index ``y * T + x`` inside the tile."""
    target: np.ndarray
    """(N,) int64 class codes (> 0) or float32 values."""

    def __len__(self) -> int:
        return int(self.target.shape[0])


def labelled(label: np.ndarray, valid: np.ndarray, classes: bool) -> np.ndarray:
    """Pixels with a usable label: valid, and a class > 0 or a finite value. (T, T) -> (T, T) bool."""
    ok = label > 0 if classes else np.isfinite(label)
    return ok & valid.astype(bool)


def sample_pixels(
    labels: Sequence[np.ndarray],
    valids: Sequence[np.ndarray],
    *,
    classes: bool,
    max_pixels: int,
    seed: int,
) -> PixelSample:
    """Pick up to ``max_pixels`` labelled pixels over the tiles, the same number from every tile
    where possible (a seeded random subset), so large stores stay tractable.

    ``labels``/``valids``: one (T, T) array per tile.
    """
    rng = np.random.default_rng(seed)
    per_tile = [
        np.flatnonzero(labelled(lab, val, classes)) for lab, val in zip(labels, valids, strict=True)
    ]
    total = sum(len(p) for p in per_tile)
    quota = (
        max_pixels if total <= max_pixels else _fair_quota([len(p) for p in per_tile], max_pixels)
    )
    tiles, pixels, target = [], [], []
    for i, (idx, lab) in enumerate(zip(per_tile, labels, strict=True)):
        if len(idx) > quota:
            idx = np.sort(rng.choice(idx, size=quota, replace=False))
        tiles.append(np.full(len(idx), i, dtype=np.int64))
        pixels.append(idx.astype(np.int64))
        target.append(lab.reshape(-1)[idx])
    dtype = np.int64 if classes else np.float32
    if not tiles:
        return PixelSample(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, dtype))
    return PixelSample(
        np.concatenate(tiles), np.concatenate(pixels), np.concatenate(target).astype(dtype)
    )


def _fair_quota(counts: Sequence[int], budget: int) -> int:
    """The largest per-tile cap ``q`` with ``sum(min(c, q)) <= budget``."""
    lo, hi = 0, max(counts)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(c, mid) for c in counts) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


# --- probes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Standardiser:
    """Per-feature z-scores fitted on train features."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardiser:
        return cls(x.mean(0), np.maximum(x.std(0), 1e-6))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


@dataclass(frozen=True)
class LogisticProbe:
    """Multinomial logistic regression over ``classes`` (codes > 0)."""

    weight: np.ndarray
    """(F, K)"""
    bias: np.ndarray
    """(K,)"""
    classes: np.ndarray
    """(K,) int64 class codes."""
    scaler: Standardiser

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, F) features -> (N,) class codes."""
        logits = self.scaler(x) @ self.weight + self.bias
        return self.classes[np.argmax(logits, axis=1)]


def fit_logistic(
    x: np.ndarray, y: np.ndarray, *, l2: float = 1e-4, max_iter: int = 100
) -> LogisticProbe:
    """Fit on (N, F) features and (N,) class codes > 0 with full-batch L-BFGS (torch, float64,
    strong Wolfe line search; deterministic)."""
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(
            f"a classification probe needs two classes in the train labels, got {classes.tolist()}"
        )
    scaler = Standardiser.fit(x)
    xt = torch.from_numpy(scaler(x)).double()  # (N, F)
    yt = torch.from_numpy(np.searchsorted(classes, y)).long()  # (N,) class index
    wt = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    bt = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [wt, bt], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xt @ wt + bt, yt) + l2 * (wt**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = wt.detach().numpy(), bt.detach().numpy()
    return LogisticProbe(w.astype(np.float32), b.astype(np.float32), classes, scaler)


@dataclass(frozen=True)
class RidgeProbe:
    """Ridge regression on standardised features."""

    weight: np.ndarray
    """(F,)"""
    bias: float
    scaler: Standardiser

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (self.scaler(x).astype(np.float64) @ self.weight + self.bias).astype(np.float32)


def fit_ridge(x: np.ndarray, y: np.ndarray, *, alpha: float = 1e-3) -> RidgeProbe:
    """Closed-form ridge on (N, F) features and (N,) targets; ``alpha`` is per sample."""
    scaler = Standardiser.fit(x)
    xs = scaler(x).astype(np.float64)
    y = y.astype(np.float64)
    y_mean = float(y.mean())
    gram = xs.T @ xs + alpha * len(y) * np.eye(xs.shape[1])
    weight = np.linalg.solve(gram, xs.T @ (y - y_mean))
    return RidgeProbe(weight, y_mean, scaler)


@dataclass(frozen=True)
class Targets:
    """How a task's labels become probe and fine-tune targets, and outputs become predictions."""

    codes: np.ndarray | None
    """Classification: (K,) class codes seen in train, in output order; None for regression."""
    mean: float = 0.0
    """Regression: train mean and std; targets are standardised with them."""
    std: float = 1.0

    @classmethod
    def from_train(cls, target: np.ndarray, classes: bool) -> Targets:
        if classes:
            return cls(np.unique(target))
        return cls(None, float(target.mean()), float(target.std()) or 1.0)

    @property
    def out_dim(self) -> int:
        return 1 if self.codes is None else len(self.codes)

    def fit_probe(self, x: np.ndarray, y: np.ndarray) -> LogisticProbe | RidgeProbe:
        if self.codes is None:
            return fit_ridge(x, (y - self.mean) / self.std)
        return fit_logistic(x, y)

    def decode_probe(self, pred: np.ndarray) -> np.ndarray:
        return pred if self.codes is not None else pred * self.std + self.mean

    def decode_outputs(self, out: np.ndarray) -> np.ndarray:
        """(N, out_dim) head outputs -> (N,) class codes or label values."""
        if self.codes is None:
            return out[:, 0] * self.std + self.mean
        return self.codes[out.argmax(1)]

    def pixel_targets(
        self, label: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, T) labels -> (target, use): class indices or standardised values, and the
        (B, T, T) bool pixels that carry a usable label."""
        if self.codes is None:
            use = valid & torch.isfinite(label)
            return torch.nan_to_num((label - self.mean) / self.std), use
        lookup = torch.full((int(self.codes.max()) + 1,), -1, dtype=torch.long)
        lookup[torch.as_tensor(self.codes)] = torch.arange(len(self.codes))
        inside = (label > 0) & (label < len(lookup))
        index = lookup[label.clamp(0, len(lookup) - 1)]
        return index, valid & inside & (index >= 0)


class SegmentationHead(nn.Module):
    """Encoder + 1x1 linear head on the token map, outputs resampled bilinearly to pixels."""

    def __init__(self, encoder: StudentMAE, out_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Conv2d(encoder.config.embed_dim, out_dim, kernel_size=1)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, T, T) -> (B, out_dim, T, T)."""
        maps = token_maps(self.encoder, imgs)
        return F.interpolate(
            self.head(maps), size=imgs.shape[-2:], mode="bilinear", align_corners=False
        )

    def init_from_probe(self, probe: LogisticProbe | RidgeProbe) -> None:
        """LP-FT: start the head from a linear probe fitted on standardised pixel features."""
        weight = probe.weight if probe.weight.ndim == 2 else probe.weight[:, None]  # (F, K)
        bias = np.atleast_1d(np.asarray(probe.bias, dtype=np.float64))  # (K,)
        w = weight / probe.scaler.std[:, None]  # undo the standardisation z = (f - mean) / std
        b = bias - probe.scaler.mean @ w
        self.head.weight.data.copy_(torch.as_tensor(w.T, dtype=torch.float32)[..., None, None])
        self.head.bias.data.copy_(torch.as_tensor(b, dtype=torch.float32))


# --- metrics ----------------------------------------------------------------------------


def classification_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``accuracy`` and ``macro_f1`` over (N,) class codes (labels 0 are excluded upstream)."""
    if truth.size == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    f1 = []
    for c in np.union1d(np.unique(truth), np.unique(pred)):
        tp = int(np.sum((pred == c) & (truth == c)))
        fp = int(np.sum((pred == c) & (truth != c)))
        fn = int(np.sum((pred != c) & (truth == c)))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": float(np.mean(truth == pred)), "macro_f1": float(np.mean(f1))}


def regression_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``r2`` (1 - SS_res / SS_tot) and ``rmse`` (label units) over (N,) values."""
    if truth.size == 0:
        return {"r2": float("nan"), "rmse": float("nan")}
    t, p = truth.astype(np.float64), pred.astype(np.float64)
    ss_res = float(np.sum((t - p) ** 2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    return {
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "rmse": float(np.sqrt(ss_res / t.size)),
    }
