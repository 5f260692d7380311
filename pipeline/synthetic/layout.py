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


@dataclass(frozen=True)
class _Zones:
    """Where the town and the forest lie; arrays are ``(y, x)``, lengths in pixels."""

    cy: float
    cx: float
    """Town centre (row, column), px."""
    town_r: float
    """Nominal town radius, px."""
    town_edge: np.ndarray
    """float64 distance from the town centre over ``town_r``, roughened by noise; < 1 in town."""
    town: np.ndarray
    """bool, inside the town."""
    forest: np.ndarray
    """bool, forest (never overlaps the town)."""


@dataclass(frozen=True)
class _Parcels:
    """Agricultural parcels tiling the whole grid (zones decide later which are farmed)."""

    field_id: np.ndarray
    """int32 ``(y, x)`` parcel number, defined everywhere."""
    boundary: np.ndarray
    """bool ``(y, x)``, within about 1 px of a parcel edge."""
    use: np.ndarray
    """Per parcel: 0 crop, 1 grassland, 2 bare/fallow soil."""
    crop_of: np.ndarray
    """Per parcel crop type, 1..n_crops (only used where ``use`` is 0)."""
    rows: np.ndarray
    """float32 ``(y, x)`` in [-1, 1], each parcel's oriented row/tramline pattern."""


def _zones(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> _Zones:
    """A town blob, and forest where a smooth random field is high; ``yy``/``xx`` are pixel
    coordinates, float32 ``(y, x)``."""
    h, w = yy.shape
    n = max(h, w)
    cy, cx = rng.uniform(0.3, 0.7, 2) * (h, w)
    town_r = 0.22 * n
    town_edge = np.hypot(yy - cy, xx - cx) / town_r + 0.25 * smooth_noise(rng, yy.shape, n / 8)
    town = town_edge < 1.0
    forest = (smooth_noise(rng, yy.shape, n / 6) > 0.75) & ~town
    return _Zones(cy, cx, town_r, town_edge, town, forest)


def _parcels(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, n_crops: int) -> _Parcels:
    """Voronoi cells of jittered seeds, 12-30 px across, each with a use, a crop type and an
    oriented row pattern (period 3-6 px); ``yy``/``xx`` are float32 ``(y, x)`` coordinates."""
    h, w = yy.shape
    spacing = float(rng.uniform(14, 20))
    # One row/column of seeds beyond each edge so that border cells are cut, not stretched.
    gy, gx = np.mgrid[-1 : h / spacing + 1, -1 : w / spacing + 1]
    seeds = np.column_stack([gy.ravel(), gx.ravel()]) * spacing
    seeds += rng.uniform(-0.45, 0.45, seeds.shape) * spacing
    dist, idx = cKDTree(seeds).query(np.column_stack([yy.ravel(), xx.ravel()]), k=2)
    field_id = idx[:, 0].reshape(yy.shape).astype(np.int32)
    # Nearly equidistant from the two nearest seeds: the pixel straddles a parcel edge.
    boundary = (dist[:, 1] - dist[:, 0]).reshape(yy.shape) < 1.2
    n_fields = len(seeds)
    # Field use: crop (70 %), grassland (15 %), bare/fallow soil (15 %).
    use = rng.choice(3, size=n_fields, p=[0.7, 0.15, 0.15])
    crop_of = rng.integers(1, n_crops + 1, size=n_fields)
    theta = rng.uniform(0, np.pi, n_fields).astype(np.float32)
    period = rng.uniform(3.0, 6.0, n_fields).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, n_fields).astype(np.float32)
    t, p, ph = theta[field_id], period[field_id], phase[field_id]
    rows = np.sin(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / p + ph).astype(np.float32)
    return _Parcels(field_id, boundary, use, crop_of, rows)


def _paint_farmland(
    rng: np.random.Generator, fr: dict[str, np.ndarray], agri: np.ndarray, parcels: _Parcels
) -> np.ndarray:
    """Paint crop fields, grassland, fallow and field margins on the bool ``(y, x)`` ``agri``
    pixels of the still-empty ``fr``; return the bool ``(y, x)`` mask of crop-field interiors."""
    u = parcels.use[parcels.field_id]
    is_crop = agri & (u == 0) & ~parcels.boundary
    fr["crop"][is_crop] = 1.0
    grassland = agri & (u == 1)
    fr["grass"][grassland] = 0.85 + 0.1 * rng.random(int(grassland.sum()), dtype=np.float32)
    fr["dry_veg"][grassland] = 0.1
    bare = agri & (u == 2) & ~parcels.boundary
    # Fallow and ploughed fields still carry weeds and residue at 30 m.
    noise = smooth_noise(rng, agri.shape, 6)
    green_bare = np.clip(0.32 + 0.1 * noise + 0.08 * parcels.rows, 0.05, 0.48)
    fr["grass"][bare] = green_bare[bare]
    fr["dry_veg"][bare] = 0.18
    # Field margins: tracks, hedges and grass strips.
    margin = agri & parcels.boundary & ~grassland
    hedge = margin & (rng.random(agri.shape) < 0.35)
    fr["grass"][margin] = 0.55
    fr["dry_veg"][margin] = 0.15
    fr["tree"][hedge] = 0.5
    fr["grass"][hedge] = 0.3
    return is_crop


def _paint_forest(rng: np.random.Generator, fr: dict[str, np.ndarray], forest: np.ndarray) -> None:
    """Paint closed canopy with gaps (grass and soil below) over the bool ``(y, x)`` ``forest``."""
    canopy = np.clip(0.88 + 0.12 * smooth_noise(rng, forest.shape, 3), 0.5, 1.0)
    _paint(
        fr,
        forest.astype(np.float32),
        {"tree": canopy, "grass": 0.75 * (1 - canopy), "soil": 0.25 * (1 - canopy)},
    )


def _paint_town(
    rng: np.random.Generator,
    fr: dict[str, np.ndarray],
    yy: np.ndarray,
    xx: np.ndarray,
    zones: _Zones,
) -> np.ndarray:
    """Paint the town: a rotated street grid (blocks 7-10 px), 2 px lots with roofs, yards and
    gardens, denser towards the centre. Returns the uint8 ``(y, x)`` roof kind (index into
    :data:`ROOF_KINDS`), drawn for every pixel, in town or not."""
    cy, cx = zones.cy, zones.cx
    ang = float(rng.uniform(-0.5, 0.5))
    su = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
    sv = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
    block = float(rng.uniform(7, 10))
    street = (np.abs(((su + 0.5 * block) % block) - 0.5 * block) < 0.6) | (
        np.abs(((sv + 0.5 * block) % block) - 0.5 * block) < 0.6
    )
    lot = np.floor(su / 2.0).astype(np.int64) * 7919 + np.floor(sv / 2.0).astype(np.int64)
    # Lots draw from a child generator, so the main stream advances by one draw however many
    # lots the grid holds.
    lot_rng = np.random.default_rng(rng.integers(2**32))
    lot_u, lot_inv = np.unique(lot, return_inverse=True)
    lot_inv = lot_inv.reshape(yy.shape)
    roof_share = lot_rng.uniform(0.25, 0.85, lot_u.size).astype(np.float32)[lot_inv]
    green_share = lot_rng.uniform(0.05, 0.4, lot_u.size).astype(np.float32)[lot_inv]
    roof_kind = lot_rng.choice(3, size=lot_u.size, p=[0.4, 0.3, 0.3]).astype(np.uint8)[lot_inv]
    centre = np.clip(1.0 - zones.town_edge, 0.0, 1.0)  # denser towards the centre
    roof_share = np.clip(roof_share * (0.6 + 0.6 * centre), 0.0, 0.9)
    green_share = np.minimum(green_share * (1.4 - 0.8 * centre), 1.0 - roof_share)
    town_f = zones.town.astype(np.float32)
    rest = 1.0 - roof_share - green_share
    _paint(
        fr,
        town_f * ~street,
        {"roof": roof_share, "pavement": 0.6 * rest, "grass": 0.5 * green_share + 0.4 * rest,
         "tree": 0.5 * green_share},
    )  # fmt: skip
    _paint(fr, town_f * street, {"road": 0.55, "pavement": 0.1, "tree": 0.2, "grass": 0.15})
    return roof_kind


def _paint_highways(
    rng: np.random.Generator,
    fr: dict[str, np.ndarray],
    yy: np.ndarray,
    xx: np.ndarray,
    town: np.ndarray,
) -> None:
    """Paint 2-3 straight highways across the scene, 20-25 m of asphalt in a 30 m pixel, with
    grass and tree verges 3 px wide outside the bool ``(y, x)`` ``town``."""
    h, w = yy.shape
    for _ in range(int(rng.integers(2, 4))):
        a = rng.uniform(0, np.pi)
        y0, x0 = rng.uniform(0.2, 0.8, 2) * (h, w)
        d = (xx - x0) * np.sin(a) - (yy - y0) * np.cos(a)
        road = _line_cover(d, float(rng.uniform(0.7, 0.9)))
        verge = _line_cover(d, 3.0) * (1 - road)
        _paint(fr, verge * (~town), {"grass": 0.7, "tree": 0.3})
        _paint(fr, road, {"road": 1.0})


def _paint_river_and_lake(
    rng: np.random.Generator,
    fr: dict[str, np.ndarray],
    yy: np.ndarray,
    xx: np.ndarray,
    zones: _Zones,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a meandering river with riparian vegetation, and a lake beside the town.

    Returns ``(d_river, width)``, ``(y, x)`` arrays in px: the signed distance across the river
    from its centre line, and the river's local width (soil carbon rises near the river)."""
    h, w = yy.shape
    n = max(h, w)
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
    cy, cx, town_r = zones.cy, zones.cx, zones.town_r
    ly, lx = cy + rng.uniform(-0.35, 0.35) * town_r, cx + rng.choice([-1, 1]) * town_r * 1.1
    shore = 1 + 0.2 * smooth_noise(rng, yy.shape, 4)  # a ragged shoreline
    lake_d = np.hypot((yy - ly) / 1.6, xx - lx) - 0.04 * n * shore
    lake = np.clip(0.5 - lake_d, 0.0, 1.0).astype(np.float32)
    _paint(fr, np.clip(1.5 - lake_d, 0, 1) * (1 - lake), {"tree": 0.4, "grass": 0.6})
    _paint(fr, np.maximum(water, lake), {"water": 1.0})
    return d_river, width


def _soil_organic_carbon(
    rng: np.random.Generator, parcels: _Parcels, d_river: np.ndarray, river_width: np.ndarray
) -> np.ndarray:
    """float32 ``(y, x)`` soil organic carbon, g/kg: a regional trend, per-field management,
    and organic floodplain soils near the river (``d_river``, ``river_width`` in px)."""
    field_id = parcels.field_id
    n = max(field_id.shape)
    soc = 14.0 + 5.0 * smooth_noise(rng, field_id.shape, n / 5)
    soc += rng.normal(0.0, 3.0, len(parcels.use)).astype(np.float32)[field_id]
    soc += 30.0 * np.exp(-np.maximum(np.abs(d_river) - river_width / 2, 0) / (0.04 * n))
    return np.clip(soc, 3.0, 120.0).astype(np.float32)


def _brightness(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """float32 ``shape`` multiplicative brightness about 1: smooth patches plus pixel noise."""
    smooth = smooth_noise(rng, shape, 2)
    return (1.0 + 0.04 * smooth + 0.02 * rng.standard_normal(shape)).astype(np.float32)


def make_layout(rng: np.random.Generator, shape: tuple[int, int], n_crops: int) -> Layout:
    """Generate a region layout on a grid of ``shape`` (y, x) 30 m pixels.

    Each part of the scene is painted over what is already there and draws from ``rng`` in
    turn, so the order of the steps below is part of what a seed means: keep it.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fr = {k: np.zeros(shape, np.float32) for k in COMPONENTS}

    zones = _zones(rng, yy, xx)
    parcels = _parcels(rng, yy, xx, n_crops)
    agri = ~zones.town & ~zones.forest
    is_crop = _paint_farmland(rng, fr, agri, parcels)
    # Bare soil fills whatever the fields leave, so the fractions sum to 1 before the town,
    # forest, roads and water are painted over.
    fr["soil"] = np.clip(1.0 - sum(fr.values()), 0.0, 1.0)
    _paint_forest(rng, fr, zones.forest)
    roof_kind = _paint_town(rng, fr, yy, xx, zones)
    _paint_highways(rng, fr, yy, xx, zones.town)
    d_river, river_width = _paint_river_and_lake(rng, fr, yy, xx, zones)
    soc = _soil_organic_carbon(rng, parcels, d_river, river_width)
    brightness = _brightness(rng, shape)

    field_crop = np.where(is_crop, parcels.crop_of[parcels.field_id], 0).astype(np.int32)
    field_id = np.where(agri, parcels.field_id, -1).astype(np.int32)
    return Layout(fr, field_id, field_crop, parcels.rows, roof_kind, soc, brightness)


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
