"""Streaming per-band statistics (Welford updates, Chan merges) in float64."""

from __future__ import annotations

import numpy as np


class BandMoments:
    """Running count, mean and sum of squared deviations per band.

    ``update`` takes a batch of pixels ``(band, k)``; batches combine with Chan et al.'s
    pairwise formula, so the result does not depend on how pixels are grouped and does not
    lose precision over millions of int16 values.
    """

    def __init__(self, n_bands: int) -> None:
        self.count = 0
        self.mean = np.zeros(n_bands, dtype=np.float64)
        self.m2 = np.zeros(n_bands, dtype=np.float64)

    def update(self, pixels: np.ndarray) -> None:
        """Add pixels ``(band, k)`` (any numeric dtype)."""
        k = pixels.shape[1]
        if k == 0:
            return
        x = pixels.astype(np.float64, copy=False)
        batch_mean = x.mean(axis=1)
        batch_m2 = np.square(x - batch_mean[:, None]).sum(axis=1)
        self.merge(k, batch_mean, batch_m2)

    def merge(self, k: int, batch_mean: np.ndarray, batch_m2: np.ndarray) -> None:
        """Chan's merge of a group with ``k`` pixels, mean and M2 into the running moments."""
        total = self.count + k
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + batch_m2 + np.square(delta) * (self.count * k / total)
        self.count = total

    def std(self, floor: float = 1.0) -> np.ndarray:
        """Population standard deviation per band, at least ``floor`` (a constant band would
        otherwise divide by zero when normalising)."""
        if self.count == 0:
            raise ValueError("no pixels to compute statistics from")
        return np.maximum(np.sqrt(self.m2 / self.count), floor)
