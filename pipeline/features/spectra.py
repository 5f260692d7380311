"""Spectral library on a 1 nm grid (400-2500 nm) and sensor spectral-response averaging.

Surface reflectance is built from a few physical ingredients rather than typed-in spectra:

- liquid-water absorption (coefficient in cm^-1, log-interpolated from tabulated values) sets
  the 970/1200/1450/1940 nm features of leaves and wet soils;
- a chlorophyll/carotenoid absorbance shape drives the blue and red absorption, the green peak
  and the red edge (more chlorophyll -> deeper red well, red edge shifted to longer waves);
- soils are a mineral curve darkened and flattened by soil organic carbon (SOC, g/kg) through
  an absorbance that is strongest in the visible, as organic matter is;
- man-made surfaces (roof tiles, concrete, bitumen, asphalt) and water are smooth anchor
  curves with their diagnostic features (iron oxide, carbonate, hydrocarbon bands).

Everything returns reflectance in [0, 1] on :data:`GRID_NM`, shape ``(..., wavelength)``.
:func:`band_average` turns grid spectra into band values with Gaussian spectral responses
(EnMAP) and :func:`hls_response` gives the HLS teacher bands' responses from the sensor table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

from hyperkd.pipeline.sensors import HlsSensor, hls_sensor

GRID_NM = np.arange(400.0, 2501.0, 1.0)
"""The library's wavelength grid, nm, shape ``(2101,)``."""


def _curve(points: Sequence[tuple[float, float]], *, log: bool = False) -> np.ndarray:
    """A smooth monotone-preserving curve through ``(nm, value)`` anchors, on ``GRID_NM``."""
    x = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    if log:
        return np.exp(PchipInterpolator(x, np.log(y), extrapolate=True)(GRID_NM))
    return PchipInterpolator(x, y, extrapolate=True)(GRID_NM)


def _dip(center: float, sigma: float, depth: float) -> np.ndarray:
    """Multiplicative absorption feature: ``1 - depth`` at ``center`` nm, Gaussian in shape."""
    return 1.0 - depth * np.exp(-0.5 * ((GRID_NM - center) / sigma) ** 2)


# Liquid-water absorption coefficient, cm^-1 (approximately Hale & Querry 1973 / Kou 1993).
_WATER_K = _curve(
    [
        (400, 2.0e-4), (500, 2.5e-4), (550, 6.0e-4), (600, 2.2e-3), (650, 3.4e-3),
        (700, 6.0e-3), (750, 2.6e-2), (800, 2.0e-2), (850, 4.3e-2), (900, 6.8e-2),
        (950, 0.39), (975, 0.46), (1000, 0.36), (1050, 0.16), (1100, 0.2), (1150, 0.9),
        (1200, 1.05), (1250, 0.8), (1300, 1.1), (1350, 3.0), (1400, 12.0), (1450, 29.0),
        (1500, 18.0), (1550, 9.5), (1600, 6.8), (1650, 5.8), (1700, 5.6), (1750, 7.0),
        (1800, 8.5), (1850, 15.0), (1900, 75.0), (1940, 115.0), (2000, 68.0), (2050, 40.0),
        (2100, 25.0), (2150, 19.0), (2200, 17.0), (2250, 19.0), (2300, 23.0), (2350, 30.0),
        (2400, 45.0), (2450, 62.0), (2500, 85.0),
    ],
    log=True,
)  # fmt: skip

# Chlorophyll + carotenoid absorbance of a closed canopy at 50 ug/cm^2 (relative units).
_CHL_A = _curve(
    [
        (400, 2.7), (440, 2.75), (480, 2.6), (500, 2.3), (520, 1.95), (545, 1.6), (555, 1.55),
        (570, 1.7), (600, 2.1), (630, 2.35), (650, 2.55), (670, 2.8), (680, 2.75), (690, 2.3),
        (700, 1.55), (710, 1.0), (720, 0.6), (730, 0.33), (740, 0.17), (760, 0.06), (780, 0.02),
        (800, 0.0),
        (2500, 0.0),
    ]
)  # fmt: skip
_CHL_A = np.clip(_CHL_A, 0.0, None)

# NIR plateau of a canopy: rises past the red edge to ~900 nm, then sags slowly.
_PLATEAU = _curve(
    [
        (400, 0.9),
        (700, 0.9),
        (750, 0.9),
        (800, 0.95),
        (870, 1.0),
        (1100, 1.0),
        (1300, 0.95),
        (2500, 0.85),
    ]
)

# Dry matter (cellulose, lignin, protein): weak in the NIR, features at 1730, 2100, 2300 nm.
_DRY_DIPS = _dip(1730, 25, 0.06) * _dip(2100, 40, 0.10) * _dip(2300, 35, 0.08)


def water_absorption() -> np.ndarray:
    """Liquid-water absorption coefficient, cm^-1, on ``GRID_NM``."""
    return _WATER_K.copy()


def vegetation(
    chlorophyll: float = 45.0, lai: float = 3.5, water_cm: float = 0.06, shade: float = 1.0
) -> np.ndarray:
    """Green canopy reflectance, shape ``(wavelength,)``.

    ``chlorophyll`` in ug/cm^2 deepens the blue/red wells and moves the red edge to longer
    waves; ``lai`` (m^2/m^2) raises the NIR plateau; ``water_cm`` is the canopy's effective
    liquid-water path (cm), which sets the 970/1200/1450/1940 nm absorptions and the SWIR
    level; ``shade`` (0-1] darkens a rough canopy (forest) in every band.
    """
    plateau = (0.22 + 0.26 * (1.0 - np.exp(-0.45 * lai))) * _PLATEAU
    # Two light paths: single scattering off the top leaves (short water path) and multiple
    # scattering inside the canopy (long path); one Beer law alone makes SWIR2 far too dark.
    k = water_cm * _WATER_K
    water_t = 0.4 * np.exp(-0.25 * k) + 0.6 * np.exp(-3.0 * k)
    leaf = plateau * _DRY_DIPS * water_t * np.exp(-(chlorophyll / 50.0) * _CHL_A)
    # Leaf-surface (specular) reflection bypasses the pigments: the visible floor.
    return shade * (0.012 + leaf)


def dry_vegetation(brightness: float = 1.0) -> np.ndarray:
    """Non-photosynthetic vegetation (straw, stubble, dry grass), shape ``(wavelength,)``."""
    base = _curve(
        [(400, 0.07), (500, 0.11), (600, 0.19), (700, 0.27), (800, 0.33), (1000, 0.38),
         (1300, 0.42), (1600, 0.43), (1800, 0.42), (2000, 0.36), (2200, 0.37), (2500, 0.30)]
    )  # fmt: skip
    return brightness * base * _DRY_DIPS * _DRY_DIPS * np.exp(-0.004 * _WATER_K)


def _soc_absorbance() -> np.ndarray:
    """Organic-matter absorbance per g/kg SOC: strongest in the visible, weak in the SWIR."""
    return 0.0045 + 0.011 * np.exp(-(GRID_NM - 400.0) / 450.0)


def soil(soc_gkg: float | np.ndarray = 12.0, moisture_cm: float = 0.001) -> np.ndarray:
    """Mineral soil reflectance darkened by organic carbon, shape ``(..., wavelength)``.

    ``soc_gkg``: soil organic carbon in g/kg (0-100 typical). Higher SOC -> darker and
    flatter, most of all in the visible. ``moisture_cm`` adds liquid-water absorption (the
    default is a sun-dried summer topsoil).
    """
    mineral = _curve(
        [(400, 0.085), (450, 0.11), (500, 0.145), (550, 0.18), (600, 0.215), (650, 0.24),
         (700, 0.26), (800, 0.29), (900, 0.305), (1000, 0.32), (1200, 0.335), (1400, 0.34),
         (1600, 0.35), (1800, 0.35), (2000, 0.33), (2200, 0.31), (2350, 0.29), (2500, 0.26)]
    )  # fmt: skip
    # Iron oxides (~500, ~900 nm), bound water/hydroxyl (1410, 1910), clay Al-OH (2205).
    mineral = mineral * _dip(900, 60, 0.03) * _dip(1410, 25, 0.06) * _dip(1910, 35, 0.08)
    mineral = mineral * _dip(2205, 20, 0.05) * np.exp(-moisture_cm * _WATER_K)
    soc = np.asarray(soc_gkg, dtype=np.float64)[..., None]
    return mineral * np.exp(-soc * _soc_absorbance())


def water(turbidity: float = 1.0) -> np.ndarray:
    """Inland water (dark, humic/eutrophic lake or river), shape ``(wavelength,)``; NIR < 0.005."""
    r = _curve(
        [(400, 0.006), (450, 0.007), (500, 0.009), (550, 0.013), (575, 0.014), (600, 0.011),
         (650, 0.008), (675, 0.007), (700, 0.008), (720, 0.005), (750, 0.003), (810, 0.003),
         (850, 0.002), (1000, 0.0015), (1200, 0.001), (2500, 0.0005)]
    )  # fmt: skip
    return np.clip(turbidity * r, 0.0003, None)


def roof_tile() -> np.ndarray:
    """Red clay roof tiles (iron oxide: steep rise past 550 nm, dip near 870 nm)."""
    return _curve(
        [(400, 0.06), (500, 0.07), (550, 0.09), (600, 0.17), (650, 0.24), (700, 0.28),
         (800, 0.31), (870, 0.31), (950, 0.33), (1100, 0.36), (1300, 0.38), (1600, 0.39),
         (1800, 0.39), (2000, 0.37), (2200, 0.35), (2500, 0.31)]
    ) * _dip(1910, 30, 0.05)  # fmt: skip


def concrete(brightness: float = 1.0) -> np.ndarray:
    """Concrete / fibre cement (roofs and pavement): bright, carbonate feature at 2340 nm."""
    base = _curve(
        [(400, 0.16), (500, 0.21), (600, 0.24), (700, 0.26), (900, 0.28), (1100, 0.29),
         (1300, 0.295), (1600, 0.30), (1800, 0.295), (2000, 0.27), (2200, 0.26), (2500, 0.23)]
    )  # fmt: skip
    return brightness * base * _dip(1910, 30, 0.06) * _dip(2340, 25, 0.07) * _dip(1450, 30, 0.04)


def bitumen_roof() -> np.ndarray:
    """Dark bitumen / roofing felt: low, slowly rising, hydrocarbon features."""
    base = _curve(
        [(400, 0.05), (700, 0.07), (1000, 0.09), (1600, 0.12), (2200, 0.13), (2500, 0.12)]
    )
    return base * _dip(1730, 20, 0.08) * _dip(2310, 20, 0.1)


def asphalt(age: float = 0.5) -> np.ndarray:
    """Road asphalt; ``age`` in [0, 1] brightens it (aggregate exposed as binder weathers)."""
    base = _curve(
        [(400, 0.05), (550, 0.065), (700, 0.08), (1000, 0.10), (1300, 0.12), (1600, 0.135),
         (2000, 0.14), (2200, 0.145), (2500, 0.13)]
    )  # fmt: skip
    return (1.0 + 0.6 * age) * base * _dip(1730, 20, 0.06) * _dip(2310, 20, 0.08)


def cloud() -> np.ndarray:
    """Optically thick cloud top: bright and white, ice/water absorption in the SWIR."""
    base = _curve(
        [
            (400, 0.62),
            (700, 0.64),
            (1000, 0.6),
            (1300, 0.55),
            (1600, 0.42),
            (2200, 0.28),
            (2500, 0.2),
        ]
    )
    return base * np.exp(-0.002 * _WATER_K) * _dip(1450, 40, 0.25) * _dip(1940, 50, 0.35)


@dataclass(frozen=True)
class SpectralLibrary:
    """Named endmember spectra on the library grid."""

    names: tuple[str, ...]
    spectra: np.ndarray
    """Reflectance, shape ``(endmember, wavelength)`` on :data:`GRID_NM`."""

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"no endmember {name!r} in the library: {self.names}") from None


def srf_matrix(centers_nm: np.ndarray, fwhms_nm: np.ndarray) -> np.ndarray:
    """Gaussian spectral responses, rows normalised to sum 1, shape ``(band, wavelength)``.

    A FWHM that is missing (NaN) or not positive is replaced by the local band spacing, so
    band metadata without widths still gives a sensible response.
    """
    centers = np.asarray(centers_nm, dtype=np.float64)
    fwhms = np.asarray(fwhms_nm, dtype=np.float64).copy()
    if centers.shape != fwhms.shape or centers.ndim != 1:
        raise ValueError(
            f"band centres {centers.shape} and FWHMs {fwhms.shape} must be equal 1-d shapes"
        )
    bad = ~np.isfinite(fwhms) | (fwhms <= 0)
    if bad.any():
        spacing = np.gradient(np.sort(centers)) if centers.size > 1 else np.array([10.0])
        fwhms[bad] = np.interp(centers[bad], np.sort(centers), spacing)
    out_of_grid = (centers < GRID_NM[0] - 10) | (centers > GRID_NM[-1] + 10)
    if out_of_grid.any():
        raise ValueError(
            f"band centres {centers[out_of_grid].tolist()} nm lie outside the library's "
            f"{GRID_NM[0]:.0f}-{GRID_NM[-1]:.0f} nm range"
        )
    sigma = fwhms / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    w = np.exp(-0.5 * ((GRID_NM[None, :] - centers[:, None]) / sigma[:, None]) ** 2)
    return w / w.sum(axis=1, keepdims=True)


def band_average(spectra: np.ndarray, centers_nm: np.ndarray, fwhms_nm: np.ndarray) -> np.ndarray:
    """Spectra on ``GRID_NM`` seen through Gaussian bands: ``(..., wavelength) -> (..., band)``."""
    return np.asarray(spectra) @ srf_matrix(centers_nm, fwhms_nm).T


def hls_response(hls: HlsSensor | None = None, edge_nm: float = 3.0) -> np.ndarray:
    """Response of each HLS teacher band, rows summing to 1, shape ``(6, wavelength)``.

    A boxcar over the table's range (``hls_sensor().roles[i].range_nm``) with Gaussian edges
    of ``edge_nm`` (OLI filters are steep; S30 is bandpass-adjusted to OLI).
    """
    from scipy.special import erf

    hls = hls if hls is not None else hls_sensor()
    rows = []
    for role in hls.roles:
        lo, hi = role.range_nm
        s = edge_nm * np.sqrt(2.0)
        rows.append(0.5 * (erf((GRID_NM - lo) / s) - erf((GRID_NM - hi) / s)))
    r = np.array(rows)
    return r / r.sum(axis=1, keepdims=True)


def hls_band_average(spectra: np.ndarray, hls: HlsSensor | None = None) -> np.ndarray:
    """Spectra on ``GRID_NM`` seen by the six HLS teacher bands: ``(..., wavelength) -> (..., 6)``."""
    return np.asarray(spectra) @ hls_response(hls).T
