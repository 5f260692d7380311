"""STAC metadata of the synthetic region, mirroring the real items in ``shared/data/stac``.

EnMAP items follow DLR's ``ENMAP_HSI_L2A`` items: ``image`` asset with ``eo:bands`` (integer
``name``, ``center_wavelength``, ``full_width_half_max``, ``enmap:gain_of_band``,
``enmap:offset_of_band``) and projection on the asset, item-level ``proj:epsg`` null,
string-valued ``eo:cloud_cover`` and ``enmap:*`` properties, the real quality asset keys.
HLS items follow CMR-STAC v2.0: granule UR as id, band keys + ``Fmask`` as asset keys and no
projection metadata. Hrefs are relative (a self-contained static catalog).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hyperkd.pipeline.sensors import EnmapBands
from hyperkd.pipeline.synthetic.factory import RegionSpec

COG_MIME = "image/tiff; application=geotiff; profile=cloud-optimized"
ENMAP_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.0.0/schema.json",
    "https://stac-extensions.github.io/scientific/v1.0.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
]
QUALITY_ROLES = {
    "quality_cloud": ["quality", "cloud"],
    "quality_cloud_shadow": ["quality", "cloud-shadow"],
    "quality_haze": ["quality", "haze"],
    "quality_cirrus": ["quality", "cirrus"],
    "quality_snow": ["quality", "snow"],
    "quality_classes": ["quality"],
}


def footprint_lonlat(
    crs_epsg: int, transform: Any, shape: tuple[int, int]
) -> list[tuple[float, float]]:
    """Closed lon/lat ring (EPSG:4326) of a grid's outline, densified to 8 points per side."""
    from pyproj import Transformer

    h, w = shape
    edge = [(c, 0) for c in range(0, w, max(1, w // 8))] + [
        (w, r) for r in range(0, h, max(1, h // 8))
    ]
    edge += [(c, h) for c in range(w, 0, -max(1, w // 8))] + [
        (0, r) for r in range(h, 0, -max(1, h // 8))
    ]
    xy = [transform @ (c, r) for c, r in edge]
    to_ll = Transformer.from_crs(crs_epsg, 4326, always_xy=True)
    ring = [tuple(round(v, 7) for v in to_ll.transform(x, y)) for x, y in xy]
    return [*ring, ring[0]]  # type: ignore[list-item]


def _geometry(
    spec: RegionSpec, transform: Any, shape: tuple[int, int]
) -> tuple[dict[str, Any], list[float]]:
    ring = footprint_lonlat(spec.crs_epsg, transform, shape)
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    return {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}, [
        min(lons),
        min(lats),
        max(lons),
        max(lats),
    ]


def _proj(spec: RegionSpec) -> dict[str, Any]:
    n = spec.size_px
    t = spec.enmap_transform
    x0, y1 = t.c, t.f
    x1, y0 = x0 + n * t.a, y1 + n * t.e
    poly = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {
        "proj:epsg": spec.crs_epsg,
        "proj:shape": [n, n],
        "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f, 0.0, 0.0, 1.0],
        "proj:geometry": {"type": "Polygon", "coordinates": [poly]},
        "proj:bbox": [x0, y0, x1, y1],
    }


def _iso(d: datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def enmap_item(
    spec: RegionSpec,
    item_id: str,
    start: datetime,
    processed: datetime,
    files: Mapping[str, Path],
    bands: EnmapBands,
    cover_percent: Mapping[str, float],
    water_percent: float,
) -> dict[str, Any]:
    """A DLR-style ``ENMAP_HSI_L2A`` item dict; asset hrefs are absolute paths (made relative later)."""
    geometry, bbox = _geometry(spec, spec.enmap_transform, (spec.size_px, spec.size_px))
    assets = _enmap_assets(files, bands, _proj(spec))
    properties = _enmap_properties(
        spec, item_id, start, processed, bands, cover_percent, water_percent
    )
    return {
        "type": "Feature", "stac_version": "1.0.0", "stac_extensions": ENMAP_EXTENSIONS, "id": item_id,
        "collection": "ENMAP_HSI_L2A", "geometry": geometry, "bbox": bbox, "links": [],
        "properties": properties, "assets": assets,
    }  # fmt: skip


def _enmap_assets(
    files: Mapping[str, Path], bands: EnmapBands, proj: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``image`` asset (one ``eo:bands`` entry per band, with DLR's gain and offset) and the
    quality assets (uint8 ``raster:bands``), each with the scene's projection ``proj``."""
    eo_bands = [
        {"name": i + 1, "center_wavelength": b.center_nm, "full_width_half_max": b.fwhm_nm,
         "enmap:gain_of_band": g, "enmap:offset_of_band": o}
        for i, (b, g, o) in enumerate(zip(bands.bands, bands.gain, bands.offset, strict=True))
    ]  # fmt: skip
    assets: dict[str, Any] = {
        "image": {
            "href": str(files["image"]), "type": COG_MIME, "title": "Spectral Image",
            "description": "Earth image measurement data (synthetic) in orthorectified geometry",
            **proj, "eo:bands": eo_bands, "roles": ["data"],
        }
    }  # fmt: skip
    for key, roles in QUALITY_ROLES.items():
        raster = {"data_type": "uint8", "scale": 1.0, "offset": 0.0, "sampling": "area"}
        if key == "quality_classes":
            raster["nodata"] = 3.0
        assets[key] = {
            "href": str(files[key]), "type": COG_MIME, "title": key.replace("_", " ").capitalize(),
            "description": f"{key.split('_', 1)[1].replace('_', ' ').capitalize()} quality layer",
            "raster:bands": [raster], **proj, "roles": roles,
        }  # fmt: skip
    return assets


def _enmap_properties(
    spec: RegionSpec,
    item_id: str,
    start: datetime,
    processed: datetime,
    bands: EnmapBands,
    cover_percent: Mapping[str, float],
    water_percent: float,
) -> dict[str, Any]:
    """DLR's item properties: covers (percent of the scene, by quality layer, and water)
    as rounded integer strings, the 4 s acquisition from ``start``, processing at ``processed``."""
    cloud = cover_percent["quality_cloud"]
    return {
        "version": spec.processor_version,
        "created": _iso(processed),
        "updated": _iso(processed),
        "datetime": _iso(start),
        "start_datetime": _iso(start),
        "end_datetime": _iso(start + timedelta(seconds=4)),
        "platform": "enmap",
        "proj:epsg": None,
        "eo:cloud_cover": f"{round(cloud):d}",
        "eo:snow_cover": "0",
        "processing:level": "L2A",
        "enmap:archivedVersion": spec.processor_version,
        "enmap:cirrus_cover": f"{round(cover_percent['quality_cirrus']):d}",
        "enmap:cloud_shadow": f"{round(cover_percent['quality_cloud_shadow']):d}",
        "enmap:haze_cover": f"{round(cover_percent['quality_haze']):d}",
        "enmap:datatakeID": item_id.split("-DT")[1][:10],
        "enmap:nodata": str(bands.nodata),
        "enmap:tileID": "01",
        "enmap:water_cover": f"{round(water_percent):d}",
        "eo:instrument": "HSI",
        "hyperkd:synthetic": True,
    }


def hls_item(
    spec: RegionSpec,
    collection: str,
    granule: str,
    when: datetime,
    files: Mapping[str, Path],
    keys: Mapping[str, str],
    cloud_percent: int,
    wavelength_um: Mapping[str, float],
    paired_enmap: str,
) -> dict[str, Any]:
    """A CMR-STAC v2.0-style HLS item dict (no projection metadata, as CMR items have none)."""
    geometry, bbox = _geometry(spec, spec.hls_transform, spec.hls_shape)
    assets: dict[str, Any] = {}
    for role, key in keys.items():
        assets[key] = {
            "href": str(files[key]), "title": f"Download {granule}.{key}.tif", "type": COG_MIME,
            "roles": ["data"],
            "eo:bands": [{"name": key, "common_name": _COMMON.get(role, role), "center_wavelength": wavelength_um[role]}],
        }  # fmt: skip
    assets["Fmask"] = {"href": str(files["Fmask"]), "title": f"Download {granule}.Fmask.tif", "type": COG_MIME,
                       "roles": ["data"]}  # fmt: skip
    iso = when.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return {
        "type": "Feature", "id": granule, "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
        "collection": collection, "geometry": geometry, "bbox": bbox, "links": [],
        "properties": {"datetime": iso, "start_datetime": iso, "end_datetime": iso, "eo:cloud_cover": cloud_percent,
                       "hyperkd:synthetic": True, "hyperkd:paired_enmap": paired_enmap},
        "assets": assets,
    }  # fmt: skip


_COMMON = {"nir_narrow": "nir08", "swir1": "swir16", "swir2": "swir22"}


def _rel(path: Path, start: Path) -> str:
    return (
        "./" + os.path.relpath(path, start).replace(os.sep, "/")
        if not str(os.path.relpath(path, start)).startswith("..")
        else os.path.relpath(path, start).replace(os.sep, "/")
    )


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n")


def build_catalog(
    root: Path, spec: RegionSpec, enmap: Sequence[dict[str, Any]], hls: Sequence[dict[str, Any]]
) -> tuple[Path, list[Path]]:
    """Write a self-contained static catalog (STAC 1.0.0, relative links) under ``root``.

    Items are written next to their assets (``<collection>/<item id>/<item id>.json``) and
    their absolute asset hrefs are made relative. Returns (catalog path, item paths).
    """
    descriptions = {
        "ENMAP_HSI_L2A": "EnMAP HSI L2A surface reflectance (synthetic)",
        "HLSL30_2.0": "HLS Landsat OLI surface reflectance 30 m v2.0 (synthetic)",
        "HLSS30_2.0": "HLS Sentinel-2 MSI surface reflectance 30 m v2.0 (synthetic)",
    }
    catalog_path = root / "catalog.json"
    root_link = {"rel": "root", "type": "application/json", "title": "hyperkd demo region"}
    children, item_paths = [], []
    for cid, description in descriptions.items():
        items = [d for d in [*enmap, *hls] if d["collection"] == cid]
        if not items:
            continue
        coll_path = root / cid / "collection.json"
        item_links = []
        for d in items:
            path = coll_path.parent / d["id"] / f"{d['id']}.json"
            doc = dict(d)
            doc["assets"] = {
                k: {**a, "href": _rel(Path(a["href"]), path.parent)} for k, a in d["assets"].items()
            }
            doc["links"] = [
                {**root_link, "href": _rel(catalog_path, path.parent)},
                {"rel": "parent", "href": "../collection.json", "type": "application/json"},
                {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            ]
            _write_json(path, doc)
            item_paths.append(path)
            item_links.append(
                {
                    "rel": "item",
                    "href": _rel(path, coll_path.parent),
                    "type": "application/geo+json",
                }
            )
        times = sorted(d["properties"]["datetime"] for d in items)
        _write_json(coll_path, {
            "type": "Collection", "id": cid, "stac_version": "1.0.0", "description": description,
            "license": "proprietary",
            "extent": {"spatial": {"bbox": [_union([d["bbox"] for d in items])]},
                       "temporal": {"interval": [[times[0], times[-1]]]}},
            "links": [{**root_link, "href": "../catalog.json"},
                      {"rel": "parent", "href": "../catalog.json", "type": "application/json"}, *item_links],
        })  # fmt: skip
        children.append({"rel": "child", "href": _rel(coll_path, root), "type": "application/json"})
    _write_json(catalog_path, {
        "type": "Catalog", "id": "hyperkd-demo", "stac_version": "1.0.0", "title": "hyperkd demo region",
        "description": f"Synthetic EnMAP L2A + HLS v2.0 region (hyperkd scene factory, seed {spec.seed}).",
        "links": [{**root_link, "href": "./catalog.json"}, *children],
    })  # fmt: skip
    return catalog_path, item_paths


def _union(bboxes: Sequence[Sequence[float]]) -> list[float]:
    return [
        min(b[0] for b in bboxes),
        min(b[1] for b in bboxes),
        max(b[2] for b in bboxes),
        max(b[3] for b in bboxes),
    ]


def odc_stac_cfg(n_bands: int = 224) -> dict[str, Any]:
    """odc-stac ``stac_cfg`` that loads the EnMAP ``image`` asset as one ``(band, y, x)`` array.

    ``odc.stac.load(items, bands=["image"], stac_cfg=odc_stac_cfg(n))`` gives
    ``image(time, y, x, band)`` int16.
    """
    return {
        "ENMAP_HSI_L2A": {
            "assets": {
                "image": {"data_type": "int16", "nodata": -32768, "dims": ("y", "x", "band")}
            },
            "dims": {"band": n_bands},
        }
    }
