"""SSIM's matrix-product blur equals the textbook depthwise Gaussian convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hyperkd.model.train.losses import _gaussian_window, ssim_map


def _reference_ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: float, window: int
) -> torch.Tensor:
    c = x.shape[1]
    g = _gaussian_window(window, 1.5, x.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)
    pad = window // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )


def test_ssim_map_matches_depthwise_convolution() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 5, 24, 20, generator=gen)
    y = (x + 0.1 * torch.rand(2, 5, 24, 20, generator=gen)).clamp(0, 1)
    torch.testing.assert_close(
        ssim_map(x, y, 1.0), _reference_ssim(x, y, 1.0, 11), atol=2e-5, rtol=0
    )


def test_ssim_of_identical_images_is_one_and_small_images_still_work() -> None:
    x = torch.rand(1, 3, 6, 6)
    torch.testing.assert_close(ssim_map(x, x, 1.0), torch.ones_like(x))
    assert ssim_map(x, 1 - x, 1.0).mean() < 0.5
