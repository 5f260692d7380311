"""Land-cover layout of a synthetic region: fields with row texture, forest, town, roads, river.

Everything is vectorised over the pixel grid (no per-pixel Python loops) and driven by one
``numpy.random.Generator``, so a seed fixes the layout. The result is a set of sub-pixel cover
fractions per surface component (30 m pixels are mixtures, as in real EnMAP scenes) plus the
per-field attributes the truth rasters need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

COMPONENTS = ("grass", "crop", "tree", "dry_veg", "soil", "water", "roof", "pavement", "road")
"""Surface components whose cover fractions the layout returns (they sum to 1 per pixel)."""

CLOUD_THRESHOLD = 0.35
"""Cloud opacity above which a pixel is flagged cloud (EnMAP quality layer, HLS Fmask)."""

ROOF_KINDS = ("roof_tile", "roof_concrete", "roof_bitumen")


@dataclass(frozen=True)
class CropType:
    """A crop type: canopy pigments/structure/water and a green-cover curve over the year."""

    name: str
    chlorophyll: float
    """ug/cm^2"""
    lai: float
    water_cm: float
    peak_doy: float
    """Day of year of maximum green cover."""
    width_days: float
    harvest_doy: float
    """After harvest the field is stubble (dry vegetation over soil)."""


CROPS: tuple[CropType, ...] = (
    CropType("winter_wheat", 38.0, 4.0, 0.05, 150.0, 40.0, 215.0),
    CropType("maize", 52.0, 3.6, 0.07, 225.0, 45.0, 285.0),
    CropType("sugar_beet", 58.0, 4.5, 0.085, 210.0, 55.0, 290.0),
    CropType("rapeseed", 42.0, 3.0, 0.055, 135.0, 35.0, 200.0),
    CropType("potato", 48.0, 3.2, 0.075, 195.0, 35.0, 250.0),
    CropType("grass_ley", 44.0, 2.8, 0.06, 170.0, 80.0, 400.0),
)


def crop_cover(crop: CropType, doy: float) -> tuple[float, float]:
    """(green cover, dry-vegetation cover) of a crop field at day of year ``doy``."""
    if doy >= crop.harvest_doy:
        return 0.0, 0.35
    green = 0.9 * float(np.exp(-0.5 * ((doy - crop.peak_doy) / crop.width_days) ** 2))
    dry = 0.8 * (0.9 - green) if doy > crop.peak_doy else 0.0
    return green, dry


@dataclass(frozen=True)
class Layout:
    """Static (date-independent) layout on the surface grid, arrays of shape ``(y, x)``."""

    fractions: dict[str, np.ndarray]
    """Component -> float32 cover fraction; ``crop`` and ``dry_veg`` hold field *potential*
    (1 inside crop fields) and are split into green/dry/soil per date by :func:`crop_cover`."""
    field_id: np.ndarray
    """int32 field number (agricultural parcels), -1 outside fields."""
    field_crop: np.ndarray
    """int32 per pixel: 1..K crop type, 0 for non-crop."""
    row_texture: np.ndarray
    """float32 in [-1, 1]: the oriented row/tramline pattern inside fields."""
    roof_kind: np.ndarray
    """uint8 per pixel: index into :data:`ROOF_KINDS`."""
    soc: np.ndarray
    """float32 soil organic carbon, g/kg."""
    brightness: np.ndarray
    """float32 per-pixel multiplicative variability (about 1)."""


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field with correlation length ``scale_px``, float32."""
    coarse = max(2, int(scale_px // 4))
    small = (shape[0] // coarse + 3, shape[1] // coarse + 3)
    field = ndimage.gaussian_filter(
        rng.standard_normal(small), sigma=max(scale_px / coarse / 2, 0.5), mode="wrap"
    )
    field = ndimage.zoom(field, coarse, order=1)[: shape[0], : shape[1]]
    field = field - field.mean()
    return (field / (field.std() + 1e-12)).astype(np.float32)


def _line_cover(d: np.ndarray, width: float) -> np.ndarray:
    """Fraction of a pixel covered by a band of ``width`` px at distance ``d`` px from its axis."""
    return np.clip(width / 2.0 + 0.5 - np.abs(d), 0.0, 1.0).astype(np.float32)


def _paint(
    fr: dict[str, np.ndarray], cover: np.ndarray, parts: dict[str, float | np.ndarray]
) -> None:
    """Overlay ``cover`` of a new surface (split into ``parts``) on top of what is there."""
    keep = 1.0 - cover
    for k in fr:
        fr[k] *= keep
    for k, share in parts.items():
        fr[k] += cover * share


def make_layout(rng: np.random.Generator, shape: tuple[int, int], n_crops: int) -> Layout:
    """Generate a region layout on a grid of ``shape`` (y, x) 30 m pixels."""
    h, w = shape
    n = max(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fr = {k: np.zeros(shape, np.float32) for k in COMPONENTS}

    # Zones: a town blob, forest where a smooth field is high, agriculture elsewhere.
    cy, cx = rng.uniform(0.3, 0.7, 2) * (h, w)
    town_r = 0.22 * n
    town_edge = np.hypot(yy - cy, xx - cx) / town_r + 0.25 * smooth_noise(rng, shape, n / 8)
    town = town_edge < 1.0
    forest = (smooth_noise(rng, shape, n / 6) > 0.75) & ~town

    # Agricultural parcels: Voronoi cells of jittered seeds, 12-30 px across.
    spacing = float(rng.uniform(14, 20))
    gy, gx = np.mgrid[-1 : h / spacing + 1, -1 : w / spacing + 1]
    seeds = np.column_stack([gy.ravel(), gx.ravel()]) * spacing
    seeds += rng.uniform(-0.45, 0.45, seeds.shape) * spacing
    dist, idx = cKDTree(seeds).query(np.column_stack([yy.ravel(), xx.ravel()]), k=2)
    field_id = idx[:, 0].reshape(shape).astype(np.int32)
    boundary = (dist[:, 1] - dist[:, 0]).reshape(shape) < 1.2
    n_fields = len(seeds)
    # Field use: crop (70 %), grassland (15 %), bare/fallow soil (15 %).
    use = rng.choice(3, size=n_fields, p=[0.7, 0.15, 0.15])
    crop_of = rng.integers(1, n_crops + 1, size=n_fields)
    theta = rng.uniform(0, np.pi, n_fields).astype(np.float32)
    period = rng.uniform(3.0, 6.0, n_fields).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, n_fields).astype(np.float32)
    t, p, ph = theta[field_id], period[field_id], phase[field_id]
    rows = np.sin(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / p + ph).astype(np.float32)

    agri = ~town & ~forest
    u = use[field_id]
    is_crop = agri & (u == 0) & ~boundary
    fr["crop"][is_crop] = 1.0
    grassland = agri & (u == 1)
    fr["grass"][grassland] = 0.85 + 0.1 * rng.random(int(grassland.sum()), dtype=np.float32)
    fr["dry_veg"][grassland] = 0.1
    bare = agri & (u == 2) & ~boundary
    # Fallow and ploughed fields still carry weeds and residue at 30 m.
    green_bare = np.clip(0.32 + 0.1 * smooth_noise(rng, shape, 6) + 0.08 * rows, 0.05, 0.48)
    fr["grass"][bare] = green_bare[bare]
    fr["dry_veg"][bare] = 0.18
    # Field margins: tracks, hedges and grass strips.
    margin = agri & boundary & ~grassland
    hedge = margin & (rng.random(shape) < 0.35)
    fr["grass"][margin] = 0.55
    fr["dry_veg"][margin] = 0.15
    fr["tree"][hedge] = 0.5
    fr["grass"][hedge] = 0.3
    fr["soil"] = np.clip(1.0 - sum(fr.values()), 0.0, 1.0)

    # Forest: closed canopy with gaps.
    canopy = np.clip(0.88 + 0.12 * smooth_noise(rng, shape, 3), 0.5, 1.0)
    _paint(
        fr,
        forest.astype(np.float32),
        {"tree": canopy, "grass": 0.75 * (1 - canopy), "soil": 0.25 * (1 - canopy)},
    )

    # Town: a rotated street grid, blocks of lots with roofs, yards and gardens.
    ang = float(rng.uniform(-0.5, 0.5))
    su = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
    sv = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
    block = float(rng.uniform(7, 10))
    street = (np.abs(((su + 0.5 * block) % block) - 0.5 * block) < 0.6) | (
        np.abs(((sv + 0.5 * block) % block) - 0.5 * block) < 0.6
    )
    lot = np.floor(su / 2.0).astype(np.int64) * 7919 + np.floor(sv / 2.0).astype(np.int64)
    lot_rng = np.random.default_rng(rng.integers(2**32))
    lot_u, lot_inv = np.unique(lot, return_inverse=True)
    lot_inv = lot_inv.reshape(shape)
    roof_share = lot_rng.uniform(0.25, 0.85, lot_u.size).astype(np.float32)[lot_inv]
    green_share = lot_rng.uniform(0.05, 0.4, lot_u.size).astype(np.float32)[lot_inv]
    roof_kind = lot_rng.choice(3, size=lot_u.size, p=[0.4, 0.3, 0.3]).astype(np.uint8)[lot_inv]
    centre = np.clip(1.0 - town_edge, 0.0, 1.0)  # denser towards the centre
    roof_share = np.clip(roof_share * (0.6 + 0.6 * centre), 0.0, 0.9)
    green_share = np.minimum(green_share * (1.4 - 0.8 * centre), 1.0 - roof_share)
    town_f = town.astype(np.float32)
    rest = 1.0 - roof_share - green_share
    _paint(
        fr,
        town_f * ~street,
        {"roof": roof_share, "pavement": 0.6 * rest, "grass": 0.5 * green_share + 0.4 * rest,
         "tree": 0.5 * green_share},
    )  # fmt: skip
    _paint(fr, town_f * street, {"road": 0.55, "pavement": 0.1, "tree": 0.2, "grass": 0.15})

    # Highways across the scene, 20-25 m of asphalt in a 30 m pixel.
    for _ in range(int(rng.integers(2, 4))):
        a = rng.uniform(0, np.pi)
        y0, x0 = rng.uniform(0.2, 0.8, 2) * (h, w)
        d = (xx - x0) * np.sin(a) - (yy - y0) * np.cos(a)
        road = _line_cover(d, float(rng.uniform(0.7, 0.9)))
        verge = _line_cover(d, 3.0) * (1 - road)
        _paint(fr, verge * (~town), {"grass": 0.7, "tree": 0.3})
        _paint(fr, road, {"road": 1.0})

    # A meandering river with riparian vegetation, and a lake near the town.
    horizontal = rng.random() < 0.5
    along, across = (xx, yy) if horizontal else (yy, xx)
    span = w if horizontal else h
    c0 = rng.uniform(0.25, 0.75) * (h if horizontal else w)
    k1, k2 = 2 * np.pi / (span * rng.uniform(0.5, 0.9)), 2 * np.pi / (span * rng.uniform(0.15, 0.3))
    centre_line = (
        c0 + 0.1 * n * np.sin(k1 * along + rng.uniform(0, 6)) + 0.03 * n * np.sin(k2 * along)
    )
    width = 3.0 + 1.5 * np.sin(2 * np.pi * along / (span * 0.4) + rng.uniform(0, 6))
    d_river = across - centre_line
    bank = _line_cover(d_river, width + 3.0)
    _paint(fr, bank, {"tree": 0.4, "grass": 0.35, "soil": 0.25})
    water = _line_cover(d_river, width)
    ly, lx = cy + rng.uniform(-0.35, 0.35) * town_r, cx + rng.choice([-1, 1]) * town_r * 1.1
    lake_d = np.hypot((yy - ly) / 1.6, xx - lx) - 0.04 * n * (1 + 0.2 * smooth_noise(rng, shape, 4))
    lake = np.clip(0.5 - lake_d, 0.0, 1.0).astype(np.float32)
    _paint(fr, np.clip(1.5 - lake_d, 0, 1) * (1 - lake), {"tree": 0.4, "grass": 0.6})
    _paint(fr, np.maximum(water, lake), {"water": 1.0})

    # Soil organic carbon: regional trend, per-field management, organic floodplain soils.
    soc = 14.0 + 5.0 * smooth_noise(rng, shape, n / 5)
    soc += rng.normal(0.0, 3.0, n_fields).astype(np.float32)[field_id]
    soc += 30.0 * np.exp(-np.maximum(np.abs(d_river) - width / 2, 0) / (0.04 * n))
    soc = np.clip(soc, 3.0, 120.0).astype(np.float32)

    field_crop = np.where(is_crop, crop_of[field_id], 0).astype(np.int32)
    brightness = (
        1.0 + 0.04 * smooth_noise(rng, shape, 2) + 0.02 * rng.standard_normal(shape)
    ).astype(np.float32)
    field_id = np.where(agri, field_id, -1).astype(np.int32)
    return Layout(fr, field_id, field_crop, rows, roof_kind, soc, brightness)


def is_cloudy(collection: str, t: int) -> bool:
    """Which acquisitions carry clouds: alternate per collection, so every date has a clear view."""
    return (t + {"enmap": 1, "l30": 0, "s30": 1}[collection]) % 2 == 0


def cloud_fields(
    seed: int, cloud_cover: float, shape: tuple[int, int], key: tuple[int, ...], cloudy: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cloud opacity, cirrus opacity, shadow darkening), float32 ``(y, x)`` each, in [0, 1]."""
    zeros = np.zeros(shape, np.float32)
    if not cloudy or cloud_cover <= 0:
        return zeros, zeros.copy(), zeros.copy()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC10D, *key]))
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    n_clouds = int(rng.integers(2, 6))
    r = np.sqrt(cloud_cover * h * w / (np.pi * n_clouds))
    density = np.zeros(shape, np.float32)
    for _ in range(n_clouds):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        rc = r * rng.uniform(0.7, 1.3)
        density += np.exp(-0.5 * (np.hypot(yy - cy, xx - cx) / (0.6 * rc)) ** 2)
    density *= 1.0 + 0.35 * smooth_noise(rng, shape, 2.0)
    opacity = np.clip((density - 0.45) * 2.5, 0.0, 1.0).astype(np.float32)
    ang = rng.uniform(0, np.pi)
    d = (xx - w * rng.uniform(0.3, 0.7)) * np.sin(ang) - (yy - h * rng.uniform(0.3, 0.7)) * np.cos(
        ang
    )
    cirrus = (0.12 * np.exp(-0.5 * (d / (0.08 * max(h, w))) ** 2)).astype(np.float32)
    # Shadow: the cloud projected away from the sun (south-east, mid-morning) by its height.
    dy, dx = round(-0.02 * h - 3), round(-0.02 * w - 4)
    shadow = np.roll(opacity, (dy, dx), axis=(0, 1)) * 0.65 * (opacity < 0.05)
    return opacity, cirrus, shadow.astype(np.float32)
