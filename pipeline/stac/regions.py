"""Regions of interest: a bbox, a GeoJSON file or a named region from ``catalogs/regions``.

A region is always a lon/lat (EPSG:4326) GeoJSON geometry. It drives the STAC search (its bbox
goes to the API, its exact geometry filters the results client-side) and the cube grid later.
Bad input raises ``ValueError`` with one line naming the problem.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from hyperkd.catalogs import resource

AREA_TYPES = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class Region:
    """A named area of interest.

    ``geometry`` is a GeoJSON geometry (Polygon or MultiPolygon) in lon/lat degrees, EPSG:4326.
    """

    name: str
    geometry: dict[str, Any]
    description: str = ""

    @property
    def shape(self) -> BaseGeometry:
        """The geometry as a shapely object (lon/lat degrees)."""
        return shape(self.geometry)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(minlon, minlat, maxlon, maxlat)`` in degrees."""
        minx, miny, maxx, maxy = self.shape.bounds
        return (float(minx), float(miny), float(maxx), float(maxy))


def named_regions() -> dict[str, Path]:
    """Region name -> GeoJSON file for every ``catalogs/regions/*.geojson``."""
    folder = resource("regions")
    found: dict[str, Path] = {}
    for node in folder.iterdir():
        if node.name.endswith(".geojson"):
            found[node.name.removesuffix(".geojson")] = Path(str(node))
    return dict(sorted(found.items()))


def parse_region(text: str) -> Region:
    """A region from ``"minlon,minlat,maxlon,maxlat"``, a GeoJSON path or a catalog name.

    Names win over paths so that ``demo`` means the shipped demo region even when a folder
    called ``demo`` exists in the working directory.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty region: give minlon,minlat,maxlon,maxlat, a GeoJSON file or a name")
    names = named_regions()
    if text in names:
        return region_from_file(names[text], name=text)
    path = Path(text).expanduser()
    if path.is_file():
        return region_from_file(path)
    if "," in text:
        return region_from_bbox(text)
    if text.endswith((".json", ".geojson")):
        raise ValueError(f"region file not found: {text}")
    raise ValueError(
        f"unknown region {text!r}: give minlon,minlat,maxlon,maxlat, a GeoJSON file, "
        f"or one of {', '.join(names) or '(none shipped)'}"
    )


def region_from_bbox(text: str, *, name: str | None = None) -> Region:
    """A rectangle from ``"minlon,minlat,maxlon,maxlat"`` (degrees)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ValueError(
            f"invalid bbox {text!r}: expected 4 numbers minlon,minlat,maxlon,maxlat, got {len(parts)}"
        )
    values: list[float] = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"invalid bbox {text!r}: {part!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"invalid bbox {text!r}: {part!r} is not a finite number")
        values.append(value)
    minlon, minlat, maxlon, maxlat = values
    for label, lon in (("minlon", minlon), ("maxlon", maxlon)):
        if not -180 <= lon <= 180:
            raise ValueError(f"invalid bbox {text!r}: {label} {lon:g} is outside -180..180")
    for label, lat in (("minlat", minlat), ("maxlat", maxlat)):
        if not -90 <= lat <= 90:
            raise ValueError(f"invalid bbox {text!r}: {label} {lat:g} is outside -90..90")
    if minlon >= maxlon:
        # A bbox across the antimeridian would need two searches; no study area needs that.
        raise ValueError(f"invalid bbox {text!r}: minlon {minlon:g} is not below maxlon {maxlon:g}")
    if minlat >= maxlat:
        raise ValueError(f"invalid bbox {text!r}: minlat {minlat:g} is not below maxlat {maxlat:g}")
    geometry = mapping(shapely.box(minlon, minlat, maxlon, maxlat))
    return Region(name=name or "bbox", geometry=_plain(geometry))


def region_from_file(path: str | Path, *, name: str | None = None) -> Region:
    """A region from a GeoJSON Feature, FeatureCollection (union of its areas) or geometry."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"region file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid GeoJSON {path}: not JSON ({exc})") from None
    return region_from_geojson(doc, name=name, origin=str(path), default_name=path.stem)


def region_from_geojson(
    doc: Any, *, name: str | None = None, origin: str = "GeoJSON", default_name: str = "region"
) -> Region:
    """A region from a parsed GeoJSON object; see :func:`region_from_file`."""
    if not isinstance(doc, dict) or "type" not in doc:
        raise ValueError(f"invalid GeoJSON {origin}: expected an object with a 'type' member")
    crs = doc.get("crs")
    if crs is not None and "4326" not in json.dumps(crs) and "CRS84" not in json.dumps(crs):
        raise ValueError(
            f"invalid GeoJSON {origin}: crs {json.dumps(crs)} is not lon/lat EPSG:4326"
        )
    kind = doc["type"]
    props: dict[str, Any] = {}
    if kind == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list) or not features:
            raise ValueError(f"invalid GeoJSON {origin}: FeatureCollection has no features")
        geoms = [_feature_geometry(f, origin) for f in features]
        props = features[0].get("properties") or {}
        geom = shapely.union_all(geoms) if len(geoms) > 1 else geoms[0]
    elif kind == "Feature":
        geom = _feature_geometry(doc, origin)
        props = doc.get("properties") or {}
    else:
        geom = _geometry(doc, origin)
    _check_area(geom, origin)
    return Region(
        name=name or str(props.get("name") or default_name),
        geometry=_plain(mapping(geom)),
        description=str(props.get("description") or ""),
    )


def _feature_geometry(feature: Any, origin: str) -> BaseGeometry:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise ValueError(f"invalid GeoJSON {origin}: FeatureCollection member is not a Feature")
    if feature.get("geometry") is None:
        raise ValueError(f"invalid GeoJSON {origin}: Feature has no geometry")
    return _geometry(feature["geometry"], origin)


def _geometry(geom: Any, origin: str) -> BaseGeometry:
    if not isinstance(geom, dict) or geom.get("type") not in AREA_TYPES:
        kind = geom.get("type") if isinstance(geom, dict) else type(geom).__name__
        raise ValueError(
            f"invalid GeoJSON {origin}: geometry type {kind!r} is not an area (Polygon or MultiPolygon)"
        )
    try:
        return shape(geom)
    except (ValueError, TypeError, IndexError, AttributeError, shapely.errors.ShapelyError) as exc:
        raise ValueError(
            f"invalid GeoJSON {origin}: bad {geom['type']} coordinates ({exc})"
        ) from None


def _check_area(geom: BaseGeometry, origin: str) -> None:
    if geom.is_empty:
        raise ValueError(f"invalid GeoJSON {origin}: the geometry is empty")
    if not geom.is_valid:
        raise ValueError(f"invalid GeoJSON {origin}: {explain_validity(geom)}")
    if geom.area == 0:
        raise ValueError(f"invalid GeoJSON {origin}: the geometry has no area")
    minx, miny, maxx, maxy = geom.bounds
    if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise ValueError(
            f"invalid GeoJSON {origin}: bounds ({minx:g}, {miny:g}, {maxx:g}, {maxy:g}) are not "
            "lon/lat degrees (EPSG:4326)"
        )


def _plain(geometry: Any) -> dict[str, Any]:
    """Shapely's ``mapping`` uses tuples; JSON round-trips give lists. Normalise to lists."""
    return json.loads(json.dumps(geometry))
