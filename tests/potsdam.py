"""A static STAC catalog for the real EnMAP L2A Potsdam tiles, built at test time.

``shared/data/enmap_potsdam_l2a/images/enmap_potsdam_tile_<col>_<row>.tif`` are 18 windows of
32 x 32 px (224 bands, float32 integer reflectance x 10000, nodata -32768) of one real scene,
``ENMAP01-____L2A-DT0000001867_20220724T104526Z_008_V010302_20230628T165614Z``. They are mosaicked
back onto the scene's own grid (the gaps between them stay nodata) into one GeoTIFF under the
test's temporary folder, described by a DLR-style ``ENMAP_HSI_L2A`` item (``eo:bands`` on the
``image`` asset from the files' own band tags, gain 1e-4, projection on the asset), so the real
``hyperkd ingest`` -> ``hyperkd tiles --labels landcover=...`` path reads it like a DLR product.
Nothing is copied into the repository.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

SCENE_ID = "ENMAP01-____L2A-DT0000001867_20220724T104526Z_008_V010302_20230628T165614Z"
TILE = 32
_NAME = re.compile(r"enmap_potsdam_tile_(\d+)_(\d+)\.tif$")


def potsdam_dir(sample_data: Path) -> Path:
    return sample_data / "enmap_potsdam_l2a"


def landcover_raster(sample_data: Path) -> Path:
    """The real 330 x 200 land-cover raster (0 = unlabeled, 1..6)."""
    return potsdam_dir(sample_data) / "enmap_landcover_unstyled.tif"


def _tiles(sample_data: Path) -> list[tuple[int, int, Path]]:
    """(col, row, path) of every tile: pixel offsets inside the scene."""
    found = []
    for path in sorted((potsdam_dir(sample_data) / "images").glob("enmap_potsdam_tile_*.tif")):
        match = _NAME.search(path.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), path))
    if not found:
        raise FileNotFoundError(f"no Potsdam tiles under {potsdam_dir(sample_data)}/images")
    return found


def write_mosaic(sample_data: Path, out: Path) -> dict[str, Any]:
    """Mosaic the tiles onto the scene grid (their bounding window) as one tiled GeoTIFF.

    Returns the facts the STAC item needs: ``transform`` (affine), ``shape``, ``crs_epsg``,
    ``eo_bands`` and ``nodata``.
    """
    import rasterio

    tiles = _tiles(sample_data)
    col0, row0 = min(c for c, _, _ in tiles), min(r for _, r, _ in tiles)
    width = max(c for c, _, _ in tiles) + TILE - col0
    height = max(r for _, r, _ in tiles) + TILE - row0
    with rasterio.open(tiles[0][2]) as src:
        profile = src.profile
        nodata = float(src.nodata)
        tags = [src.tags(b) for b in range(1, src.count + 1)]
        descriptions = src.descriptions
        # the tile named (col, row) sits col/row pixels from the scene's corner
        origin = src.transform @ (-(tiles[0][0] - col0), -(tiles[0][1] - row0))
        transform = rasterio.Affine(
            src.transform.a, 0.0, origin[0], 0.0, src.transform.e, origin[1]
        )
        crs_epsg = int(src.crs.to_epsg())
    mosaic = np.full((profile["count"], height, width), nodata, dtype=np.float32)
    for col, row, path in tiles:
        with rasterio.open(path) as src:
            if src.transform @ (0, 0) != transform @ (col - col0, row - row0):
                raise ValueError(f"{path.name} does not sit at its named offset")
            mosaic[:, row - row0 : row - row0 + TILE, col - col0 : col - col0 + TILE] = src.read()
    out.parent.mkdir(parents=True, exist_ok=True)
    profile.update(width=width, height=height, transform=transform, tiled=True, blockxsize=TILE,
                   blockysize=TILE, interleave="pixel", compress="deflate")  # fmt: skip
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(mosaic)
        for b, (tag, text) in enumerate(zip(tags, descriptions, strict=True), start=1):
            dst.update_tags(b, **tag)
            if text:
                dst.set_band_description(b, text)
    eo_bands = [
        {"name": b + 1, "center_wavelength": float(t["wavelength"]), "full_width_half_max": float(t["fwhm"]),
         "enmap:gain_of_band": 1e-4, "enmap:offset_of_band": 0.0}
        for b, t in enumerate(tags)
    ]  # fmt: skip
    return {
        "transform": transform,
        "shape": (height, width),
        "crs_epsg": crs_epsg,
        "eo_bands": eo_bands,
        "nodata": nodata,
    }


def write_catalog(sample_data: Path, root: Path) -> Path:
    """``root/catalog.json``: one ``ENMAP_HSI_L2A`` item for the Potsdam mosaic. Returns its path."""
    from pyproj import Transformer

    folder = root / "ENMAP_HSI_L2A" / SCENE_ID
    image = folder / f"{SCENE_ID}-SPECTRAL_IMAGE.TIF"
    facts = write_mosaic(sample_data, image)
    t, (h, w) = facts["transform"], facts["shape"]
    x0, y1 = t.c, t.f
    x1, y0 = x0 + w * t.a, y1 + h * t.e
    to_ll = Transformer.from_crs(facts["crs_epsg"], 4326, always_xy=True)
    ring = [to_ll.transform(x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": SCENE_ID, "collection": "ENMAP_HSI_L2A",
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/projection/v1.0.0/schema.json"],
        "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]},
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "properties": {
            "datetime": "2022-07-24T10:45:26Z", "start_datetime": "2022-07-24T10:45:26Z",
            "end_datetime": "2022-07-24T10:45:30Z", "platform": "enmap", "proj:epsg": None,
            "eo:cloud_cover": "0", "processing:level": "L2A", "version": "01.03.02",
            "enmap:nodata": str(int(facts["nodata"])), "eo:instrument": "HSI",
        },
        "assets": {"image": {
            "href": f"./{image.name}", "type": "image/tiff; application=geotiff", "roles": ["data"],
            "proj:epsg": facts["crs_epsg"], "proj:shape": [h, w],
            "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f, 0.0, 0.0, 1.0],
            "eo:bands": facts["eo_bands"],
        }},
        "links": [
            {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
        ],
    }  # fmt: skip
    collection = {
        "type": "Collection", "id": "ENMAP_HSI_L2A", "stac_version": "1.0.0", "license": "proprietary",
        "description": "Real EnMAP L2A Potsdam tiles (EnMAP-Box test data, (c) DLR 2022), mosaicked",
        "extent": {"spatial": {"bbox": [item["bbox"]]},
                   "temporal": {"interval": [["2022-07-24T10:45:26Z", "2022-07-24T10:45:30Z"]]}},
        "links": [{"rel": "root", "href": "../catalog.json", "type": "application/json"},
                  {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
                  {"rel": "item", "href": f"./{SCENE_ID}/{SCENE_ID}.json", "type": "application/geo+json"}],
    }  # fmt: skip
    catalog = {
        "type": "Catalog", "id": "enmap-potsdam", "stac_version": "1.0.0",
        "description": "Static catalog of the real EnMAP L2A Potsdam tiles",
        "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"},
                  {"rel": "child", "href": "./ENMAP_HSI_L2A/collection.json", "type": "application/json"}],
    }  # fmt: skip
    (folder / f"{SCENE_ID}.json").write_text(json.dumps(item, indent=1))
    (root / "ENMAP_HSI_L2A" / "collection.json").write_text(json.dumps(collection, indent=1))
    (root / "catalog.json").write_text(json.dumps(catalog, indent=1))
    return root / "catalog.json"


def region_arg(catalog: Path) -> str:
    """``--region minlon,minlat,maxlon,maxlat`` of the catalog's one item, shrunk by ~1 m so the
    cube grid stays inside the mosaic."""
    item = json.loads(next(catalog.parent.glob("ENMAP_HSI_L2A/*/*.json")).read_text())
    a, b, c, d = item["bbox"]
    eps = 1e-5
    return f"{a + eps},{b + eps},{c - eps},{d - eps}"


def potsdam_tiles(sample_data: Path, work: Path, *, tile: int = 32, patch: int = 8) -> str:
    """Catalog -> ``hyperkd ingest`` -> ``hyperkd tiles --labels landcover=...``; the tile store URL."""
    from hyperkd.cli import main

    catalog = write_catalog(sample_data, work / "stac")
    cube, tiles = work / "cube.zarr", work / "tiles.zarr"
    argv = ["ingest", "--source", str(catalog), "--region", region_arg(catalog), "--start", "2022-07-20",
            "--end", "2022-07-28", "--out", str(cube), "--tile-size", str(tile)]  # fmt: skip
    if main(argv) != 0:
        raise RuntimeError("hyperkd ingest failed on the Potsdam catalog")
    argv = ["tiles", "--cube", str(cube), "--out", str(tiles), "--tile-size", str(tile), "--patch-size", str(patch),
            "--split-block", str(3 * tile), "--labels", f"landcover={landcover_raster(sample_data)}",
            # 13 tiles: the val split comes out empty, and these tests score train and test only.
            "--allow-empty-splits"]  # fmt: skip
    if main(argv) != 0:
        raise RuntimeError("hyperkd tiles failed on the Potsdam cube")
    return str(tiles)
