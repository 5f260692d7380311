"""The weighted-SSIM loss on the CPU: one fused pass per band image, forward and backward.

Why a compiled kernel: with 200+ bands the SSIM term touches ``(B, C, H, W)`` float32 tensors
of ~57 MB (batch 4, 218 bands, 128 px). Written as torch ops, its five blurs and ~30
elementwise passes each stream such a tensor through memory (and page-fault a fresh one),
which made the term ~80 % of a CPU training step (benchmarks/RESULTS.md). Here every band
image (``H x W``, 64 KB at 128 px) is blurred, scored and differentiated while it sits in the
core's cache, so the whole term reads ``x``, ``y`` and the weight once and writes the
gradient once.

The maths is the torch form's (:mod:`hyperkd.model.train.ssim`): a separable Gaussian blur with
reflect padding (edge not repeated) of ``x``, ``y``, ``x^2 + y^2`` and ``x * y``, then
``S = (2 mx my + c1)(2 (sxy - mx my) + c2) / ((mx^2 + my^2 + c1)(q - mx^2 - my^2 + c2))``.
Blurs accumulate in float32 like the torch form; the weighted sums in float64.

Planes are ``(b, c)`` pairs flattened to ``p = b * C + c``. The kernels release the GIL, so
:func:`run_planes` spreads planes over threads.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np

__all__ = ["forward_planes", "run_planes"]

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


@_jit
def _pad_row(src: np.ndarray, r: int, out: np.ndarray) -> None:
    """``src`` (W,) reflect-padded by ``r`` on each side into ``out`` (W + 2r,)."""
    w = src.shape[0]
    for j in range(w):
        out[r + j] = src[j]
    for j in range(1, r + 1):
        out[r - j] = src[j]
        out[r + w - 1 + j] = src[w - 1 - j]


@_jit
def _correlate(padded: np.ndarray, g: np.ndarray, out: np.ndarray) -> None:
    """``out[j] = sum_k g[k] * padded[j + k]`` (a valid correlation; j-inner loops vectorise)."""
    n = out.shape[0]
    for j in range(n):
        out[j] = g[0] * padded[j]
    for k in range(1, g.shape[0]):
        gk = g[k]
        for j in range(n):
            out[j] += gk * padded[j + k]


@_jit
def _stats(x: np.ndarray, y: np.ndarray, g: np.ndarray, h: np.ndarray, m: np.ndarray) -> None:
    """Blurred ``x``, ``y``, ``x^2 + y^2``, ``x y`` of one plane (H, W) into ``m`` (4, H, W).

    ``h`` (4, H, W) is scratch for the row-blurred maps.
    """
    rows, cols = x.shape
    r = g.shape[0] // 2
    px = np.empty(cols + 2 * r, np.float32)
    py = np.empty(cols + 2 * r, np.float32)
    pq = np.empty(cols + 2 * r, np.float32)
    pxy = np.empty(cols + 2 * r, np.float32)
    for i in range(rows):
        _pad_row(x[i], r, px)
        _pad_row(y[i], r, py)
        for j in range(cols + 2 * r):
            pq[j] = px[j] * px[j] + py[j] * py[j]
            pxy[j] = px[j] * py[j]
        _correlate(px, g, h[0, i])
        _correlate(py, g, h[1, i])
        _correlate(pq, g, h[2, i])
        _correlate(pxy, g, h[3, i])
    for a in range(4):
        for i in range(rows):
            out = m[a, i]
            for k in range(g.shape[0]):
                s = i + k - r
                s = -s if s < 0 else (2 * (rows - 1) - s if s > rows - 1 else s)
                gk, src = g[k], h[a, s]
                if k == 0:
                    for j in range(cols):
                        out[j] = gk * src[j]
                else:
                    for j in range(cols):
                        out[j] += gk * src[j]


@_jit
def forward_planes(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    c1: np.ndarray,
    c2: np.ndarray,
    g: np.ndarray,
    bands: int,
    start: int,
    stop: int,
    out: np.ndarray,
    grad: np.ndarray,
) -> None:
    """``out[p] = sum_pixels SSIM(x[p], y[p]) * w[p // bands]`` for planes ``start..stop``,
    and ``grad[p]``, its gradient in ``x[p]``, when ``grad`` has planes (else shape (0, 1, 1)).

    The gradient is linear in the backward's incoming scale, so it is computed here while the
    plane's blurred maps are in cache, instead of recomputing them in the backward.
    x, y: (P, H, W) float32; w: (B, H, W) float32; c1, c2: (P,) float32; out: (P,) float64;
    grad: (P, H, W) float32 or empty.
    """
    _, rows, cols = x.shape
    r = g.shape[0] // 2
    want_grad = grad.shape[0] > 0
    h = np.empty((4, rows, cols), np.float32)
    m = np.empty((4, rows, cols), np.float32)
    tp = np.empty((rows + 2 * r, cols), np.float32)
    row = np.empty(cols + 2 * r, np.float32)
    for p in range(start, stop):
        _stats(x[p], y[p], g, h, m)
        wp, k1, k2 = w[p // bands], c1[p], c2[p]
        acc = 0.0
        for i in range(rows):
            for j in range(cols):
                mx, my, q, sxy = m[0, i, j], m[1, i, j], m[2, i, j], m[3, i, j]
                mxy, mm = mx * my, mx * mx + my * my
                a1, a2 = 2 * mxy + k1, 2 * (sxy - mxy) + k2
                ib1, ib2 = 1 / (mm + k1), 1 / (q - mm + k2)
                wij = wp[i, j]
                inv = ib1 * ib2 * wij  # weight / (b1 b2)
                sw = a1 * a2 * inv  # SSIM * weight
                acc += sw
                # d(S w)/d(mx), d(q), d(sxy), written without dividing by a1 or a2
                h[0, i, j] = 2 * inv * my * (a2 - a1) + 2 * sw * mx * (ib2 - ib1)
                h[1, i, j] = -sw * ib2
                h[2, i, j] = 2 * a1 * inv
        out[p] = acc
        if not want_grad:
            continue
        for a in range(3):
            _blur_adjoint(h[a], g, tp, row)
        xp, yp, gp = x[p], y[p], grad[p]
        for i in range(rows):
            for j in range(cols):
                gp[i, j] = h[0, i, j] + 2 * xp[i, j] * h[1, i, j] + yp[i, j] * h[2, i, j]


@_jit
def _blur_adjoint(coef: np.ndarray, g: np.ndarray, tp: np.ndarray, row: np.ndarray) -> None:
    """``coef`` (H, W) <- its image under the transposed reflect-padded blur, in place.

    ``tp`` (H + 2r, W) and ``row`` (W + 2r,) are scratch. The transpose of "reflect-pad, then
    correlate" is "scatter into the padded frame, then fold the pads back onto the pixels they
    copied".
    """
    rows, cols = coef.shape
    kk = g.shape[0]
    r = kk // 2
    tp[:] = 0.0
    for i in range(rows):
        for k in range(kk):
            gk, dst = g[k], tp[i + k]
            for j in range(cols):
                dst[j] += gk * coef[i, j]
    for d in range(1, r + 1):
        for j in range(cols):
            tp[r + d, j] += tp[r - d, j]
            tp[r + rows - 1 - d, j] += tp[r + rows - 1 + d, j]
    for i in range(rows):
        src = tp[r + i]
        row[:] = 0.0
        for k in range(kk):
            gk = g[k]
            for j in range(cols):
                row[j + k] += gk * src[j]
        for d in range(1, r + 1):
            row[r + d] += row[r - d]
            row[r + cols - 1 - d] += row[r + cols - 1 + d]
        for j in range(cols):
            coef[i, j] = row[r + j]


def run_planes(
    kernel: Callable[..., None], planes: int, threads: int, *args: Any, tail: tuple[Any, ...]
) -> None:
    """``kernel(*args, start, stop, *tail)`` over ``planes`` split into ``threads`` runs."""
    threads = max(1, min(threads, planes))
    if threads == 1:
        kernel(*args, 0, planes, *tail)
        return
    bounds = np.linspace(0, planes, threads + 1).astype(int)
    with ThreadPoolExecutor(threads) as pool:
        for f in [
            pool.submit(kernel, *args, int(lo), int(hi), *tail)
            for lo, hi in itertools.pairwise(bounds)
        ]:
            f.result()
