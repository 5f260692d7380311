"""Scene factory: a deterministic, seeded EnMAP L2A + HLS L30/S30 region that looks real.

One surface (land cover as sub-pixel cover fractions of physically shaped endmember spectra,
see :mod:`hyperkd.pipeline.features.spectra` and :mod:`hyperkd.pipeline.synthetic.layout`) is seen by
both sensors: EnMAP through Gaussian band responses taken from an :class:`EnmapBands` (the
catalog table by default, or a real product's own metadata), HLS through the teacher bands'
responses from the HLS table. Both get their own clouds, shadows and sensor noise.

Sizes for ``--size``: ``tiny`` 64 px (tests), ``small`` 256, ``medium`` 512, ``large`` 1024
(30 m pixels: 1.9, 7.7, 15.4, 30.7 km square).

Grids: EnMAP's 30 m UTM grid has its upper-left corner at ``RegionSpec.origin`` (default
362175, 5809965 in EPSG:32633, the real Potsdam scene's corner, which is *not* a multiple of
30 m). HLS sits on an MGRS-like grid shifted by ``hls_offset_px`` (default half a pixel, so
its corners are multiples of 30 m) and covers the EnMAP extent plus ``hls_margin_px``. HLS
pixel values are area averages of the same surface, so the two sensors agree within noise.

Band order: by default the EnMAP image lists the table's bands *by detector* (VNIR 1-91, then
SWIR), as the real v01.03.02 Potsdam L2A tiles do (the real v01.04.02 DLR STAC item lists them
sorted by wavelength instead); pass ``bands=`` (e.g. ``EnmapBands.from_eo_bands(...)``) to
write any band set, order, centres and FWHMs.

In memory: ``make_surface(spec)`` -> :class:`Surface`; ``enmap_reflectance(surface, t)`` and
``hls_reflectance(surface, t, product)`` render DN arrays. On disk: :func:`write_region` in
:mod:`hyperkd.pipeline.synthetic.products`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property

import numpy as np
from affine import Affine

from hyperkd.pipeline.features import spectra
from hyperkd.pipeline.sensors import VNIR, EnmapBands, SpectralBand, enmap_table, hls_sensor
from hyperkd.pipeline.synthetic.layout import (
    CLOUD_THRESHOLD,
    CROPS,
    ROOF_KINDS,
    Layout,
    cloud_fields,
    crop_cover,
    is_cloudy,
    make_layout,
)

SIZES = {"tiny": 64, "small": 256, "medium": 512, "large": 1024}
"""``--size`` name -> EnMAP pixels per side."""

LANDCOVER_CLASSES = {
    0: "unlabeled",
    1: "roof",
    2: "pavement",
    3: "low_vegetation",
    4: "tree",
    5: "soil",
    6: "water",
}
"""Truth class codes, in the order of the real Potsdam EnMAP labels."""

SOC_ANCHORS = (0.0, 15.0, 35.0, 80.0)
"""SOC (g/kg) of the soil endmembers; a pixel's soil is the linear blend at its SOC."""

PIXEL_M = 30.0
NOISE_BLOCK_PX = 65536
"""Pixels per rendering block of the EnMAP image."""
NOISE_POOL_BLOCKS = 4
"""Blocks' worth of independent noise draws per scene (scenes up to 512x512 px are all iid)."""


def detector_order(bands: EnmapBands) -> EnmapBands:
    """The same bands listed by detector (VNIR first, then SWIR), as DLR products list them."""
    order = sorted(
        range(len(bands)), key=lambda i: (bands.bands[i].detector != VNIR, bands.bands[i].center_nm)
    )
    pos = {old: new for new, old in enumerate(order)}
    return EnmapBands(
        bands=tuple(
            SpectralBand(str(n + 1), *_band_fields(bands.bands[i])) for n, i in enumerate(order)
        ),
        nodata_bands=frozenset(pos[i] for i in bands.nodata_bands),
        gain=tuple(bands.gain[i] for i in order),
        offset=tuple(bands.offset[i] for i in order),
        nodata=bands.nodata,
        processor_version=bands.processor_version,
    )


def _band_fields(b: SpectralBand) -> tuple[float, float, str | None]:
    return b.center_nm, b.fwhm_nm, b.detector


@dataclass(frozen=True)
class RegionSpec:
    """What to generate. All randomness follows from ``seed``."""

    size_px: int = SIZES["small"]
    seed: int = 0
    n_scenes: int = 2
    """EnMAP acquisitions; each gets one L30 and one S30 a few days away."""
    dates: tuple[datetime, ...] | None = None
    """EnMAP acquisition starts (UTC); default: from 2024-06-14 10:45:26 every 24 days."""
    crs_epsg: int = 32633
    origin: tuple[float, float] = (362175.0, 5809965.0)
    """Upper-left corner (x, y) of the EnMAP grid in metres of ``crs_epsg``."""
    hls_offset_px: float = 0.5
    """Shift of the HLS grid against EnMAP's, in pixels, in [0, 1) (same in x and y)."""
    hls_margin_px: int = 2
    n_crop_types: int = 4
    cloud_cover: float = 0.06
    """Cloud fraction of a cloudy acquisition (every second one per collection)."""
    bands: EnmapBands | None = None
    """EnMAP band metadata to write; default: the catalog table in detector order."""
    processor_version: str = "01.03.02"
    mgrs_tile: str = "T33UUU"

    def __post_init__(self) -> None:
        if not 8 <= self.size_px <= 8192:
            raise ValueError(f"size_px={self.size_px}: must be between 8 and 8192")
        if not 1 <= self.n_scenes <= 24:
            raise ValueError(f"n_scenes={self.n_scenes}: must be between 1 and 24")
        if self.dates is not None and len(self.dates) != self.n_scenes:
            raise ValueError(f"{len(self.dates)} dates given for n_scenes={self.n_scenes}")
        if not 0.0 <= self.hls_offset_px < 1.0:
            raise ValueError(f"hls_offset_px={self.hls_offset_px}: must be in [0, 1)")
        if not 1 <= self.n_crop_types <= len(CROPS):
            raise ValueError(
                f"n_crop_types={self.n_crop_types}: must be between 1 and {len(CROPS)}"
            )
        if not 0.0 <= self.cloud_cover <= 0.5:
            raise ValueError(f"cloud_cover={self.cloud_cover}: must be between 0 and 0.5")

    @property
    def enmap_bands(self) -> EnmapBands:
        return self.bands if self.bands is not None else detector_order(enmap_table().bands)

    @property
    def enmap_dates(self) -> tuple[datetime, ...]:
        if self.dates is not None:
            return tuple(self.dates)
        start = datetime(2024, 6, 14, 10, 45, 26)
        return tuple(start + timedelta(days=24 * i) for i in range(self.n_scenes))

    def hls_date(self, t: int, product: str) -> datetime:
        """Acquisition time of the ``product`` (``l30``/``s30``) scene paired with EnMAP scene ``t``."""
        d = self.enmap_dates[t].replace(hour=0, minute=0, second=0)
        return d + (timedelta(days=2, hours=10, minutes=15, seconds=59) if product == "l30"
                    else timedelta(days=-3, hours=10, minutes=25, seconds=31))  # fmt: skip

    @property
    def enmap_transform(self) -> Affine:
        return Affine(PIXEL_M, 0.0, self.origin[0], 0.0, -PIXEL_M, self.origin[1])

    @property
    def hls_shape(self) -> tuple[int, int]:
        n = self.size_px + 2 * self.hls_margin_px + (1 if self.hls_offset_px > 0 else 0)
        return n, n

    @property
    def hls_transform(self) -> Affine:
        shift = (self.hls_offset_px + self.hls_margin_px) * PIXEL_M
        return Affine(PIXEL_M, 0.0, self.origin[0] - shift, 0.0, -PIXEL_M, self.origin[1] + shift)


def _soil_weights(soc: np.ndarray) -> list[np.ndarray]:
    """Hat-function weights of the SOC anchors (piecewise-linear blend), one array per anchor."""
    out = []
    for j in range(len(SOC_ANCHORS)):
        onehot = np.zeros(len(SOC_ANCHORS))
        onehot[j] = 1.0
        out.append(np.interp(soc, SOC_ANCHORS, onehot).astype(np.float32))
    return out


@dataclass(frozen=True)
class Surface:
    """The generated truth on the padded surface grid (EnMAP grid + ``pad`` pixels each side)."""

    spec: RegionSpec
    layout: Layout
    pad: int
    endmembers: tuple[str, ...] = field(default=())

    @cached_property
    def library(self) -> spectra.SpectralLibrary:
        """Endmember spectra, ``(endmember, wavelength)`` on ``spectra.GRID_NM``."""
        crops = CROPS[: self.spec.n_crop_types]
        rows = {"grass": spectra.vegetation(40.0, 2.6, 0.05)}
        for i, c in enumerate(crops):
            rows[f"crop_{i + 1}"] = spectra.vegetation(c.chlorophyll, c.lai, c.water_cm)
        rows["tree"] = spectra.vegetation(50.0, 5.0, 0.065, shade=0.82)
        rows["dry_veg"] = spectra.dry_vegetation()
        for s in SOC_ANCHORS:
            rows[f"soil_{s:g}"] = spectra.soil(s)
        rows["water"] = spectra.water()
        rows["roof_tile"] = spectra.roof_tile()
        rows["roof_concrete"] = spectra.concrete(1.1)
        rows["roof_bitumen"] = spectra.bitumen_roof()
        rows["pavement"] = spectra.concrete(0.85)
        rows["road"] = spectra.asphalt(0.5)
        rows["cloud"] = spectra.cloud()
        return spectra.SpectralLibrary(tuple(rows), np.array(list(rows.values())))

    def abundances(self, t: int) -> np.ndarray:
        """Cover fractions at EnMAP date ``t``, float32 ``(endmember, y, x)`` on the surface grid.

        The last endmember (``cloud``) is zero here; clouds belong to an acquisition.
        """
        lay, names = self.layout, self.library.names
        fr = lay.fractions
        a = np.zeros((len(names), *lay.soc.shape), np.float32)
        ix = {n: i for i, n in enumerate(names)}
        doy = self.spec.enmap_dates[t].timetuple().tm_yday
        potential = fr["crop"]
        green = np.zeros_like(potential)
        dry = np.zeros_like(potential)
        for k, crop in enumerate(CROPS[: self.spec.n_crop_types], start=1):
            g, d = crop_cover(crop, doy)
            sel = lay.field_crop == k
            # Rows/tramlines modulate the green cover: the Gabor-visible texture.
            gk = np.clip(g * (1.0 + 0.3 * lay.row_texture), 0.0, 0.97)
            green = np.where(sel, gk, green)
            dry = np.where(sel, np.minimum(d, 1.0 - gk), dry)
            a[ix[f"crop_{k}"]] = np.where(sel, potential * gk, 0.0)
        soil_total = fr["soil"] + potential * np.clip(1.0 - green - dry, 0.0, 1.0)
        for j, w in enumerate(_soil_weights(lay.soc)):
            a[ix[f"soil_{SOC_ANCHORS[j]:g}"]] = soil_total * w
        a[ix["dry_veg"]] = fr["dry_veg"] + potential * dry
        for name in ("grass", "tree", "water", "pavement", "road"):
            a[ix[name]] = fr[name]
        for k, kind in enumerate(ROOF_KINDS):
            a[ix[kind]] = np.where(lay.roof_kind == k, fr["roof"], 0.0)
        return a * lay.brightness[None]

    @cached_property
    def landcover(self) -> np.ndarray:
        """uint8 truth class per EnMAP pixel (codes in :data:`LANDCOVER_CLASSES`), ``(y, x)``.

        The plurality of the static cover: crop fields count as low vegetation whatever the
        date; litter and stubble count with soil (brown, as an aerial photo labels them).
        """
        fr = self.layout.fractions
        groups = np.stack(
            [fr["roof"], fr["pavement"] + fr["road"], fr["grass"] + fr["crop"],
             fr["tree"], fr["soil"] + fr["dry_veg"], fr["water"]]
        )  # fmt: skip
        return self._crop_to_enmap(np.argmax(groups, axis=0).astype(np.uint8) + 1)

    @cached_property
    def crop_type(self) -> np.ndarray:
        """uint8 crop type 1..K on crop fields labelled low vegetation, else 0, ``(y, x)``."""
        ct = self._crop_to_enmap(self.layout.field_crop).astype(np.uint8)
        return np.where(self.landcover == 3, ct, 0).astype(np.uint8)

    @cached_property
    def soc(self) -> np.ndarray:
        """float32 soil organic carbon, g/kg; NaN on water and sealed (roof/pavement) pixels."""
        soc = self._crop_to_enmap(self.layout.soc).astype(np.float32)
        return np.where(np.isin(self.landcover, (1, 2, 6)), np.float32(np.nan), soc)

    @property
    def crop_names(self) -> tuple[str, ...]:
        """Crop type names, index ``k - 1`` for crop code ``k``."""
        return tuple(c.name for c in CROPS[: self.spec.n_crop_types])

    def _crop_to_enmap(self, arr: np.ndarray) -> np.ndarray:
        p, n = self.pad, self.spec.size_px
        return arr[..., p : p + n, p : p + n]

    def water_fraction(self) -> np.ndarray:
        return self.layout.fractions["water"]


def make_surface(spec: RegionSpec) -> Surface:
    """Generate the region's surface (layout, truth, endmembers) for ``spec``."""
    pad = spec.hls_margin_px + 1
    n = spec.size_px + 2 * pad
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x5CE9E]))
    return Surface(spec, make_layout(rng, (n, n), spec.n_crop_types), pad)


def scene_rng(spec: RegionSpec, *key: int) -> np.random.Generator:
    """An independent, order-free random stream for one acquisition (``key`` names it)."""
    return np.random.default_rng(np.random.SeedSequence([spec.seed, *key]))


def enmap_noise_sigma(centers_nm: np.ndarray) -> np.ndarray:
    """Per-band noise (reflectance units): low in the VNIR, higher in SWIR and near H2O bands."""
    c = np.asarray(centers_nm, dtype=np.float64)
    return (
        0.0012 + 0.0012 * (c > 1000) + 0.004 * np.exp(-0.5 * ((c - 1400) / 40) ** 2)
        + 0.005 * np.exp(-0.5 * ((c - 1880) / 50) ** 2) + 0.002 * np.clip((c - 2350) / 100, 0, None)
    )  # fmt: skip


def enmap_reflectance(surface: Surface, t: int = 0, bands: EnmapBands | None = None) -> np.ndarray:
    """EnMAP L2A DN of scene ``t``: int16 ``(band, y, x)`` in the order of ``bands``.

    DN = (reflectance - offset) / gain per band; bands in ``bands.nodata_bands`` hold
    ``bands.nodata``. Includes the scene's clouds, cirrus, shadows and sensor noise.
    """
    spec = surface.spec
    bands = bands if bands is not None else spec.enmap_bands
    n = spec.size_px
    endm = spectra.band_average(surface.library.spectra, bands.wavelengths, bands.fwhms).astype(
        np.float32
    )
    a = surface._crop_to_enmap(surface.abundances(t))
    opacity, cirrus, shadow = cloud_fields(
        spec.seed, spec.cloud_cover, (n, n), (1, t), is_cloudy("enmap", t)
    )
    alpha = 1.0 - (1.0 - opacity) * (1.0 - cirrus)
    a = a * ((1.0 - alpha) * (1.0 - shadow))[None]
    a[surface.library.index("cloud")] = alpha
    # Work in DN directly: DN = sum_k a_k * L_k / gain - offset / gain (+ noise / gain).
    gain = np.asarray(bands.gain, np.float64)
    endm_dn = (endm.T / gain[:, None]).astype(np.float32)  # (band, endmember)
    offset_dn = (np.asarray(bands.offset, np.float64) / gain).astype(np.float32)[:, None]
    sigma_dn = (enmap_noise_sigma(bands.wavelengths) / gain).astype(np.float32)[:, None]
    rng = scene_rng(spec, 1, t)
    out = np.empty((len(bands), n, n), np.int16)
    step = max(1, NOISE_BLOCK_PX // n)  # rows per block: bounded memory, BLAS-sized products
    cols = step * n
    # Noise: iid Gaussian draws for up to NOISE_POOL_BLOCKS blocks; bigger scenes reuse the pool
    # at random shifts (drawing 2e8 normals would dominate the run time).
    pool_cols = min(n * n, NOISE_POOL_BLOCKS * cols)
    pool = rng.standard_normal((len(bands), pool_cols), dtype=np.float32)
    pool *= sigma_dn
    if pool_cols < n * n:
        pool = np.concatenate([pool, pool[:, :cols]], axis=1)
    for b, r0 in enumerate(range(0, n, step)):
        blk = a[:, r0 : r0 + step].reshape(a.shape[0], -1)
        dn = endm_dn @ blk
        start = b * cols if pool_cols == n * n else int(rng.integers(pool_cols))
        dn += pool[:, start : start + dn.shape[1]]
        if offset_dn.any():
            dn -= offset_dn
        np.rint(dn, out=dn)
        np.clip(dn, -32767, 32767, out=dn)
        out[:, r0 : r0 + step] = dn.astype(np.int16).reshape(len(bands), -1, n)
    out[sorted(bands.nodata_bands)] = bands.nodata
    return out


def _shift(arr: np.ndarray, offset_px: float, shape: tuple[int, int]) -> np.ndarray:
    """Area average of surface pixels onto the HLS grid (bilinear = exact for box pixels)."""
    i0 = 0 if offset_px > 0 else 1
    f = np.float32((1.0 - offset_px) - i0)
    h, w = shape
    rows = (1 - f) * arr[..., i0 : i0 + h, :] + f * arr[..., i0 + 1 : i0 + 1 + h, :]
    return (1 - f) * rows[..., i0 : i0 + w] + f * rows[..., i0 + 1 : i0 + 1 + w]


def hls_surface_reflectance(surface: Surface, t: int) -> np.ndarray:
    """Cloud-free, noise-free HLS reflectance on the HLS grid, float32 ``(6, y, x)``."""
    endm = spectra.hls_band_average(surface.library.spectra).astype(np.float32)  # (E, 6)
    a = surface.abundances(t)
    refl = np.tensordot(endm.T, a, axes=1)
    return _shift(refl, surface.spec.hls_offset_px, surface.spec.hls_shape)


HLS_NOISE = 0.0015
"""HLS per-band noise, reflectance units."""


def hls_reflectance(surface: Surface, t: int, product: str) -> tuple[np.ndarray, np.ndarray]:
    """HLS ``product`` (``l30``/``s30``) scene paired with EnMAP scene ``t``.

    Returns (DN int16 ``(6, y, x)`` in the teacher band order of ``hls_sensor().roles``,
    Fmask uint8 ``(y, x)``: bit 1 cloud, 2 adjacent, 3 shadow, 5 water, 6-7 aerosol low).
    """
    from scipy import ndimage

    spec = surface.spec
    shape = spec.hls_shape
    key = {"l30": 2, "s30": 3}[product]
    refl = hls_surface_reflectance(surface, t)
    opacity, cirrus, shadow = cloud_fields(
        spec.seed, spec.cloud_cover, shape, (key, t), is_cloudy(product, t)
    )
    alpha = 1.0 - (1.0 - opacity) * (1.0 - cirrus)
    cloud = spectra.hls_band_average(spectra.cloud()).astype(np.float32)[:, None, None]
    refl = refl * ((1.0 - alpha) * (1.0 - shadow))[None] + alpha[None] * cloud
    rng = scene_rng(spec, key, t)
    refl += rng.standard_normal(refl.shape, dtype=np.float32) * np.float32(HLS_NOISE)
    scale = hls_sensor().scale
    dn = np.clip(np.rint(refl / scale), -9998, 32767).astype(np.int16)
    water = _shift(surface.water_fraction(), spec.hls_offset_px, shape) > 0.5
    is_cloud, is_shadow = opacity > CLOUD_THRESHOLD, shadow > 0.2
    adjacent = ndimage.binary_dilation(is_cloud | is_shadow, iterations=2) & ~is_cloud & ~is_shadow
    fmask = (
        (is_cloud.astype(np.uint8) << 1) | (adjacent.astype(np.uint8) << 2)
        | (is_shadow.astype(np.uint8) << 3) | (water.astype(np.uint8) << 5) | np.uint8(1 << 6)
    )  # fmt: skip
    return dn, fmask.astype(np.uint8)
