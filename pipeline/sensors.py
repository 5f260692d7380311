"""Sensor tables: EnMAP HSI, HLS v2.0 and the Prithvi presets, loaded from ``catalogs/sensors``.

The YAML files are the single source of sensor facts. This module parses them into frozen
dataclasses and derives what follows from them (valid bands, the EnMAP -> HLS alignment), so
nothing downstream types a wavelength or an index by hand.

The tables are defaults. A real product carries its own band metadata (STAC ``eo:bands``),
and :meth:`EnmapBands.from_eo_bands` turns it into the same dataclass so that it can win.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import yaml

from hyperkd.catalogs import resource

VNIR, SWIR = "VNIR", "SWIR"


def _read_yaml(*parts: str) -> dict[str, Any]:
    return yaml.safe_load(resource(*parts).read_text())


@dataclass(frozen=True)
class SpectralBand:
    """One band of an imaging spectrometer."""

    name: str
    """Band name as the product lists it (e.g. ``"1"`` or ``"b001"``)."""
    center_nm: float
    """Centre wavelength in nm."""
    fwhm_nm: float
    """Full width at half maximum in nm."""
    detector: str | None = None
    """``"VNIR"``, ``"SWIR"`` or ``None`` where the source does not say."""


@dataclass(frozen=True)
class EnmapBands:
    """An EnMAP band set in the order the product (or table) lists it.

    ``nodata_bands`` are positions (0-based, in this order) that the product fills with
    ``nodata``. Reflectance is ``DN * gain + offset`` per band.
    """

    bands: tuple[SpectralBand, ...]
    nodata_bands: frozenset[int] = frozenset()
    gain: tuple[float, ...] = ()
    offset: tuple[float, ...] = ()
    nodata: int = -32768
    processor_version: str | None = None

    def __post_init__(self) -> None:
        n = len(self.bands)
        if not self.gain:
            object.__setattr__(self, "gain", (1e-4,) * n)
        if not self.offset:
            object.__setattr__(self, "offset", (0.0,) * n)
        if len(self.gain) != n or len(self.offset) != n:
            raise ValueError(
                f"band metadata: {n} bands but {len(self.gain)} gains and {len(self.offset)} offsets"
            )
        bad = [i for i in self.nodata_bands if not 0 <= i < n]
        if bad:
            raise ValueError(f"band metadata: nodata band positions {bad} outside 0..{n - 1}")

    def __len__(self) -> int:
        return len(self.bands)

    @property
    def wavelengths(self) -> np.ndarray:
        """Centre wavelengths, nm, shape ``(band,)``."""
        return np.array([b.center_nm for b in self.bands], dtype=np.float64)

    @property
    def fwhms(self) -> np.ndarray:
        """FWHM, nm, shape ``(band,)``."""
        return np.array([b.fwhm_nm for b in self.bands], dtype=np.float64)

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask, shape ``(band,)``: False for bands the product fills with nodata."""
        mask = np.ones(len(self.bands), dtype=bool)
        mask[sorted(self.nodata_bands)] = False
        return mask

    @property
    def valid_indices(self) -> np.ndarray:
        """Positions of the valid bands (218 for EnMAP L2A)."""
        return np.flatnonzero(self.valid)

    @property
    def is_sorted(self) -> bool:
        """True when the bands are listed by ascending centre wavelength."""
        return bool(np.all(np.diff(self.wavelengths) > 0))

    def sorted_by_wavelength(self) -> EnmapBands:
        """The same bands, reordered by centre wavelength (the L2A canonical order)."""
        order = np.argsort(self.wavelengths, kind="stable")
        position = {int(old): new for new, old in enumerate(order)}
        return EnmapBands(
            bands=tuple(self.bands[i] for i in order),
            nodata_bands=frozenset(position[i] for i in self.nodata_bands),
            gain=tuple(self.gain[i] for i in order),
            offset=tuple(self.offset[i] for i in order),
            nodata=self.nodata,
            processor_version=self.processor_version,
        )

    @classmethod
    def from_eo_bands(
        cls,
        eo_bands: Sequence[Mapping[str, Any]],
        *,
        nodata: int = -32768,
        processor_version: str | None = None,
    ) -> EnmapBands:
        """Band metadata from a STAC ``eo:bands`` list (DLR's ``image`` asset).

        Some products list bands by detector: VNIR first, then SWIR (the real v01.03.02
        Potsdam L2A tiles do), so wavelengths fall back once where the SWIR list starts. That
        drop is how the detector is recovered; a sorted list (the real v01.04.02 DLR STAC item)
        carries no detector information and gets ``detector=None``.
        """
        if not eo_bands:
            raise ValueError("item has no band metadata: the image asset lists no eo:bands")
        try:
            centres = [float(b["center_wavelength"]) for b in eo_bands]
            fwhms = [float(b.get("full_width_half_max", np.nan)) for b in eo_bands]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"item band metadata is incomplete: eo:bands entry lacks {exc}"
            ) from exc
        drops = np.flatnonzero(np.diff(centres) < 0)
        detectors: list[str | None] = [None] * len(centres)
        if len(drops) == 1:
            split = int(drops[0]) + 1
            detectors = [VNIR] * split + [SWIR] * (len(centres) - split)
        bands = tuple(
            SpectralBand(name=str(b.get("name", i + 1)), center_nm=c, fwhm_nm=f, detector=d)
            for i, (b, c, f, d) in enumerate(zip(eo_bands, centres, fwhms, detectors, strict=True))
        )
        gain = tuple(float(b.get("enmap:gain_of_band", 1e-4)) for b in eo_bands)
        offset = tuple(float(b.get("enmap:offset_of_band", 0.0)) for b in eo_bands)
        return cls(bands, frozenset(), gain, offset, nodata, processor_version)


@dataclass(frozen=True)
class EnmapTable:
    """The catalog's EnMAP HSI L2A table: the canonical band axis of every cube."""

    bands: EnmapBands
    hyspecnet_drop: tuple[tuple[int, int], ...]
    image_asset: str
    quality_assets: Mapping[str, str]
    """Quality asset key -> meaning (``cloud``, ``haze``, ...)."""
    file_suffixes: Mapping[str, str]
    scale: float = 1e-4
    offset: float = 0.0

    @property
    def hyspecnet_indices(self) -> np.ndarray:
        """The 202-band HySpecNet-11k / torchgeo convention as positions."""
        keep = np.ones(len(self.bands), dtype=bool)
        for lo, hi in self.hyspecnet_drop:
            keep[lo : hi + 1] = False
        return np.flatnonzero(keep)


@dataclass(frozen=True)
class TeacherBand:
    """One of the six HLS bands the Prithvi teacher sees."""

    name: str
    l30_key: str
    s30_key: str
    range_nm: tuple[float, float]


@dataclass(frozen=True)
class HlsSensor:
    """HLS v2.0 L30/S30: asset keys per role, scaling and Fmask bits."""

    roles: tuple[TeacherBand, ...]
    scale: float
    offset: float
    nodata: int
    fmask_asset: str
    fmask_fill: int
    fmask_invalid_bits: tuple[int, ...]
    collections: Mapping[str, str] = field(default_factory=dict)
    """Collection id -> product (``l30`` or ``s30``)."""

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.roles)

    def asset_keys(self, product: str) -> dict[str, str]:
        """Role name -> asset key for ``product`` (``"l30"`` or ``"s30"``)."""
        if product not in ("l30", "s30"):
            raise ValueError(f"unknown HLS product {product!r}: expected 'l30' or 's30'")
        return {r.name: (r.l30_key if product == "l30" else r.s30_key) for r in self.roles}

    def product_of(self, collection: str) -> str:
        """``l30``/``s30`` for a collection id such as ``HLSS30_2.0`` or ``hls2-l30``."""
        try:
            return self.collections[collection]
        except KeyError:
            raise ValueError(f"unknown HLS collection {collection!r}") from None


@dataclass(frozen=True)
class PrithviPreset:
    """A Prithvi teacher: its band order, normalisation and architecture."""

    name: str
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    """Per-band mean in HLS DN (reflectance x 10000)."""
    std: tuple[float, ...]
    img_size: int
    patch_size: int
    num_frames: int
    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int
    mlp_ratio: float
    checkpoint: str


@cache
def enmap_table() -> EnmapTable:
    """The catalog's EnMAP L2A table (224 bands, sorted by wavelength)."""
    raw = _read_yaml("sensors", "enmap_hsi.yaml")
    bands = tuple(
        SpectralBand(name=str(i + 1), center_nm=float(c), fwhm_nm=float(f), detector=str(d))
        for i, (c, f, d) in enumerate(raw["bands"])
    )
    n = len(bands)
    return EnmapTable(
        bands=EnmapBands(
            bands=bands,
            nodata_bands=frozenset(int(i) for i in raw["nodata_bands"]),
            gain=(float(raw["scale"]),) * n,
            offset=(float(raw["offset"]),) * n,
            nodata=int(raw["nodata"]),
            processor_version=str(raw["processor_generation"]),
        ),
        hyspecnet_drop=tuple((int(a), int(b)) for a, b in raw["hyspecnet_drop"]),
        image_asset=str(raw["image_asset"]),
        quality_assets={k: str(v["meaning"]) for k, v in raw["quality_assets"].items()},
        file_suffixes=dict(raw["file_suffixes"]),
        scale=float(raw["scale"]),
        offset=float(raw["offset"]),
    )


@cache
def hls_sensor() -> HlsSensor:
    """The catalog's HLS v2.0 table."""
    raw = _read_yaml("sensors", "hls.yaml")
    roles = tuple(
        TeacherBand(
            r["name"], r["l30"], r["s30"], (float(r["range_nm"][0]), float(r["range_nm"][1]))
        )
        for r in raw["roles"]
    )
    fm = raw["fmask"]
    return HlsSensor(
        roles=roles,
        scale=float(raw["scale"]),
        offset=float(raw["offset"]),
        nodata=int(raw["nodata"]),
        fmask_asset=str(fm["asset"]),
        fmask_fill=int(fm["fill"]),
        fmask_invalid_bits=tuple(int(b) for b in fm["invalid_bits"]),
        collections=dict(raw["collections"]),
    )


@cache
def prithvi_preset(name: str = "prithvi-eo-1.0-100m") -> PrithviPreset:
    """A Prithvi preset by name (``prithvi-eo-1.0-100m`` or ``prithvi-eo-2.0-300m``)."""
    presets = _read_yaml("sensors", "prithvi.yaml")["presets"]
    if name not in presets:
        raise ValueError(f"unknown Prithvi preset {name!r}: choose one of {sorted(presets)}")
    p = presets[name]
    return PrithviPreset(
        name=name,
        bands=tuple(p["bands"]),
        mean=tuple(float(v) for v in p["mean"]),
        std=tuple(float(v) for v in p["std"]),
        **{k: p[k] for k in ("img_size", "patch_size", "num_frames", "embed_dim", "depth")},
        num_heads=int(p["num_heads"]),
        decoder_embed_dim=int(p["decoder_embed_dim"]),
        decoder_depth=int(p["decoder_depth"]),
        decoder_num_heads=int(p["decoder_num_heads"]),
        mlp_ratio=float(p["mlp_ratio"]),
        checkpoint=str(p["checkpoint"]),
    )


def alignment(
    bands: EnmapBands | None = None, hls: HlsSensor | None = None
) -> dict[str, np.ndarray]:
    """Spectral range-based channel alignment: teacher band -> EnMAP band positions.

    For each HLS band, the *valid* EnMAP bands whose centre lies inside the band's range
    (inclusive). Derived from the tables, never typed in. Raises if a teacher band would get
    no EnMAP band, since its mean would be undefined.
    """
    bands = bands if bands is not None else enmap_table().bands
    hls = hls if hls is not None else hls_sensor()
    centres, valid = bands.wavelengths, bands.valid
    out: dict[str, np.ndarray] = {}
    for role in hls.roles:
        lo, hi = role.range_nm
        idx = np.flatnonzero((centres >= lo) & (centres <= hi) & valid)
        if idx.size == 0:
            raise ValueError(f"no valid EnMAP band lies in the {role.name} range {lo}-{hi} nm")
        out[role.name] = idx
    return out
