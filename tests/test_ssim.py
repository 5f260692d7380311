"""SSIM: the fused loss kernels against the implementation they replaced, against an
independent SSIM (scikit-image), and their hand-written gradients against autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from hyperkd.model.train import ssim
from hyperkd.model.train.losses import ssim_map, tile_range, weighted_ssim
from hyperkd.model.train.ssim import _stencil_blur, _stencil_blur_t, blur_matrix, gaussian_window


def _old_gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _old_blur_matrix(n: int, g: torch.Tensor) -> torch.Tensor:
    k, pad = g.numel(), g.numel() // 2
    rows = torch.arange(n, device=g.device).view(n, 1).expand(n, k)
    src = (rows + torch.arange(k, device=g.device).view(1, k) - pad).abs()
    src = torch.where(src > n - 1, 2 * (n - 1) - src, src)
    m = torch.zeros(n, n, device=g.device, dtype=g.dtype)
    return m.index_put_((rows, src), g.expand(n, k), accumulate=True)


def _old_weighted_ssim(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, data_range: torch.Tensor | float
) -> torch.Tensor:
    """The loss term as it was before the fused kernels (a verbatim copy, in float64 so it is
    the more exact side of every comparison): autograd through ~30 torch ops."""
    x, y = x.double(), y.double()
    h, w = x.shape[-2:]
    window = min(11, 2 * min(h, w) - 1)
    g = _old_gaussian_window(window, 1.5, x.device)
    m_h, m_w_t = _old_blur_matrix(h, g), _old_blur_matrix(w, g).T

    def blur(t: torch.Tensor) -> torch.Tensor:
        return m_h @ t @ m_w_t

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    wt = weight.double()
    per_band = (smap * wt).sum(dim=(2, 3)) / wt.sum(dim=(2, 3)).clamp_min(1e-8)
    return per_band.mean(dim=1)


def _case(b: int, c: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, ...]:
    """A target, a noisy reconstruction of it, a patchy weight with zeros, per-band ranges."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(b, c, h, w, generator=gen).cumsum(-1) * 0.3  # some spatial structure
    x = y + 0.5 * torch.randn(b, c, h, w, generator=gen)
    weight = (torch.rand(b, 1, h, w, generator=gen) > 0.3).float()
    return x, y, weight, tile_range(y)


def _value_and_grad(fn, x, y, weight, dr, go):  # type: ignore[no-untyped-def]
    x = x.clone().requires_grad_(True)
    out = fn(x, y, weight, dr)
    (out * go).sum().backward()
    return out.detach().double(), x.grad.double()


SHAPES = [(2, 5, 24, 20), (1, 3, 6, 9), (3, 2, 32, 32), (1, 1, 4, 4)]


@pytest.mark.parametrize("kernel", ["cpu", "torch"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_ssim_equals_the_old_loss_in_value_and_gradient(
    kernel: str, shape: tuple[int, int, int, int]
) -> None:
    x, y, weight, dr = _case(*shape, seed=sum(shape))
    go = torch.rand(shape[0], generator=torch.Generator().manual_seed(1)) + 0.5
    ref_out, ref_grad = _value_and_grad(_old_weighted_ssim, x, y, weight, dr, go)
    out, grad = _value_and_grad(lambda *a: weighted_ssim(*a, kernel=kernel), x, y, weight, dr, go)
    torch.testing.assert_close(out, ref_out, atol=2e-6, rtol=0)
    assert ((grad - ref_grad).norm() / ref_grad.norm()) < 1e-5
    torch.testing.assert_close(grad, ref_grad, atol=1e-6 * ref_grad.abs().max().item(), rtol=1e-4)


def test_fused_ssim_at_training_shape_and_with_float_range() -> None:
    """Full 128 px tiles (the blur's interior and borders at real size), a float range, and
    a weight that is zero on a whole sample."""
    x, y, weight, _ = _case(2, 3, 128, 128, seed=5)
    weight[1] = 0
    go = torch.ones(2)
    ref_out, ref_grad = _value_and_grad(_old_weighted_ssim, x, y, weight, 4.0, go)
    for kernel in ("cpu", "torch"):
        out, grad = _value_and_grad(
            lambda *a, k=kernel: weighted_ssim(*a, kernel=k), x, y, weight, 4.0, go
        )
        torch.testing.assert_close(out, ref_out, atol=2e-6, rtol=0)
        assert out[1] == 0 and grad[1].abs().max() == 0
        assert ((grad - ref_grad).norm() / ref_grad.norm()) < 1e-5


def test_hand_written_backward_passes_gradcheck_in_float64() -> None:
    """The torch form's backward against finite differences (the CPU kernel is float32 only
    and is checked against autograd above)."""
    from hyperkd.model.train.ssim import _WeightedSSIM

    x, y, weight, dr = (t.double() for t in _case(1, 2, 7, 6, seed=3))
    c1, c2 = (0.01 * dr) ** 2, (0.03 * dr) ** 2
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: _WeightedSSIM.apply(t, y, weight, c1, c2, "torch"), (x,), eps=1e-6, atol=1e-7
    )


def test_weighted_ssim_matches_scikit_image() -> None:
    """Independent SSIM: scikit-image's Gaussian SSIM (sigma 1.5, 11 taps, population
    covariance) averages the map over the pixels at least 5 px from the border, where no
    padding is involved; the same pixels as weight give the same number per band."""
    x, y, _, _ = _case(1, 3, 40, 36, seed=7)
    weight = torch.zeros(1, 1, 40, 36)
    weight[..., 5:-5, 5:-5] = 1
    for band in range(3):
        xb, yb = x[0, band].double().numpy(), y[0, band].double().numpy()
        drange = float(yb.max() - yb.min())
        expected = structural_similarity(
            xb, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            data_range=drange,
        )  # fmt: skip
        got = weighted_ssim(x[:, band : band + 1], y[:, band : band + 1], weight, drange)
        assert got.item() == pytest.approx(expected, abs=2e-6)
        np.testing.assert_allclose(
            ssim_map(x[:, band : band + 1], y[:, band : band + 1], drange)[0, 0, 5:-5, 5:-5]
            .mean()
            .item(),
            expected,
            atol=2e-6,
        )


@pytest.mark.parametrize("shape", [(17, 23), (6, 9), (4, 4)])
def test_stencil_blurs_for_compile_equal_the_matrix_blurs(shape: tuple[int, int]) -> None:
    h, w = shape
    t = torch.randn(2, 3, h, w, dtype=torch.float64)
    g = gaussian_window(min(11, 2 * min(h, w) - 1), 1.5, t.device).double()
    m_h, m_w = blur_matrix(h, g), blur_matrix(w, g)
    torch.testing.assert_close(_stencil_blur(t, g), m_h @ t @ m_w.T)
    torch.testing.assert_close(_stencil_blur_t(t, g), m_h.T @ t @ m_w)  # the backward's


@pytest.mark.slow
@pytest.mark.parametrize("blur", ssim.COMPILED_BLURS)
def test_torch_form_under_compile_equals_eager(blur: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path as torch.compile traces it (stencils or matrices, fused), on the CPU."""
    monkeypatch.setattr(ssim, "compiled_blur", blur)
    torch._dynamo.reset()  # the other form's graph must not be reused
    x, y, weight, dr = _case(2, 3, 24, 20, seed=11)
    go = torch.ones(2)

    def term(a, b, c, d):  # type: ignore[no-untyped-def]
        return weighted_ssim(a, b, c, d, kernel="torch")

    eager_out, eager_grad = _value_and_grad(term, x, y, weight, dr, go)
    out, grad = _value_and_grad(torch.compile(term), x, y, weight, dr, go)
    torch.testing.assert_close(out, eager_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad, eager_grad, atol=1e-7, rtol=1e-4)


def test_ssim_map_matches_depthwise_convolution() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 5, 24, 20, generator=gen)
    y = (x + 0.1 * torch.rand(2, 5, 24, 20, generator=gen)).clamp(0, 1)
    g = gaussian_window(11, 1.5, x.device)
    kernel = (g[:, None] * g[None, :]).expand(5, 1, 11, 11)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (5, 5, 5, 5), mode="reflect"), kernel, groups=5)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    expected = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    torch.testing.assert_close(ssim_map(x, y, 1.0), expected, atol=2e-5, rtol=0)


def test_ssim_of_identical_images_is_one_and_small_images_still_work() -> None:
    x = torch.rand(1, 3, 6, 6)
    torch.testing.assert_close(ssim_map(x, x, 1.0), torch.ones_like(x))
    assert ssim_map(x, 1 - x, 1.0).mean() < 0.5
    ones = torch.ones(1, 1, 6, 6)
    torch.testing.assert_close(weighted_ssim(x, x, ones, 1.0), torch.ones(1))


def test_unknown_kernel_is_refused() -> None:
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="kernel"):
        weighted_ssim(x, x, torch.ones(1, 1, 8, 8), 1.0, kernel="fast")


def test_a_second_backward_through_the_cpu_kernel_is_refused() -> None:
    """The CPU form scales its stored gradient in place, so it refuses to be reused."""
    x, y, weight, dr = _case(1, 2, 12, 12, seed=2)
    x.requires_grad_(True)
    out = weighted_ssim(x, y, weight, dr).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError):
        out.backward()
