"""Gaussian SSIM (Wang et al. 2004): window 11, sigma 1.5, per band, reflect-padded borders.

Two entry points:

- :func:`ssim_map`, the per-pixel map ``(B, C, H, W)`` through plain torch ops (autograd
  differentiates it). Metrics use it; it is also the reference the loss is tested against.
- :func:`weighted_ssim`, the loss term: SSIM averaged over weighted pixels per band, then over
  bands, ``(B,)``. It is one autograd function with a hand-written backward, so no
  intermediate map is kept for autograd. On the CPU it runs the fused per-band kernel of
  :mod:`hyperkd.model.train.ssim_cpu`; elsewhere (CUDA) it runs torch ops: all four blurred
  maps from one batched blur, banded matrix products in eager mode and an 11-tap stencil
  under ``torch.compile`` (which fuses the stencil with the elementwise work).

Both forms compute ``var_x + var_y`` as ``blur(x^2 + y^2) - mu_x^2 - mu_y^2`` (one blur
instead of two), which changes the value only by float32 rounding. The loss always works in
float32, also inside a bf16 autocast region.
"""

from __future__ import annotations

import torch

from hyperkd.model.data.buffers import BufferPool
from hyperkd.model.train import ssim_cpu

__all__ = ["gaussian_window", "ssim_map", "weighted_ssim"]

WINDOW, SIGMA = 11, 1.5
K1, K2 = 0.01, 0.03
COMPILED_BLURS = ("stencil", "matrix")
compiled_blur = "stencil"
"""The blur form ``torch.compile`` traces (benchmarks/train_step.py ``--compiled-blur``): the
fusable 11-tap ``stencil`` or the eager path's banded ``matrix`` products. Both are float32 and
equal to rounding; which one is faster on a GPU is what the benchmark measures."""
_GRAD_BUFFERS = BufferPool()


def gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    """The normalised 1-D Gaussian ``(size,)``, float32."""
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def blur_matrix(n: int, g: torch.Tensor) -> torch.Tensor:
    """(n, n) matrix ``M``: ``M @ v`` blurs ``v`` (length n) with kernel ``g``, reflect-padded."""
    k, pad = g.numel(), g.numel() // 2
    rows = torch.arange(n, device=g.device).view(n, 1).expand(n, k)
    src = (rows + torch.arange(k, device=g.device).view(1, k) - pad).abs()  # (n, k)
    src = torch.where(src > n - 1, 2 * (n - 1) - src, src)  # reflect, edge not repeated
    m = torch.zeros(n, n, device=g.device, dtype=g.dtype)
    return m.index_put_((rows, src), g.expand(n, k), accumulate=True)


def _window_for(h: int, w: int) -> int:
    """The window: 11, or the largest that reflect padding allows on small images."""
    return min(WINDOW, 2 * min(h, w) - 1)


def ssim_map(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: torch.Tensor | float,
    *,
    window: int = WINDOW,
    sigma: float = SIGMA,
) -> torch.Tensor:
    """Per-pixel SSIM of images (B, C, H, W), per band; returns (B, C, H, W).

    ``data_range`` is a float or a tensor broadcastable to (B, C, 1, 1). Borders are
    reflect-padded so the map stays aligned with the image (and its masks); images smaller
    than the window get the largest window reflect padding allows. The separable blur is two
    banded matrix products (``Mh @ t @ Mw^T``), equal to the depthwise convolution to float32
    rounding.
    """
    x, y = x.float(), y.float()
    h, w = x.shape[-2:]
    window = min(window, 2 * min(h, w) - 1)
    g = gaussian_window(window, sigma, x.device)
    m_h, m_w_t = blur_matrix(h, g), blur_matrix(w, g).T  # (H, H), (W, W)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return m_h @ t @ m_w_t  # (B, C, H, W)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )


def _stencil_blur(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable reflect-padded blur of the last two dims as an explicit stencil.

    Under ``torch.compile`` this fuses into one kernel per direction; eagerly it would make
    one pass per tap, so eager code uses the matrix form instead.
    """
    r = g.numel() // 2
    for dim in (-1, -2):
        n = t.shape[dim]
        idx = (torch.arange(-r, n + r, device=t.device)).abs()
        idx = torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)
        padded = t.index_select(dim, idx)
        t = sum(g[k] * padded.narrow(dim, k, n) for k in range(g.numel()))  # type: ignore[assignment]
    return t


def _stencil_blur_t(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The transpose of :func:`_stencil_blur` (``g`` symmetric), as a stencil too.

    Per dim: correlate the zero-padded input with ``g`` (the adjoint of correlating a padded
    frame), then fold the two pads back onto the pixels the reflection copied them from.
    """
    r = g.numel() // 2
    for dim in (-1, -2):
        n = t.shape[dim]
        pad = (2 * r, 2 * r) if dim == -1 else (0, 0, 2 * r, 2 * r)
        zp = torch.nn.functional.pad(t, pad)
        frame = sum(g[k] * zp.narrow(dim, k, n + 2 * r) for k in range(g.numel()))
        body = frame.narrow(dim, r, n)
        left = frame.narrow(dim, 0, r).flip(dim)  # onto pixels 1..r
        right = frame.narrow(dim, r + n, r).flip(dim)  # onto pixels n-1-r..n-2
        zeros = [0] * (2 * (-dim - 1))
        t = (
            body
            + torch.nn.functional.pad(left, (*zeros, 1, n - r - 1))
            + torch.nn.functional.pad(right, (*zeros, n - r - 1, 1))
        )
    return t


def _blur(t: torch.Tensor, g: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """Blur (or its transpose) of the last two dims of ``t``, reflect-padded."""
    h, w = t.shape[-2:]
    if torch.compiler.is_compiling() and compiled_blur == "stencil":
        return _stencil_blur_t(t, g) if transpose else _stencil_blur(t, g)
    m_h, m_w = blur_matrix(h, g), blur_matrix(w, g)
    if transpose:
        return m_h.T @ t @ m_w  # the adjoint of m_h @ t @ m_w.T
    return m_h @ t @ m_w.T


def _stats(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(4, B, C, H, W): blurred x, y, x^2 + y^2 and x y, from one batched blur."""
    return _blur(torch.stack([x, y, x * x + y * y, x * y]), g)


def _terms(m: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """SSIM map and its factors from the blurred maps ``m`` (4, B, C, H, W)."""
    mx, my, q, sxy = m.unbind(0)
    mxy, mm = mx * my, mx * mx + my * my
    a1, a2 = 2 * mxy + c1, 2 * (sxy - mxy) + c2
    b1, b2 = mm + c1, q - mm + c2
    return (a1 * a2) / (b1 * b2), a1, a2, b1, b2


class _WeightedSSIM(torch.autograd.Function):
    """Per-sample weighted SSIM, ``(B,)``, differentiable in ``x`` only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        c1: torch.Tensor,
        c2: torch.Tensor,
        kernel: str,
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        g = gaussian_window(_window_for(h, w), SIGMA, x.device).to(x.dtype)
        wsum = weight.sum(dim=(2, 3)).clamp_min(1e-8)  # (B, 1)
        if kernel == "cpu":
            # The kernel returns the gradient with the value (see ssim_cpu.forward_planes).
            shape = (b * c, h, w) if ctx.needs_input_grad[0] else (0, 1, 1)
            grad = _GRAD_BUFFERS.empty(shape, torch.float32)  # warm pages, not 57 MB of faults
            sums = torch.empty(b * c, dtype=torch.float64)
            ssim_cpu.run_planes(
                ssim_cpu.forward_planes,
                b * c,
                torch.get_num_threads(),
                *_cpu_args(x, y, weight, c1, c2, g),
                c,
                tail=(sums.numpy(), grad.numpy()),
            )
            per_band = sums.view(b, c).float() / wsum  # (B, C)
            ctx.save_for_backward(grad.view_as(x) if grad.numel() else grad, wsum)
        else:
            m = _stats(x, y, g)  # kept for the backward: memory is cheaper than four blurs
            per_band = (_terms(m, c1, c2)[0] * weight).sum(dim=(2, 3)) / wsum
            ctx.save_for_backward(x, y, weight, c1, c2, g, wsum, m)
        return per_band.mean(dim=1)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        if len(ctx.saved_tensors) == 2:  # type: ignore[attr-defined]
            grad, wsum = ctx.saved_tensors  # type: ignore[attr-defined]
            if getattr(ctx, "consumed", False):  # the gradient was scaled in place below
                raise RuntimeError("the fused SSIM loss supports one backward pass per forward")
            ctx.consumed = True  # type: ignore[attr-defined]
            c = grad.shape[1]
            scale = grad_out.float()[:, None] / (c * wsum)  # (B, 1): d out_b / d (S * weight)
            return grad.mul_(scale[:, :, None, None]), None, None, None, None, None
        x, y, weight, c1, c2, g, wsum, m = ctx.saved_tensors  # type: ignore[attr-defined]
        c = x.shape[1]
        scale = grad_out.float()[:, None] / (c * wsum)
        _, a1, a2, b1, b2 = _terms(m, c1, c2)
        mx, my = m[0], m[1]
        inv = (weight * scale[:, :, None, None]) / (b1 * b2)  # (B, C, H, W)
        sw = a1 * a2 * inv
        # d(weighted S) / d(mx, q, sxy), (3, B, C, H, W), without dividing by a1 or a2
        coef = torch.stack(
            [2 * inv * my * (a2 - a1) + 2 * sw * mx * (1 / b2 - 1 / b1), -sw / b2, 2 * a1 * inv]
        )
        d_mx, d_q, d_sxy = _blur(coef, g, transpose=True).unbind(0)
        return d_mx + 2 * x * d_q + y * d_sxy, None, None, None, None, None


def _cpu_args(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    g: torch.Tensor,
) -> tuple[object, ...]:
    b, c, h, w = x.shape
    return (
        x.detach().reshape(b * c, h, w).numpy(),
        y.reshape(b * c, h, w).numpy(),
        weight.reshape(b, h, w).numpy(),
        c1.reshape(b * c).numpy(),
        c2.reshape(b * c).numpy(),
        g.numpy(),
    )


def weighted_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    data_range: torch.Tensor | float,
    *,
    kernel: str | None = None,
) -> torch.Tensor:
    """SSIM per sample (B,): the SSIM map of (B, C, H, W) images averaged over pixels with
    ``weight`` (B, 1, H, W), per band, then over bands.

    Differentiable in ``x`` (the reconstruction); ``y``, ``weight`` and ``data_range`` (float
    or (B, C, 1, 1), per tile and band) are treated as constants. ``kernel``: ``cpu`` (the
    fused kernel, CPU tensors only) or ``torch``; default ``cpu`` on the CPU, else ``torch``.
    """
    b, c = x.shape[:2]
    kernel = kernel or ("cpu" if x.device.type == "cpu" else "torch")
    if kernel not in ("cpu", "torch") or (kernel == "cpu" and x.device.type != "cpu"):
        raise ValueError(f"SSIM kernel {kernel!r} does not run on {x.device.type}")
    with torch.autocast(x.device.type, enabled=False):
        x = x.float().contiguous()
        y = y.detach().float().contiguous()
        weight = weight.detach().float().expand(b, 1, *x.shape[2:]).contiguous()
        dr = torch.as_tensor(data_range, dtype=torch.float32, device=x.device).detach()
        dr = dr.expand(b, c, 1, 1).contiguous()
        apply = _apply_eager if kernel == "cpu" else _WeightedSSIM.apply
        return apply(x, y, weight, (K1 * dr) ** 2, (K2 * dr) ** 2, kernel)  # type: ignore[no-any-return]


# The CPU kernel is compiled code of its own that dynamo cannot trace: keep it out of graphs.
_apply_eager = torch.compiler.disable(_WeightedSSIM.apply)
