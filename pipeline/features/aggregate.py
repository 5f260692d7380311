"""Band aggregation: the six synthetic HLS bands the Prithvi teacher sees, from an EnMAP cube.

Every method is a per-pixel weighted mean over EnMAP bands,

    teacher[k] = sum_b W[k, b] * m_b * x_b / sum_b W[k, b] * m_b,

with ``m_b`` = 1 where band ``b`` holds a value at that pixel. ``W`` is built once from the
cube's own band metadata (wavelength, FWHM, valid_band), so bad bands (``W = 0``) and per-pixel
nodata (``m = 0``) never enter a mean; a pixel with no valid contribution becomes nodata.

- ``method="mean"``: ``W[k, b] = 1`` for the valid bands whose centre lies in the HLS range of
  teacher band ``k`` (:func:`hyperkd.pipeline.sensors.alignment`, ranges from ``catalogs/``).
- ``method="srf"``: ``W[k, b] = integral R_k(l) g_b(l) dl``, with ``g_b`` the Gaussian response
  of EnMAP band ``b`` (centre, FWHM) and ``R_k`` either a Gaussian over the HLS range
  (centre = mid-range, FWHM = range width) or a tabulated response (:func:`srf_from_npz`).

The computation is lazy: one dask task per ``(time, y, x)`` chunk with all bands in the chunk.
Output units are Prithvi's: int16 reflectance x 10000, nodata -9999 (HLS convention).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import IO, Literal

import dask.array as da
import numpy as np
import xarray as xr

from hyperkd.pipeline.cube.schema import ENMAP_NODATA, TEACHER_NODATA
from hyperkd.pipeline.sensors import EnmapBands, HlsSensor, SpectralBand, alignment, hls_sensor

TEACHER_DIM = "teacher_band"
"""Dim name of the teacher band axis (distinct from the cube's 224-long ``band``)."""
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
# Weights below this fraction of a teacher band's largest weight are dropped: far Gaussian
# tails would otherwise let a pixel whose in-range bands are all nodata get a "mean" made of
# bands hundreds of nm away.
SRF_MIN_RELATIVE_WEIGHT = 1e-3

Method = Literal["mean", "srf"]
TabulatedSrf = Mapping[str, tuple[np.ndarray, np.ndarray]]
"""Teacher band name -> (wavelength nm, response), both 1-D."""


def cube_bands(
    reflectance: xr.DataArray, valid_band: np.ndarray | xr.DataArray | None = None
) -> EnmapBands:
    """The cube's own band set from its ``wavelength``/``fwhm``/``valid_band`` coords.

    ``valid_band`` overrides the coord when given; shape ``(band,)``.
    """
    for name in ("wavelength", "fwhm"):
        if name not in reflectance.coords:
            raise ValueError(f"reflectance has no {name!r} coord: cannot align bands to HLS")
    if valid_band is None:
        if "valid_band" not in reflectance.coords:
            raise ValueError("reflectance has no 'valid_band' coord and no valid_band was given")
        valid_band = reflectance.coords["valid_band"]
    valid = np.asarray(valid_band, dtype=bool)
    centres = np.asarray(reflectance.coords["wavelength"], dtype=np.float64)
    fwhms = np.asarray(reflectance.coords["fwhm"], dtype=np.float64)
    if not (valid.shape == centres.shape == fwhms.shape == (reflectance.sizes["band"],)):
        raise ValueError(
            f"band metadata shapes {centres.shape}, {fwhms.shape}, {valid.shape} do not match "
            f"{reflectance.sizes['band']} bands"
        )
    bands = tuple(
        SpectralBand(str(i), float(c), float(f))
        for i, (c, f) in enumerate(zip(centres, fwhms, strict=True))
    )
    return EnmapBands(bands, nodata_bands=frozenset(np.flatnonzero(~valid).tolist()))


def mean_weights(bands: EnmapBands, hls: HlsSensor | None = None) -> np.ndarray:
    """Range-mean weights ``(teacher_band, band)`` float64: 1 inside each HLS range, else 0."""
    hls = hls if hls is not None else hls_sensor()
    w = np.zeros((len(hls.roles), len(bands)), dtype=np.float64)
    for k, idx in enumerate(alignment(bands, hls).values()):
        w[k, idx] = 1.0
    return w


def srf_weights(
    bands: EnmapBands, srf: TabulatedSrf | None = None, hls: HlsSensor | None = None
) -> np.ndarray:
    """SRF weights ``(teacher_band, band)`` float64, each row summing to 1 over valid bands.

    ``srf`` maps teacher band name -> (wavelength nm, response); missing -> Gaussian over the
    catalog range. Integrated on a 0.5 nm grid (EnMAP FWHM >= 5 nm, so >= 10 samples each).
    """
    hls = hls if hls is not None else hls_sensor()
    srf = srf or {}
    unknown = sorted(set(srf) - set(hls.band_names))
    if unknown:
        raise ValueError(
            f"SRF given for unknown teacher bands {unknown}: expected {list(hls.band_names)}"
        )
    centres, valid = bands.wavelengths, bands.valid
    sigmas = bands.fwhms * FWHM_TO_SIGMA
    if not np.all(np.isfinite(sigmas) & (sigmas > 0)):
        raise ValueError("SRF weights need a positive finite FWHM for every band")
    grid = np.arange(centres.min() - 5 * sigmas.max(), centres.max() + 5 * sigmas.max(), 0.5)
    enmap_resp = np.exp(-0.5 * ((grid[None, :] - centres[:, None]) / sigmas[:, None]) ** 2)
    w = np.zeros((len(hls.roles), len(bands)), dtype=np.float64)
    for k, role in enumerate(hls.roles):
        if role.name in srf:
            wl, resp = (np.asarray(a, dtype=np.float64) for a in srf[role.name])
            order = np.argsort(wl)
            r = np.interp(grid, wl[order], np.clip(resp[order], 0, None), left=0.0, right=0.0)
        else:
            lo, hi = role.range_nm
            r = np.exp(-0.5 * ((grid - (lo + hi) / 2) / ((hi - lo) * FWHM_TO_SIGMA)) ** 2)
        row = np.trapezoid(enmap_resp * r[None, :], grid, axis=1) * valid
        if row.max() <= 0:
            raise ValueError(f"no valid EnMAP band overlaps the {role.name} response")
        row[row < SRF_MIN_RELATIVE_WEIGHT * row.max()] = 0.0
        w[k] = row / row.sum()
    return w


def srf_from_npz(
    source: str | Path | IO[bytes], hls: HlsSensor | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tabulated teacher responses from an EnMAP-Box ``.srf``/``.npz`` sensor file.

    Layout: ``srf`` (n, bands, 2) = (wavelength, response) padded with -999, ``sensor_wl``
    (bands,) in nm. Wavelengths in µm are converted to nm. Each teacher band takes the sensor
    band whose centre lies in its HLS range (so Landsat-8's cirrus band is skipped by itself).
    """
    hls = hls if hls is not None else hls_sensor()
    with np.load(source, allow_pickle=False) as z:
        table, centres = (
            np.asarray(z["srf"], dtype=np.float64),
            np.asarray(z["sensor_wl"], dtype=np.float64),
        )
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for role in hls.roles:
        lo, hi = role.range_nm
        hit = np.flatnonzero((centres >= lo) & (centres <= hi))
        if hit.size != 1:
            raise ValueError(
                f"SRF file has {hit.size} bands centred in the {role.name} range {lo}-{hi} nm, need 1"
            )
        wl, resp = table[:, hit[0], 0], table[:, hit[0], 1]
        keep = (wl > -999) & (resp > -999)
        wl = wl[keep] * (1000.0 if wl[keep].max() < 100 else 1.0)
        out[role.name] = (wl, resp[keep])
    return out


def _aggregate_block(
    x: np.ndarray, weights: np.ndarray, nodata: float, scale: float, as_int16: bool
) -> np.ndarray:
    """One chunk: ``(time, band, y, x)`` -> ``(time, teacher_band, y, x)`` (see module doc)."""
    used = np.flatnonzero(weights.any(axis=0))
    w = weights[:, used]
    xs = x[:, used].astype(np.float64)
    present = np.isfinite(xs) & (xs != nodata)
    xs = np.where(present, xs * scale, 0.0)
    num = np.einsum("kb,tbyx->tkyx", w, xs)
    den = np.einsum("kb,tbyx->tkyx", w, present.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = num / den
    empty = den <= 0
    if not as_int16:
        return np.where(empty, np.nan, mean).astype(np.float32)
    # Clip above the nodata value so that a (physically absurd) mean never reads as nodata.
    out = np.clip(np.rint(np.where(empty, 0.0, mean)), TEACHER_NODATA + 1, np.iinfo(np.int16).max)
    return np.where(empty, TEACHER_NODATA, out).astype(np.int16)


def input_units(reflectance: xr.DataArray, nodata: float | None) -> tuple[float, float]:
    """(nodata value, factor to reflectance x 10000) for raw int16 or CF-decoded float input."""
    enc, attrs = reflectance.encoding, reflectance.attrs
    fill = (
        nodata
        if nodata is not None
        else enc.get("_FillValue", attrs.get("_FillValue", ENMAP_NODATA))
    )
    # CF decoding leaves scale_factor in .encoding and turns values into reflectance (0-1).
    decoded = np.issubdtype(reflectance.dtype, np.floating) and "scale_factor" in enc
    scale = 1e4 if decoded else 1.0
    return float(fill), scale


def teacher_bands(
    reflectance: xr.DataArray,
    valid_band: np.ndarray | xr.DataArray | None = None,
    *,
    method: Method = "mean",
    srf: TabulatedSrf | None = None,
    hls: HlsSensor | None = None,
    dtype: Literal["int16", "float32"] = "int16",
    nodata: float | None = None,
) -> xr.DataArray:
    """The six teacher bands of an EnMAP cube, lazily, one task per spatial chunk.

    ``reflectance``: ``(time, band, y, x)``, int16 x 10000 with nodata (default the
    ``_FillValue``, else -32768) or CF-decoded float (NaN nodata); coords ``wavelength`` and
    ``fwhm`` (nm) on ``band``. ``valid_band``: ``(band,)`` bool, default the ``valid_band``
    coord. Returns ``(time, teacher_band, y, x)`` with teacher band names as coord: int16
    reflectance x 10000 with nodata -9999, or (``dtype="float32"``) float32 with NaN nodata.
    """
    _check_request(reflectance, method, srf, dtype)
    hls = hls if hls is not None else hls_sensor()
    bands = cube_bands(reflectance, valid_band)
    weights = mean_weights(bands, hls) if method == "mean" else srf_weights(bands, srf, hls)
    fill, scale = input_units(reflectance, nodata)
    as_int16 = dtype == "int16"
    out = _aggregate(reflectance.data, weights, fill, scale, as_int16)
    coords = {c: reflectance.coords[c] for c in ("time", "y", "x") if c in reflectance.coords}
    coords.update(
        {k: v for k, v in reflectance.coords.items() if set(v.dims) <= {"time"} and k not in coords}
    )
    result = xr.DataArray(
        out, dims=("time", TEACHER_DIM, "y", "x"), coords=coords, name="teacher_bands"
    )
    result = result.assign_coords({TEACHER_DIM: list(hls.band_names)})
    result.attrs = {
        "long_name": "EnMAP aggregated to the Prithvi teacher's HLS bands",
        "units": "reflectance x 10000" if as_int16 else "reflectance x 10000 (float)",
        "hyperkd:aggregation": method,
        "hyperkd:srf": "tabulated" if srf else ("gaussian" if method == "srf" else "none"),
        "hyperkd:bands_used": [int(n) for n in (weights > 0).sum(axis=1)],
    }
    if "grid_mapping" in reflectance.attrs:
        result.attrs["grid_mapping"] = reflectance.attrs["grid_mapping"]
    if as_int16:
        result.attrs.update({"scale_factor": 1e-4, "add_offset": 0.0})
        result.encoding["_FillValue"] = TEACHER_NODATA
    return result


def _check_request(
    reflectance: xr.DataArray, method: str, srf: TabulatedSrf | None, dtype: str
) -> None:
    """Refuse an unknown method or dtype, a tabulated SRF without ``method="srf"`` and
    reflectance whose dims are not ``(time, band, y, x)``."""
    if method not in ("mean", "srf"):
        raise ValueError(f"unknown aggregation method {method!r}: choose 'mean' or 'srf'")
    if srf is not None and method != "srf":
        raise ValueError("a tabulated srf was given but method is not 'srf'")
    if dtype not in ("int16", "float32"):
        raise ValueError(f"unknown teacher dtype {dtype!r}: choose 'int16' or 'float32'")
    dims = ("time", "band", "y", "x")
    if tuple(reflectance.dims) != dims:
        raise ValueError(f"reflectance dims are {reflectance.dims}, expected {dims}")


def _aggregate(
    data: np.ndarray | da.Array, weights: np.ndarray, fill: float, scale: float, as_int16: bool
) -> np.ndarray | da.Array:
    """``(time, band, y, x)`` -> ``(time, teacher_band, y, x)`` with ``weights``
    ``(teacher_band, band)``: one dask task per ``(time, y, x)`` chunk, or at once for numpy."""
    if not isinstance(data, da.Array):
        return _aggregate_block(np.asarray(data), weights, fill, scale, as_int16)
    out_dtype = np.int16 if as_int16 else np.float32
    if len(data.chunks[1]) > 1:
        data = data.rechunk({1: -1})  # all bands of a pixel in one task
    return data.map_blocks(
        _aggregate_block,
        weights,
        fill,
        scale,
        as_int16,
        dtype=out_dtype,
        chunks=(data.chunks[0], (weights.shape[0],), data.chunks[2], data.chunks[3]),
        meta=np.empty((0, 0, 0, 0), dtype=out_dtype),
    )
