"""Significance maps: where an EnMAP scene has spatial structure, one score per ViT patch.

The student's masking hides the most structured patches first (HyperKD's spatial
feature-guided masking). Structure is measured twice, on a reduced image of the scene:

- **Gabor energy**: ``sum_(channel, filter) |x * g|**2`` over a bank of complex Gabor filters.
- **Wavelet energy**: detail energy of a 2-D DWT, each level brought back to the pixel grid.

Then :func:`patch_scores` averages the energy per patch (16 px, Prithvi's patch) over valid
pixels. Invalid pixels (``valid`` False, or nodata in a channel) are filled with the local mean
of valid neighbours before filtering (:func:`hyperkd.pipeline.features.texture.fill_invalid`), so holes
and cloud masks create no texture, and never enter a patch mean. A patch with no valid pixel
scores 0: nothing to reconstruct there, so it ranks last.

Defaults and why:

- Input ``"teacher"``: the six aggregated teacher bands, each normalised with the Prithvi
  preset's mean/std, i.e. exactly the image the teacher sees. The constants are fixed, so the
  score needs no extra pass over the scene, is identical in every chunk and comparable across
  scenes; and since the six stds are all ~1150-1400, no band dominates. Options: ``"pca"``
  (first ``n_components`` principal components of the valid bands, fitted per scene on a
  regular sample of valid pixels, scaled by the first component's std so that the
  low-variance, noisier components keep their smaller weight) or ``"all"`` (every valid band,
  standardised per scene on the same sample).
- Gabor: wavelengths 4, 8, 16 px (one octave apart, from the finest resolvable period to one
  ViT patch), 4 orientations (0, 45, 90, 135 deg); sigma = 0.56 wavelength, which gives a
  one-octave frequency bandwidth (sigma/lambda = sqrt(ln 2 / 2) / pi * 3 = 0.56), so the
  octave-spaced bank tiles the frequency plane without gaps; isotropic envelope (aspect 1);
  kernel size = the odd integer >= 6 sigma (+-3 sigma holds 99.7 % of the envelope).
- Wavelet: db2 (the shortest Daubechies with two vanishing moments: linear ramps such as
  illumination gradients give no detail energy), 2 levels (periods 2-8 px, within a patch).
- Chunks: 512 px (a multiple of the patch and of ``2**levels``); the halo is derived from the
  filters (:func:`hyperkd.pipeline.features.texture.map_with_halo`), so results do not depend on it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from math import lcm
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from hyperkd.pipeline.features import texture
from hyperkd.pipeline.features.aggregate import TEACHER_DIM, TEACHER_NODATA, input_units
from hyperkd.pipeline.sensors import prithvi_preset

InputKind = Literal["teacher", "pca", "all"]


@dataclass(frozen=True)
class GaborConfig:
    """Gabor filter bank (see module doc for the reason behind each default)."""

    wavelengths_px: tuple[float, ...] = (4.0, 8.0, 16.0)
    orientations: int = 4
    sigma_per_wavelength: float = 0.56
    aspect: float = 1.0
    kernel_sigmas: float = 6.0

    def __post_init__(self) -> None:
        if not self.wavelengths_px or min(self.wavelengths_px) < 2:
            raise ValueError(
                f"Gabor wavelengths must be >= 2 px (Nyquist), got {self.wavelengths_px}"
            )
        if self.orientations < 1 or self.sigma_per_wavelength <= 0 or self.kernel_sigmas <= 0:
            raise ValueError(
                "Gabor orientations, sigma_per_wavelength and kernel_sigmas must be positive"
            )

    @property
    def bank(self) -> texture.GaborBank:
        """Hashable bank parameters (:func:`hyperkd.pipeline.features.texture.gabor_bank`)."""
        wavelengths = tuple(float(w) for w in self.wavelengths_px)
        return (
            wavelengths,
            self.orientations,
            self.sigma_per_wavelength,
            self.aspect,
            self.kernel_sigmas,
        )

    def kernels(self) -> tuple[np.ndarray, ...]:
        """The complex kernels, ``(K, K)`` each."""
        return texture.gabor_bank(*self.bank)


@dataclass(frozen=True)
class WaveletConfig:
    """2-D DWT (pywavelets): wavelet name and number of levels."""

    wavelet: str = "db2"
    levels: int = 2

    def __post_init__(self) -> None:
        import pywt

        if self.wavelet not in pywt.wavelist(kind="discrete"):
            raise ValueError(f"unknown discrete wavelet {self.wavelet!r}")
        if not 1 <= self.levels <= 6:
            raise ValueError(f"wavelet levels must be 1..6, got {self.levels}")


@dataclass(frozen=True)
class SignificanceConfig:
    """Everything that determines the significance maps (recorded in the cube's attrs)."""

    gabor: GaborConfig = field(default_factory=GaborConfig)
    wavelet: WaveletConfig = field(default_factory=WaveletConfig)
    input: InputKind = "teacher"
    n_components: int = 3
    """Principal components kept for ``input="pca"``."""
    sample_stride: int = 8
    """Every n-th pixel in y and x is sampled to fit PCA / per-band stats (``pca``/``all``)."""
    preset: str = "prithvi-eo-1.0-100m"
    """Prithvi preset whose mean/std normalise the teacher bands (``input="teacher"``)."""
    patch_size: int = 16
    chunk_px: int = 512

    def __post_init__(self) -> None:
        if self.input not in ("teacher", "pca", "all"):
            raise ValueError(
                f"unknown significance input {self.input!r}: choose teacher, pca or all"
            )
        if (
            self.patch_size < 1
            or self.chunk_px < 1
            or self.sample_stride < 1
            or self.n_components < 1
        ):
            raise ValueError("patch_size, chunk_px, sample_stride and n_components must be >= 1")

    @property
    def align(self) -> int:
        """Chunk boundaries are multiples of this: whole patches and whole DWT cells."""
        return lcm(self.patch_size, 2**self.wavelet.levels)

    def to_attrs(self) -> str:
        """The config as a JSON string (stable key order) for cube attrs and idempotency.

        ``chunk_px`` is left out: results do not depend on it (tested), so changing it must
        not make a rerun recompute.
        """
        params = asdict(self)
        params.pop("chunk_px")
        return json.dumps(params, sort_keys=True)


def _as_dask(image: xr.DataArray) -> da.Array:
    data = image.data
    return (
        data
        if isinstance(data, da.Array)
        else da.from_array(np.asarray(data), chunks=(1, -1, -1, -1))
    )


def energies(
    image: xr.DataArray,
    gabor: GaborConfig | None,
    wavelet: WaveletConfig | None,
    *,
    chunk_px: int = 512,
    align: int = 16,
) -> xr.DataArray:
    """Gabor and/or wavelet energy ``(time, filter, y, x)`` float32 in one pass over ``image``.

    ``image``: ``(time, channel, y, x)`` float, NaN where a pixel is invalid; the energy is NaN
    there. One fill serves both filters; its sigma follows the longest filter reach, so the
    fill always reaches one pixel further than any filter (:func:`texture.fill_sigma`).
    ``align`` must be a multiple of ``2**levels`` (the DWT's dyadic grid).
    """
    if image.ndim != 4 or image.dims[0] != "time" or image.dims[2:] != ("y", "x"):
        raise ValueError(f"image dims are {image.dims}, expected (time, channel, y, x)")
    radius, names = 0, []
    if gabor is not None:
        radius = max(radius, texture.gabor_radius(gabor.kernels()))
        names.append("gabor")
    if wavelet is not None:
        if align % 2**wavelet.levels:
            raise ValueError(f"align {align} is not a multiple of 2**levels = {2**wavelet.levels}")
        radius = max(radius, texture.wavelet_radius(wavelet.wavelet, wavelet.levels))
        names.append("wavelet")
    if not names:
        raise ValueError("energies: choose at least one of gabor and wavelet")
    sigma = texture.fill_sigma(radius)
    reach = radius + int(np.ceil(texture.FILL_TRUNCATE * sigma))
    bank = gabor.bank if gabor is not None else None
    wav = (wavelet.wavelet, wavelet.levels) if wavelet is not None else None

    def block(b: np.ndarray) -> np.ndarray:
        return texture.energy_block(b, sigma, bank, wav)

    data = _as_dask(image).astype(np.float32)
    out = texture.map_with_halo(
        data, block, depth=reach, chunk_px=chunk_px, align=align, n_out=len(names)
    )
    coords = {c: image.coords[c] for c in ("time", "y", "x") if c in image.coords}
    coords["filter"] = names
    return xr.DataArray(out, dims=("time", "filter", "y", "x"), coords=coords, name="energy")


def gabor_energy(
    image: xr.DataArray, cfg: GaborConfig = GaborConfig(), *, chunk_px: int = 512, align: int = 16
) -> xr.DataArray:
    """Gabor energy ``(time, y, x)`` float32 of ``image`` ``(time, channel, y, x)``.

    ``image`` is float, NaN where a pixel is invalid; the energy is NaN there. Dimensionless
    (squared units of ``image``), summed over channels and the whole bank.
    """
    e = energies(image, cfg, None, chunk_px=chunk_px, align=align)
    return e.isel(filter=0, drop=True).rename("gabor_energy")


def wavelet_energy(
    image: xr.DataArray,
    cfg: WaveletConfig = WaveletConfig(),
    *,
    chunk_px: int = 512,
    align: int | None = None,
) -> xr.DataArray:
    """Wavelet detail energy ``(time, y, x)`` float32 of ``image`` ``(time, channel, y, x)``.

    NaN where a pixel is invalid. ``align`` (default ``2**levels``) must be a multiple of
    ``2**levels`` so that every chunk shares the scene's dyadic grid.
    """
    align = align if align is not None else 2**cfg.levels
    e = energies(image, None, cfg, chunk_px=chunk_px, align=align)
    return e.isel(filter=0, drop=True).rename("wavelet_energy")


def _patch_block(e: np.ndarray, patch: int, empty: float) -> np.ndarray:
    t, h, w = e.shape
    ph, pw = -(-h // patch), -(-w // patch)
    full = np.full((t, ph * patch, pw * patch), np.nan, dtype=np.float64)
    full[:, :h, :w] = e
    cells = full.reshape(t, ph, patch, pw, patch)
    ok = np.isfinite(cells)
    total = np.where(ok, cells, 0.0).sum(axis=(2, 4))
    count = ok.sum(axis=(2, 4))
    return np.where(count > 0, total / np.maximum(count, 1), empty).astype(np.float32)


def patch_scores(energy: xr.DataArray, patch: int = 16, *, empty: float = 0.0) -> xr.DataArray:
    """Mean energy per ``patch x patch`` patch over finite pixels: ``(time, py, px)`` float32.

    Patches at the right/bottom edge may be partial. A patch with no finite pixel gets
    ``empty``. ``py``/``px`` are patch indices: patch ``(i, j)`` covers pixels
    ``[i*patch, (i+1)*patch) x [j*patch, (j+1)*patch)``.
    """
    data = energy.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(1, -1, -1))
    ny, nx = data.shape[1:]
    data = data.rechunk(
        (
            1,
            texture.aligned_chunks(ny, max(data.chunksize[1], patch), patch),
            texture.aligned_chunks(nx, max(data.chunksize[2], patch), patch),
        )
    )
    out = data.map_blocks(
        _patch_block,
        patch,
        empty,
        dtype=np.float32,
        chunks=(
            data.chunks[0],
            tuple(-(-c // patch) for c in data.chunks[1]),
            tuple(-(-c // patch) for c in data.chunks[2]),
        ),
        meta=np.empty((0, 0, 0), dtype=np.float32),
    )
    coords = {"time": energy.coords["time"]} if "time" in energy.coords else {}
    coords.update({"py": np.arange(out.shape[1]), "px": np.arange(out.shape[2])})
    return xr.DataArray(out, dims=("time", "py", "px"), coords=coords, attrs={"patch_size": patch})


def _teacher_image(teacher: xr.DataArray, preset: str) -> xr.DataArray:
    p = prithvi_preset(preset)
    names = [str(n) for n in teacher.coords[TEACHER_DIM].values]
    if names != list(p.bands):
        raise ValueError(f"teacher bands {names} do not match the {preset} order {list(p.bands)}")
    x = teacher.astype(np.float32)
    if np.issubdtype(teacher.dtype, np.integer):
        x = x.where(teacher != TEACHER_NODATA)
    mean = xr.DataArray(np.array(p.mean, np.float32), dims=TEACHER_DIM)
    std = xr.DataArray(np.array(p.std, np.float32), dims=TEACHER_DIM)
    return (x - mean) / std


def _spectral_image(reflectance: xr.DataArray, cfg: SignificanceConfig) -> xr.DataArray:
    """``pca``/``all`` input: per-scene projection fitted on a strided sample of valid pixels."""
    if "valid_band" not in reflectance.coords:
        raise ValueError("reflectance has no 'valid_band' coord")
    fill, scale = input_units(reflectance, None)
    refl = reflectance.isel(band=np.flatnonzero(np.asarray(reflectance.coords["valid_band"], bool)))
    refl = refl.astype(np.float32)
    refl = refl.where(np.isfinite(refl) & (refl != fill)) * np.float32(scale)
    s = cfg.sample_stride
    sample = refl.isel(y=slice(s // 2, None, s), x=slice(s // 2, None, s)).values  # (t, b, ys, xs)
    scenes = []
    for t in range(refl.sizes["time"]):
        px = sample[t].reshape(sample.shape[1], -1).T
        px = px[np.isfinite(px).all(axis=1)].astype(np.float64)
        if len(px) < max(2, cfg.n_components + 1):
            raise ValueError(
                f"scene {t}: only {len(px)} valid sample pixels, too few for {cfg.input} statistics"
            )
        mean = px.mean(axis=0)
        if cfg.input == "all":
            std = px.std(axis=0)
            proj = np.diag(1.0 / np.where(std > 0, std, 1.0))
        else:
            evals, evecs = np.linalg.eigh(np.cov(px, rowvar=False))
            top = np.argsort(evals)[::-1][: cfg.n_components]
            vecs = evecs[:, top]
            vecs *= np.sign(
                vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])]
            )  # sign fixed
            proj = vecs / np.sqrt(max(evals[top[0]], 1e-12))
        x = refl.isel(time=t) - xr.DataArray(mean.astype(np.float32), dims="band")
        p = xr.DataArray(proj.astype(np.float32), dims=("band", "channel"))
        scenes.append(xr.dot(x, p, dim="band").transpose("channel", "y", "x"))
    return xr.concat(scenes, dim="time").transpose("time", "channel", "y", "x")


def reduced_image(
    cfg: SignificanceConfig,
    valid: xr.DataArray,
    *,
    teacher: xr.DataArray | None = None,
    reflectance: xr.DataArray | None = None,
) -> xr.DataArray:
    """The image the filters see: ``(time, channel, y, x)`` float32, NaN where invalid."""
    if cfg.input == "teacher":
        if teacher is None:
            raise ValueError("significance input 'teacher' needs the teacher bands")
        img = _teacher_image(teacher, cfg.preset)
    else:
        if reflectance is None:
            raise ValueError(f"significance input {cfg.input!r} needs the reflectance")
        img = _spectral_image(reflectance, cfg)
    img = img.rename({img.dims[1]: "channel"}).astype(np.float32)
    return img.where(valid.astype(bool)).transpose("time", "channel", "y", "x")


def significance_maps(
    teacher_bands: xr.DataArray | None,
    valid: xr.DataArray,
    cfg: SignificanceConfig = SignificanceConfig(),
    *,
    reflectance: xr.DataArray | None = None,
) -> xr.Dataset:
    """``significance_gabor`` and ``significance_wavelet`` ``(time, py, px)`` float32, lazily.

    ``teacher_bands``: ``(time, teacher_band, y, x)`` from
    :func:`hyperkd.pipeline.features.aggregate.teacher_bands`; ``valid``: ``(time, y, x)`` bool;
    ``reflectance``: the cube's ``(time, band, y, x)``, needed for ``input="pca"``/``"all"``.
    """
    img = reduced_image(cfg, valid, teacher=teacher_bands, reflectance=reflectance)
    both = energies(img, cfg.gabor, cfg.wavelet, chunk_px=cfg.chunk_px, align=cfg.align)
    gabor, wav = both.sel(filter="gabor", drop=True), both.sel(filter="wavelet", drop=True)
    attrs = {"patch_size": cfg.patch_size, "hyperkd:significance": cfg.to_attrs(), "units": "1"}
    ds = xr.Dataset(
        {
            "significance_gabor": patch_scores(gabor, cfg.patch_size),
            "significance_wavelet": patch_scores(wav, cfg.patch_size),
        }
    )
    ds["significance_gabor"].attrs = {**attrs, "long_name": "mean Gabor energy per ViT patch"}
    ds["significance_wavelet"].attrs = {
        **attrs,
        "long_name": "mean wavelet detail energy per ViT patch",
    }
    return ds
