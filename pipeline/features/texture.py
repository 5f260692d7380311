"""Texture energy on numpy blocks, and a halo map that makes it independent of dask chunking.

Used by :mod:`hyperkd.pipeline.features.significance`; everything here works on plain arrays:

- :func:`gabor_bank`: complex Gabor kernels (even = cos part, odd = sin part).
- :func:`fill_invalid`: normalised-convolution fill of invalid (NaN) pixels with the local
  Gaussian-weighted mean of the valid ones, so that nodata and cloud holes do not create edges.
- :func:`gabor_scene`, :func:`wavelet_scene`: filled ``(channel, H, W)`` -> energy ``(H, W)``;
  :func:`energy_block` fills ``(time, channel, H, W)`` blocks (NaN = invalid) once and runs
  either or both, -> ``(time, n, H, W)`` float32, NaN at invalid pixels.
- :func:`map_with_halo`: run a block function over ``(time, y, x)`` chunks with a halo so that
  the result equals the one-chunk result, including the DWT's dyadic grid.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from math import ceil

import dask.array as da
import numpy as np
import pywt
import scipy.fft
from scipy.ndimage import gaussian_filter

FILL_TRUNCATE = 4.0
"""The fill's Gaussian is cut at 4 sigma, so its reach is exactly ``ceil(4 * sigma)`` px."""


@lru_cache(maxsize=8)
def gabor_bank(
    wavelengths_px: tuple[float, ...],
    orientations: int,
    sigma_per_wavelength: float,
    aspect: float,
    kernel_sigmas: float,
) -> tuple[np.ndarray, ...]:
    """Complex Gabor kernels, one per (wavelength, orientation), each ``(K, K)`` complex128.

    ``K`` = the odd integer >= ``kernel_sigmas * sigma``. The even (real) part has its mean
    removed so that a flat image gives exactly zero response; each kernel has unit L2 norm so
    that white noise has the same energy in every filter (no wavelength dominates by size).
    """
    kernels = []
    for lam in wavelengths_px:
        sigma = sigma_per_wavelength * lam
        size = ceil(kernel_sigmas * sigma)
        size += 1 - size % 2
        r = np.arange(size, dtype=np.float64) - size // 2
        yy, xx = np.meshgrid(r, r, indexing="ij")
        for i in range(orientations):
            theta = np.pi * i / orientations
            u = xx * np.cos(theta) + yy * np.sin(theta)
            v = -xx * np.sin(theta) + yy * np.cos(theta)
            envelope = np.exp(-(u**2 + (aspect * v) ** 2) / (2 * sigma**2))
            even = envelope * np.cos(2 * np.pi * u / lam)
            even -= envelope * (even.sum() / envelope.sum())  # zero DC
            odd = envelope * np.sin(2 * np.pi * u / lam)  # odd: zero DC by symmetry
            k = even + 1j * odd
            kernels.append(k / np.sqrt((np.abs(k) ** 2).sum()))
    return tuple(kernels)


def gabor_radius(kernels: tuple[np.ndarray, ...]) -> int:
    """Half the largest kernel size, px: how far a Gabor response reaches."""
    return max(k.shape[0] for k in kernels) // 2


def wavelet_radius(wavelet: str, levels: int) -> int:
    """Reach of the level-``levels`` detail coefficients in px, plus one coarse cell of slack.

    A level-``L`` coefficient sees ``(2**L - 1) * (F - 1) + 1`` pixels (``F`` = filter length);
    the upsampled energy of one coefficient covers ``2**L`` pixels near the support's centre.
    """
    f = pywt.Wavelet(wavelet).dec_len
    return (2**levels - 1) * (f - 1) + 1 + 2**levels


def fill_sigma(radius: int) -> float:
    """Fill sigma so that the fill reaches one pixel beyond a filter of ``radius`` px.

    Beyond its reach the fill leaves 0 (the normalised mean); that step then lies further from
    every valid pixel than any filter reaches, so it never shows in a valid pixel's energy.
    """
    return (radius + 1) / FILL_TRUNCATE


def fill_invalid(img: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Fill NaN pixels of ``img`` ``(channel, H, W)``; returns (filled float64, valid (H, W)).

    A pixel is valid when every channel is finite. Invalid pixels take the Gaussian-weighted
    mean of valid pixels within ``ceil(4 sigma)`` px (normalised convolution), else 0.
    """
    valid = np.isfinite(img).all(axis=0)
    x = np.where(valid[None], img, 0.0).astype(np.float64)
    if valid.all():
        return x, valid
    weight = gaussian_filter(
        valid.astype(np.float64), sigma, mode="nearest", truncate=FILL_TRUNCATE
    )
    local = gaussian_filter(x, sigma, mode="nearest", truncate=FILL_TRUNCATE, axes=(1, 2))
    reach = weight > 1e-12
    local = np.divide(local, weight, out=np.zeros_like(local), where=reach[None])
    return np.where(valid[None], x, local), valid


GaborBank = tuple[tuple[float, ...], int, float, float, float]
"""The arguments of :func:`gabor_bank`: hashable, so spectra can be cached per block shape."""


@lru_cache(maxsize=4)
def _kernel_spectra(bank: GaborBank, shape: tuple[int, int]) -> np.ndarray:
    """FFTs of the kernels centred at (0, 0) on a ``shape`` grid: ``(kernel, H, W)`` complex64.

    At most 4 block shapes occur in one run (first, interior, last, single chunk).
    """
    kernels = gabor_bank(*bank)
    out = np.empty((len(kernels), *shape), dtype=np.complex64)
    for i, k in enumerate(kernels):
        grid = np.zeros(shape, dtype=np.complex128)
        r = k.shape[0] // 2
        grid[: k.shape[0], : k.shape[1]] = k
        out[i] = scipy.fft.fft2(np.roll(grid, (-r, -r), axis=(0, 1)))
    return out


def fft_shape(h: int, w: int) -> tuple[int, int]:
    """FFT grid for an ``h x w`` block: the next fast length after rounding up to 32.

    pocketfft is ~30 % slower on 625 (5**4) than on 640 (2**7 * 5); multiples of 32 avoid
    such odd-radix sizes. Any size >= the block is correct: the wrap stays in the halo.
    """
    return tuple(scipy.fft.next_fast_len(-(-n // 32) * 32) for n in (h, w))  # type: ignore[return-value]


def gabor_scene(x: np.ndarray, bank: GaborBank) -> np.ndarray:
    """Gabor energy ``sum_(channel, kernel) |x * g|**2`` of filled ``x`` ``(channel, H, W)``.

    FFT convolution with circular wrap: the wrap only corrupts a border as wide as the kernel
    radius, which lies inside the halo and is trimmed. Returns ``(H, W)`` float64.
    """
    _, h, w = x.shape
    shape = fft_shape(h, w)
    spectra = _kernel_spectra(bank, shape)
    spec = scipy.fft.fft2(x.astype(np.float32), s=shape, axes=(1, 2))
    energy = np.zeros(shape, dtype=np.float64)
    for g in spectra:
        y = scipy.fft.ifft2(spec * g[None], axes=(1, 2))
        energy += (y.real**2 + y.imag**2).sum(axis=0)
    return energy[:h, :w]


def wavelet_scene(x: np.ndarray, wavelet: str, levels: int) -> np.ndarray:
    """Wavelet detail energy of filled ``x`` ``(channel, H, W)`` whose origin is dyadic-aligned.

    Per level ``l``: ``sum_channel (cH**2 + cV**2 + cD**2) / 4**l``, each coefficient spread
    over the ``2**l x 2**l`` pixels at the centre of its support, summed over levels. Dividing by
    ``4**l`` makes the map an energy density: it sums to the detail energy (Parseval), so a
    coarse level does not count 4x per level just because its cells are bigger.
    """
    _, h, w = x.shape
    f = pywt.Wavelet(wavelet).dec_len
    # periodization keeps coefficient i of level l at pixels [2**l i, ...) of the block,
    # so aligned blocks share one dyadic grid; its wrap stays inside the halo.
    coeffs = pywt.wavedec2(x, wavelet, mode="periodization", level=levels, axes=(1, 2))
    energy = np.zeros((h, w), dtype=np.float64)
    for depth, (ch, cv, cd) in enumerate(coeffs[1:]):
        lev = levels - depth
        e = (ch**2 + cv**2 + cd**2).sum(axis=0) / 4.0**lev
        cell = 2**lev
        up = np.repeat(np.repeat(e, cell, axis=0), cell, axis=1)
        shift = round((cell - 1) * (f - 2) / 2)
        energy += np.roll(up, (shift, shift), axis=(0, 1))[:h, :w]
    return energy


def energy_block(
    block: np.ndarray,
    sigma: float,
    bank: GaborBank | None = None,
    wavelet: tuple[str, int] | None = None,
) -> np.ndarray:
    """Fill, then Gabor and/or wavelet energy of ``(time, channel, H, W)`` blocks.

    Returns ``(time, n, H, W)`` float32, NaN at invalid pixels; ``n`` = 1 or 2 (Gabor first).
    One fill serves both filters.
    """
    t, _, h, w = block.shape
    n = (bank is not None) + (wavelet is not None)
    out = np.full((t, n, h, w), np.nan, dtype=np.float32)
    for i in range(t):
        x, valid = fill_invalid(block[i], sigma)
        if not valid.any():
            continue
        maps = []
        if bank is not None:
            maps.append(gabor_scene(x, bank))
        if wavelet is not None:
            maps.append(wavelet_scene(x, *wavelet))
        for k, m in enumerate(maps):
            out[i, k] = np.where(valid, m, np.nan)
    return out


def aligned_chunks(n: int, chunk: int, align: int) -> tuple[int, ...]:
    """Chunk sizes for an axis of ``n`` px: multiples of ``align`` except the last."""
    chunk = max(align, chunk // align * align)
    sizes = [chunk] * (n // chunk)
    if n % chunk:
        sizes.append(n % chunk)
    return tuple(sizes)


def _symmetric_pad(x: da.Array, axis: int, depth: int) -> da.Array:
    """Mirror-pad ``axis`` by ``depth`` (edge pixel repeated, like ``np.pad(..., 'symmetric')``).

    Built by index so that it also works when ``depth`` exceeds the axis length.
    """
    idx = np.pad(np.arange(x.shape[axis]), depth, mode="symmetric")
    return da.take(x, idx, axis=axis)


def map_with_halo(
    image: da.Array,
    block_fn: Callable[[np.ndarray], np.ndarray],
    *,
    depth: int,
    chunk_px: int,
    align: int,
    n_out: int = 1,
) -> da.Array:
    """Apply ``block_fn`` to ``image`` ``(time, channel, y, x)`` -> ``(time, n_out, y, x)``.

    The scene is mirror-padded by ``depth`` (rounded up to ``align``), cut into chunks whose
    boundaries are multiples of ``align`` (a multiple of ``2**levels`` for the DWT), and each
    chunk is processed with ``depth`` px of its neighbours. So every block starts on the same
    dyadic grid and sees everything its core depends on: the result is the one-chunk result.
    """
    depth = ceil(depth / align) * align
    chunk_px = max(chunk_px, depth)
    _, _, ny, nx = image.shape
    padded = _symmetric_pad(_symmetric_pad(image, 2, depth), 3, depth)

    def padded_chunks(n: int) -> tuple[int, ...]:
        sizes = list(aligned_chunks(n, chunk_px, align))
        sizes[0] += depth
        sizes[-1] += depth
        return tuple(sizes)

    padded = padded.rechunk((1, -1, padded_chunks(ny), padded_chunks(nx)))
    halo = {0: 0, 1: 0, 2: depth, 3: depth}
    ext = da.overlap.overlap(padded, depth=halo, boundary="none")
    out = ext.map_blocks(
        block_fn,
        dtype=np.float32,
        chunks=(ext.chunks[0], (n_out,), ext.chunks[2], ext.chunks[3]),
        meta=np.empty((0, 0, 0, 0), dtype=np.float32),
    )
    out = da.overlap.trim_internal(out, halo, boundary="none")
    return out[:, :, depth : depth + ny, depth : depth + nx]
