"""STAC out: the records hyperkd publishes for the stores it writes (a cube, a tile store).

Every store carries its own STAC *inside* the store folder, next to its root ``zarr.json``:

    <store>/collection.json          the store as a Collection (datacube + xarray-assets)
    <store>/items/<id>.json          one Item per scene (cubes only)

Links and asset hrefs are relative (a self-contained catalog), so a store that is copied,
moved or synced to an object store keeps a working catalog, and deleting the store deletes
its records. zarr ignores files that are not ``zarr.json`` or chunks, so readers are not
affected. This module holds the pieces both stores share: describing zarr arrays as datacube
dimensions and variables, the Zarr asset with its xarray open arguments, lon/lat extents, and
writing a collection with its items through :class:`~hyperkd.pipeline.store.location.CubeStore`
(atomic per document; items first, the collection last, so it never links to a missing item).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pystac
from pystac.extensions.datacube import DatacubeExtension
from pystac.extensions.xarray_assets import XarrayAssetsExtension

from hyperkd.pipeline.store.location import CubeStore

COLLECTION_KEY = "collection.json"
ITEMS_DIR = "items"
ZARR_MEDIA_TYPE = "application/vnd+zarr"
SOURCE_COLLECTION = "hyperkd:source_collection"
"""Item property: the id of the STAC collection a cube scene was ingested from (search uses it
to recognise a cube's scenes as EnMAP/HLS scenes)."""

_DIM_TYPES = {"band": "bands", "teacher_band": "bands"}


def lonlat_bbox(
    crs: str, transform: Sequence[float], shape: Sequence[int]
) -> tuple[float, float, float, float]:
    """``(west, south, east, north)`` in degrees of a north-up grid's pixel-edge bounds."""
    from pyproj import CRS, Transformer

    a, _, c, _, e, f = (float(v) for v in transform[:6])
    xmin, xmax = c, c + a * int(shape[1])
    ymin, ymax = f + e * int(shape[0]), f
    to_lonlat = Transformer.from_crs(CRS.from_user_input(crs), "EPSG:4326", always_xy=True)
    west, south, east, north = to_lonlat.transform_bounds(xmin, ymin, xmax, ymax, densify_pts=21)
    return (float(west), float(south), float(east), float(north))


def bbox_polygon(bbox: Sequence[float]) -> dict[str, Any]:
    """A GeoJSON Polygon of ``(west, south, east, north)``, counter-clockwise."""
    w, s, e, n = (float(v) for v in bbox)
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def epsg_or_wkt(crs: str) -> int | str:
    """A datacube ``reference_system``: the EPSG code when there is one, else WKT2."""
    from pyproj import CRS

    parsed = CRS.from_user_input(crs)
    epsg = parsed.to_epsg()
    return int(epsg) if epsg else parsed.to_wkt()


def spatial_dimensions(
    crs: str, transform: Sequence[float], shape: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """Datacube ``x``/``y`` dimensions of a grid: pixel-centre extents, step in CRS units."""
    a, _, c, _, e, f = (float(v) for v in transform[:6])
    ny, nx = int(shape[0]), int(shape[1])
    ref = epsg_or_wkt(crs)
    x0, y0 = c + a / 2, f + e / 2
    return {
        "x": {
            "type": "spatial",
            "axis": "x",
            "extent": [x0, x0 + a * (nx - 1)],
            "step": a,
            "reference_system": ref,
        },
        "y": {
            "type": "spatial",
            "axis": "y",
            "extent": [y0 + e * (ny - 1), y0],
            "step": e,
            "reference_system": ref,
        },
    }


def temporal_dimension(datetimes: Sequence[str], description: str = "") -> dict[str, Any]:
    """A datacube temporal dimension of ISO 8601 UTC ``datetimes`` (open extent when empty)."""
    values = sorted(datetimes)
    dim: dict[str, Any] = {"type": "temporal", "extent": [None, None]}
    if values:
        dim["extent"] = [values[0], values[-1]]
        dim["values"] = values
    if description:
        dim["description"] = description
    return dim


def array_nodes(
    nodes: Mapping[str, Mapping[str, Any]], group: str = ""
) -> dict[str, Mapping[str, Any]]:
    """The array documents directly in ``group`` of a consolidated metadata mapping, by name."""
    prefix = f"{group}/" if group else ""
    return {
        path[len(prefix) :]: doc
        for path, doc in nodes.items()
        if path.startswith(prefix)
        and "/" not in path[len(prefix) :]
        and doc.get("node_type") == "array"
    }


def describe_arrays(
    arrays: Mapping[str, Mapping[str, Any]],
    *,
    dim_values: Mapping[str, Sequence[Any]] | None = None,
    var_values: Mapping[str, Sequence[Any]] | None = None,
    skip: Sequence[str] = (),
    skip_dims: Sequence[str] = ("x", "y", "time"),
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Datacube dimensions (non-spatial, non-temporal) and variables of zarr array documents.

    ``arrays``: name -> zarr v3 array document (``dimension_names``, ``shape``,
    ``attributes``). An array named like its only dimension is that dimension's coordinate;
    arrays named in another array's CF ``coordinates`` attribute are ``auxiliary``, the rest
    ``data``. ``dim_values``/``var_values`` attach values (band numbers, wavelengths in nm).
    Dimensions in ``skip_dims`` (default ``x``, ``y``, ``time``) are left to the caller
    (:func:`spatial_dimensions`, :func:`temporal_dimension`); arrays in ``skip`` are left out.
    """
    dim_values, var_values = dict(dim_values or {}), dict(var_values or {})
    coords = {
        name
        for doc in arrays.values()
        for name in str((doc.get("attributes") or {}).get("coordinates", "")).split()
    } | {"spatial_ref"}
    sizes: dict[str, int] = {}
    for doc in arrays.values():
        for dim, size in zip(
            doc.get("dimension_names") or (), doc.get("shape") or (), strict=False
        ):
            if dim:
                sizes.setdefault(str(dim), int(size))
    dims: dict[str, dict[str, Any]] = {}
    for dim, size in sizes.items():
        if dim in skip_dims:
            continue
        entry: dict[str, Any] = {"type": _DIM_TYPES.get(dim, "index")}
        values = dim_values.get(dim)
        if values is not None and len(values) > 0:
            entry["values"] = [_json_scalar(v) for v in values]
        else:
            entry["extent"] = [0, max(size - 1, 0)]
            entry["step"] = 1
        dims[dim] = entry
    variables: dict[str, dict[str, Any]] = {}
    for name, doc in sorted(arrays.items()):
        dim_names = [str(d) for d in (doc.get("dimension_names") or ())]
        if name in skip or dim_names == [name] or not dim_names:
            continue
        attrs = doc.get("attributes") or {}
        var: dict[str, Any] = {
            "dimensions": dim_names,
            "type": "auxiliary" if name in coords else "data",
        }
        description = attrs.get("long_name") or attrs.get("description")
        if description:
            var["description"] = str(description)
        if attrs.get("units") not in (None, ""):
            var["unit"] = str(attrs["units"])
        if name in var_values:
            var["values"] = [_json_scalar(v) for v in var_values[name]]
        variables[name] = var
    return dims, variables


def _json_scalar(value: Any) -> Any:
    """A numpy scalar or string as a plain JSON value."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def add_datacube(
    target: pystac.Collection | pystac.Item | pystac.Asset,
    dims: Mapping[str, Mapping[str, Any]],
    variables: Mapping[str, Mapping[str, Any]],
) -> None:
    """Attach ``cube:dimensions``/``cube:variables`` through pystac's DatacubeExtension."""
    from pystac.extensions.datacube import Dimension, Variable

    cube = DatacubeExtension.ext(target, add_if_missing=True)  # an asset: added to its owner
    cube.apply(
        dimensions={k: Dimension.from_dict(dict(v)) for k, v in dims.items()},
        variables={k: Variable.from_dict(dict(v)) for k, v in variables.items()},
    )


def zarr_asset(
    href: str,
    title: str,
    open_kwargs: Mapping[str, Any],
    *,
    description: str = "",
) -> pystac.Asset:
    """A Zarr v3 store asset whose ``xarray:open_kwargs`` open it directly:
    ``xr.open_datatree(asset.get_absolute_href(), **open_kwargs)`` (or ``open_dataset``
    when the arguments name a ``group``)."""
    asset = pystac.Asset(
        href=href,
        title=title,
        description=description or None,
        media_type=ZARR_MEDIA_TYPE,
        roles=["data"],
    )
    return asset


def set_open_kwargs(
    owner: pystac.Collection | pystac.Item, key: str, open_kwargs: Mapping[str, Any]
) -> None:
    """Record the asset's xarray open arguments (the xarray-assets extension)."""
    XarrayAssetsExtension.ensure_has_extension(owner, add_if_missing=True)
    XarrayAssetsExtension.ext(owner.assets[key]).open_kwargs = dict(open_kwargs)


def save(store: CubeStore, collection: pystac.Collection, items: Sequence[pystac.Item]) -> None:
    """Write ``collection`` and ``items`` into ``store`` with relative links.

    Documents already there unchanged are not rewritten (a cube's scene items never change
    after their commit); the collection goes last, so it never links to a missing item.
    """
    root = store.url.rstrip("/")
    collection.set_self_href(f"{root}/{COLLECTION_KEY}")
    collection.catalog_type = pystac.CatalogType.SELF_CONTAINED
    for item in items:
        collection.add_item(item)
        item.set_self_href(f"{root}/{ITEMS_DIR}/{item.id}.json")
    existing = set(store.listdir(ITEMS_DIR))
    for item in items:
        key = f"{ITEMS_DIR}/{item.id}.json"
        _write_changed(
            store,
            key,
            item.to_dict(include_self_link=False, transform_hrefs=True),
            f"{item.id}.json" in existing,
        )
    doc = collection.to_dict(include_self_link=False, transform_hrefs=True)
    _write_changed(store, COLLECTION_KEY, doc, True)


def _write_changed(store: CubeStore, key: str, doc: Mapping[str, Any], exists: bool) -> None:
    """Write ``doc`` at ``key`` unless an identical document is already there (re-runs and
    reconciles rewrite nothing)."""
    if exists and store.read_json(key) == json.loads(json.dumps(doc)):
        return
    store.write_json(key, doc)
