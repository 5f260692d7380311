"""The predictors that learn nothing, on hand-made tiles with known answers, and the metrics
against an independent implementation (scikit-image)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hyperkd.model.evaluate.baselines import (
    interpolation,
    split_band_stats,
    train_mean,
    visible_mean,
)
from hyperkd.model.evaluate.metrics import reconstruction_metrics, tile_metrics

# A 2-band tile of 2 x 2 patches (4 px, 2-px patches), each patch constant: a, b, c, d
# (grid order: top-left, top-right, bottom-left, bottom-right).
SPECTRA = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])  # (patch, band)


def _tile() -> torch.Tensor:
    per_patch = SPECTRA.T.reshape(1, 2, 2, 2)  # (B, C, h, w)
    return per_patch.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # (1, 2, 4, 4)


def test_train_mean_is_the_split_mean_everywhere() -> None:
    tile = _tile()
    pred = train_mean(tile, torch.tensor([0.5, -1.0]))
    assert pred.shape == tile.shape
    assert torch.all(pred[:, 0] == 0.5) and torch.all(pred[:, 1] == -1.0)


def test_visible_mean_averages_the_visible_patches_only() -> None:
    tile, mask = _tile(), torch.tensor([[1.0, 0.0, 0.0, 0.0]])  # top-left masked
    pred = visible_mean(tile, mask, None, 2, torch.zeros(2))
    torch.testing.assert_close(pred[0, :, 0, 0], torch.tensor([3.0, 30.0]))  # mean of b, c, d
    assert torch.all(pred[0, 0] == 3.0)
    # Invalid pixels do not count: patch d wholly nodata leaves b and c.
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 2:, 2:] = False
    pred = visible_mean(tile, mask, valid, 2, torch.zeros(2))
    torch.testing.assert_close(pred[0, :, 0, 0], torch.tensor([2.5, 25.0]))


def test_interpolation_weights_visible_patches_by_inverse_squared_distance() -> None:
    tile, mask = _tile(), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    pred = interpolation(tile, mask, None, 2, torch.zeros(2))
    # From the top-left patch: b and c at distance 1 (weight 1), d at sqrt 2 (weight 1/2).
    expected = (SPECTRA[1] + SPECTRA[2] + 0.5 * SPECTRA[3]) / 2.5
    torch.testing.assert_close(pred[0, :, :2, :2], expected.view(2, 1, 1).expand(2, 2, 2))
    # A visible patch predicts its own mean.
    torch.testing.assert_close(pred[0, :, 2:, 2:], SPECTRA[3].view(2, 1, 1).expand(2, 2, 2))
    # Two masked patches: each mixes only the visible ones (c at distance 1 from a, sqrt 2
    # from b; d at sqrt 2 from a, 1 from b).
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    pred = interpolation(tile, mask, None, 2, torch.zeros(2))
    a_hat = (SPECTRA[2] + 0.5 * SPECTRA[3]) / 1.5
    b_hat = (0.5 * SPECTRA[2] + SPECTRA[3]) / 1.5
    torch.testing.assert_close(pred[0, :, 0, 0], a_hat)
    torch.testing.assert_close(pred[0, :, 0, 3], b_hat)


def test_baselines_fall_back_to_the_train_mean_without_a_visible_valid_pixel() -> None:
    tile, mask = _tile(), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    valid = torch.zeros(1, 4, 4, dtype=torch.bool)
    valid[0, :2, :2] = True  # only the masked patch has valid pixels
    band_mean = torch.tensor([7.0, 8.0])
    for f in (visible_mean, interpolation):
        pred = f(tile, mask, valid, 2, band_mean)
        torch.testing.assert_close(pred[0, :, 0, 0], band_mean)


def test_split_band_stats_use_valid_pixels_only() -> None:
    tile = _tile()
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 2:, 2:] = False  # patch d (the largest values) is nodata
    batches = [{"student": tile, "valid": valid}, {"student": tile * 0 - 1, "valid": valid}]
    stats = split_band_stats(batches, ("student",))["student"]
    torch.testing.assert_close(stats.minimum, torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(stats.maximum, torch.tensor([3.0, 30.0]))
    torch.testing.assert_close(stats.mean, torch.tensor([(6 / 3 - 1) / 2, (60 / 3 - 1) / 2]))
    assert stats.n_tiles == 2
    assert split_band_stats(batches, ("student",), max_tiles=1)["student"].n_tiles == 1


def test_split_band_stats_agree_on_whole_and_partly_valid_batches() -> None:
    g = torch.Generator().manual_seed(0)
    tiles = torch.rand(3, 5, 8, 8, generator=g) * 100  # (B, C, H, W)
    whole = torch.ones(3, 8, 8, dtype=torch.bool)
    every = [
        split_band_stats([{"student": tiles, "valid": valid}])["student"] for valid in (None, whole)
    ]
    partly = whole.clone()
    partly[0, 0, 0] = False  # one pixel off: the masked path, over the same other pixels
    masked = split_band_stats([{"student": tiles, "valid": partly}])["student"]
    kept = tiles.permute(1, 0, 2, 3)[:, partly]  # (C, valid pixels)
    for stats in every:
        torch.testing.assert_close(stats.mean, tiles.double().mean(dim=(0, 2, 3)).float())
        torch.testing.assert_close(stats.minimum, tiles.amin(dim=(0, 2, 3)))
        torch.testing.assert_close(stats.maximum, tiles.amax(dim=(0, 2, 3)))
    torch.testing.assert_close(masked.mean, kept.double().mean(dim=1).float())
    torch.testing.assert_close(masked.minimum, kept.amin(dim=1))
    torch.testing.assert_close(masked.maximum, kept.amax(dim=1))


def test_psnr_matches_scikit_image() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    target = rng.uniform(0.02, 0.4, size=(1, 5, 24, 24)).astype(np.float32)
    pred = (target + rng.normal(0, 0.01, size=target.shape)).astype(np.float32)
    ones = torch.ones(1, 1, 24, 24)
    band_range = torch.tensor([0.1, 0.2, 0.3, 0.35, 0.5])
    ours = tile_metrics(torch.from_numpy(pred), torch.from_numpy(target), ones, band_range)
    ref = metrics.peak_signal_noise_ratio(target, pred, data_range=1.0)
    assert float(ours["psnr"][0]) == pytest.approx(ref, abs=1e-3)
    scale = band_range.numpy().reshape(1, -1, 1, 1)
    ref_range = metrics.peak_signal_noise_ratio(target / scale, pred / scale, data_range=1.0)
    assert float(ours["psnr_range"][0]) == pytest.approx(ref_range, abs=1e-3)


def test_ssim_with_per_band_range_matches_scikit_image() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:32, 0:32]
    smooth = 0.2 + 0.05 * np.sin(xx / 4.0) * np.cos(yy / 5.0)
    target = np.stack([smooth * k for k in (0.5, 1.0, 1.5)])[None].astype(np.float32)
    pred = (target + rng.normal(0, 0.01, size=target.shape)).astype(np.float32)
    band_range = torch.tensor([0.05, 0.1, 0.15])
    # scikit-image crops the 5-px border its 11-px window does not cover; score the same pixels.
    interior = torch.zeros(1, 1, 32, 32)
    interior[..., 5:-5, 5:-5] = 1
    ours = tile_metrics(torch.from_numpy(pred), torch.from_numpy(target), interior, band_range)
    ref = [
        metrics.structural_similarity(
            target[0, b],
            pred[0, b],
            data_range=float(band_range[b]),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for b in range(3)
    ]
    assert float(ours["ssim"][0]) == pytest.approx(float(np.mean(ref)), abs=1e-4)
    # With a peak of 1.0 the constants swamp these bands' variance: SSIM moves towards 1.
    peak1 = tile_metrics(torch.from_numpy(pred), torch.from_numpy(target), interior)
    assert float(peak1["ssim"][0]) > float(ours["ssim"][0])


def test_normalised_mse_is_the_training_objective_on_masked_pixels() -> None:
    target = torch.zeros(1, 2, 4, 4)
    pred = target.clone()
    pred[:, :, :2, :2] = 2.0  # error 2 (z-score units) on the top-left patch only
    mask_img = torch.zeros(1, 1, 4, 4)
    mask_img[..., :2, :] = 1  # top row of patches masked: half its pixels wrong
    out = reconstruction_metrics(pred, target, mask_img, None, [1000.0, 2000.0], [100.0, 100.0])
    assert float(out["mse_norm"][0]) == pytest.approx(2.0)  # 4 on half the masked pixels
    assert float(out["mse_norm_full"][0]) == pytest.approx(1.0)
    empty = reconstruction_metrics(pred, target, mask_img * 0, None, [0.0, 0.0], [1.0, 1.0])
    assert math.isnan(float(empty["mse_norm"][0]))
