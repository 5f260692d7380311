"""Reading what real STAC items say, quirks included.

Real items disagree with the spec and with each other: DLR puts ``eo:bands`` on the ``image``
asset, leaves item-level ``proj:epsg`` null, writes numbers as strings (``"72"``, ``"-32768"``);
pystac-client migrates ``proj:epsg`` to ``proj:code`` (projection v2); old CMR-STAC items carry
no projection at all. These helpers hide that behind plain values.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import pystac

from hyperkd.pipeline.sensors import EnmapBands
from hyperkd.pipeline.stac.sources import SensorProfile, profile_of

_VERSION_IN_ID = re.compile(r"_V(\d{2})(\d{2})(\d{2})_")
_ENMAP_PRODUCT = re.compile(r"^(?P<datatake>.+)_V\d{6}_\d{8}T\d{6}Z$")
"""EnMAP ids end in ``_V<version>_<processing time>``; what precedes is the datatake/tile."""
_HLS_PRODUCT = re.compile(r"^(?P<datatake>HLS\.[LS]30\..+)\.v(?P<version>\d+(?:\.\d+)*)$")
"""HLS ids end in ``.v<version>`` (``HLS.L30.T13SDA.2024120T173913.v2.0``)."""


@dataclass(frozen=True)
class AssetGrid:
    """The pixel grid of one raster asset, from its ``proj:*`` metadata."""

    epsg: int
    shape: tuple[int, int]
    """``(rows, cols)`` in pixels."""
    transform: tuple[float, float, float, float, float, float]
    """Affine ``(a, b, c, d, e, f)``: x = a*col + b*row + c, y = d*col + e*row + f (CRS units, m)."""

    @property
    def resolution(self) -> tuple[float, float]:
        """``(x, y)`` pixel size in CRS units; y is negative for north-up grids."""
        return (self.transform[0], self.transform[4])


def number(value: Any) -> float | None:
    """A property as a float; DLR writes numbers as strings. ``None`` when absent or not numeric."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def cloud_cover(item: pystac.Item, profile: SensorProfile | None = None) -> float | None:
    """Cloud cover in percent (0-100), ``None`` when the item does not say.

    A value that is present but not a number (``"lots"``, NaN) raises ``ValueError`` naming
    the item: it must not pass a ``--max-cloud`` filter as if it were clear.
    """
    key = profile.cloud_property if profile is not None else "eo:cloud_cover"
    raw = item.properties.get(key)
    value = number(raw)
    if raw is not None and (value is None or value != value):
        raise ValueError(f"item {item.id}: {key} is {raw!r}, not a number of percent")
    return value


def scene_datetime(item: pystac.Item) -> dt.datetime:
    """Acquisition time (UTC): ``datetime`` or, for range items, ``start_datetime``."""
    when = item.datetime or pystac.utils.str_to_datetime(item.properties["start_datetime"])
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when


def processor_version(item: pystac.Item) -> str | None:
    """Processing version (``"01.04.02"``) from ``version``/``processing:version`` or the item id."""
    for key in ("version", "processing:version", "enmap:archivedVersion"):
        value = item.properties.get(key)
        if value:
            return str(value)
    match = _VERSION_IN_ID.search(item.id)
    return ".".join(match.groups()) if match else None


def datatake_of(scene_id: str) -> str:
    """What a reprocessed product shares with its predecessor: the id without its processor
    version (and, for EnMAP, its processing time). Other ids are their own datatake."""
    for pattern in (_ENMAP_PRODUCT, _HLS_PRODUCT):
        match = pattern.match(scene_id)
        if match:
            return match.group("datatake")
    return scene_id


def newness(scene_id: str, version: str | None) -> tuple[tuple[int, ...], str]:
    """Sort key of products of one datatake: processor version (numeric), then the id (whose
    EnMAP tail is the processing time). ``version`` falls back to the id's own."""
    text = version
    hls = _HLS_PRODUCT.match(scene_id)
    if not text:
        match = _VERSION_IN_ID.search(scene_id)
        text = ".".join(match.groups()) if match else (hls.group("version") if hls else "")
    numbers = tuple(int(n) for n in re.findall(r"\d+", text or ""))
    return numbers, scene_id


def enmap_bands_of(item: pystac.Item, profile: SensorProfile | None = None) -> EnmapBands:
    """The scene's own band metadata from ``eo:bands`` of its image asset.

    Shape: 224 bands in the product's order (DLR: by detector, VNIR then SWIR). Nodata comes
    from the ``enmap:nodata`` property. Raises ``ValueError`` naming the item when the
    metadata is missing, so the scene can be reported and skipped.
    """
    profile = profile or profile_of(item)
    if profile is None or profile.sensor != "enmap":
        raise ValueError(f"item {item.id}: collection {item.collection_id!r} is not EnMAP L2A")
    asset_key = profile.band_metadata or profile.band_assets["reflectance"]
    asset = item.assets.get(asset_key)
    eo_bands = asset.extra_fields.get("eo:bands") if asset is not None else None
    # Some catalogues (and STAC 1.1 "bands") put the list on the item instead.
    eo_bands = eo_bands or item.properties.get("eo:bands") or item.properties.get("bands")
    if not eo_bands:
        raise ValueError(f"item {item.id}: no band metadata (no eo:bands on asset {asset_key!r})")
    nodata = number(item.properties.get(profile.nodata_property or "")) if profile else None
    try:
        return EnmapBands.from_eo_bands(
            eo_bands,
            nodata=int(nodata) if nodata is not None else int(profile.nodata or -32768),
            processor_version=processor_version(item),
        )
    except ValueError as exc:
        raise ValueError(f"item {item.id}: {exc}") from None


def asset_grid(item: pystac.Item, asset_key: str) -> AssetGrid | None:
    """The asset's grid from its own ``proj:*`` fields, else the item's; ``None`` when absent.

    ``None`` means "read it from the file" (CMR-STAC HLS items carry no projection).
    """
    asset = item.assets.get(asset_key)
    if asset is None:
        raise ValueError(f"item {item.id}: no asset {asset_key!r} (has {sorted(item.assets)})")
    for fields in (asset.extra_fields, item.properties):
        epsg = _epsg(fields)
        shape = fields.get("proj:shape")
        transform = fields.get("proj:transform")
        if epsg is not None and shape and transform and len(transform) >= 6:
            return AssetGrid(
                epsg=epsg,
                shape=(int(shape[0]), int(shape[1])),
                transform=tuple(float(v) for v in transform[:6]),  # type: ignore[arg-type]
            )
    return None


def _epsg(fields: dict[str, Any]) -> int | None:
    epsg = fields.get("proj:epsg")
    if epsg is not None:
        return int(epsg)
    code = fields.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        return int(code.split(":", 1)[1])
    return None
