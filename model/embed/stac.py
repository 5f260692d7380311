"""The STAC Collection of an embeddings store (``collection.json`` at its root).

Core STAC 1.1 plus the datacube extension: dimensions ``time``, ``feature``, ``y``, ``x`` with
their extents and steps, variables ``embedding`` and ``valid_fraction``, and one asset, the
store itself (``href: "./"``, Zarr). Validated offline against the schemas in
``tests/fixtures/stac-schemas``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from hyperkd.model.embed.store import EmbeddingGrid

DATACUBE = "https://stac-extensions.github.io/datacube/v2.2.0/schema.json"
ZARR_MEDIA_TYPE = "application/vnd.zarr; version=3"


def _utc(t: np.datetime64) -> datetime:
    seconds = t.astype("datetime64[us]").astype(np.int64) / 1e6
    return datetime.fromtimestamp(seconds, tz=UTC)


def _bbox_lonlat(grid: EmbeddingGrid) -> list[float]:
    from pyproj import Transformer

    a, _, c, _, e, f = grid.transform
    xs = (c, c + a * len(grid.x))
    ys = (f, f + e * len(grid.y))
    to_lonlat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    west, south, east, north = to_lonlat.transform_bounds(min(xs), min(ys), max(xs), max(ys))
    return [float(west), float(south), float(east), float(north)]


def _cube_dimensions(
    grid: EmbeddingGrid, start: datetime | None, end: datetime | None, dim: int, epsg: int | None
) -> dict[str, Any]:
    """``cube:dimensions``: time (ISO, UTC), feature (0 .. dim-1), y and x (units of the CRS
    ``epsg``: extents are the patch grid's outer edges, ``y`` ascending; steps are one patch)."""
    a, _, c, _, e, f = grid.transform
    x_extent = [float(c), float(c + a * len(grid.x))]
    y_extent = sorted([float(f), float(f + e * len(grid.y))])
    return {
        "time": {"type": "temporal", "extent": [_iso(start), _iso(end)]},
        "feature": {"type": "other", "extent": [0, dim - 1], "step": 1},
        "y": {
            "type": "spatial",
            "axis": "y",
            "extent": y_extent,
            "step": float(e),
            "reference_system": epsg,
        },
        "x": {
            "type": "spatial",
            "axis": "x",
            "extent": x_extent,
            "step": float(a),
            "reference_system": epsg,
        },
    }


def _cube_variables() -> dict[str, Any]:
    """``cube:variables``: the embeddings and the share of valid pixels behind each."""
    return {
        "embedding": {
            "type": "data",
            "dimensions": ["time", "feature", "y", "x"],
            "description": "student encoder patch token after the final LayerNorm",
        },
        "valid_fraction": {
            "type": "auxiliary",
            "dimensions": ["time", "y", "x"],
            "unit": "1",
            "description": "share of the patch's pixels that were valid",
        },
    }


def _description(dim: int, attrs: Mapping[str, Any]) -> str:
    model = attrs.get("hyperkd:model", {})
    return (
        f"Per-patch embeddings ({dim} features) of the hyperkd student "
        f"({model.get('preset', '?')}) over the EnMAP scenes of a hyperkd cube, on its "
        f"{attrs.get('hyperkd:patch_size')}-px patch grid."
    )


def collection(
    grid: EmbeddingGrid,
    times: np.ndarray,
    dim: int,
    attrs: Mapping[str, Any],
    *,
    collection_id: str = "hyperkd-embeddings",
) -> dict[str, Any]:
    """The store's STAC Collection as a JSON-able dict."""
    import pystac
    from pyproj import CRS

    epsg = CRS.from_user_input(grid.crs).to_epsg()
    start, end = (_utc(np.min(times)), _utc(np.max(times))) if len(times) else (None, None)
    dimensions = _cube_dimensions(grid, start, end, dim, epsg)
    coll = pystac.Collection(
        id=collection_id,
        description=_description(dim, attrs),
        extent=pystac.Extent(
            pystac.SpatialExtent([_bbox_lonlat(grid)]),
            pystac.TemporalExtent([[start, end]]),
        ),
        license="other",
        title="hyperkd student embeddings",
        keywords=["EnMAP", "hyperspectral", "embeddings", "foundation model"],
        extra_fields={
            "cube:dimensions": dimensions,
            "cube:variables": _cube_variables(),
        },
    )
    coll.stac_extensions = [DATACUBE]
    coll.add_asset(
        "zarr",
        pystac.Asset(
            href="./",
            media_type=ZARR_MEDIA_TYPE,
            roles=["data"],
            title="the embeddings store (Zarr v3, consolidated metadata)",
        ),
    )
    doc = coll.to_dict(include_self_link=False, transform_hrefs=False)
    doc["links"] = [link for link in doc.get("links", []) if link.get("rel") != "root"]
    return doc


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")
