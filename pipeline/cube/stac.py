"""The cube's STAC records: a Collection for the cube and an Item per committed scene.

Written by :func:`publish_cube` after every commit of the cube writer (and when a writer
reconciles a cube whose records lag), from the committed root document alone plus the static
band coordinates, so the records describe exactly the committed view. Layout and fields:
docs/cube.md "STAC records".

- Collection ``hyperkd-cube-<region>``: lon/lat and time extent; the datacube extension
  (``cube:dimensions``/``cube:variables``) of the ``enmap`` group at the top level, including
  the band numbers and the wavelengths/FWHM in nm; assets ``zarr`` (the whole tree),
  ``enmap`` and ``hls`` (one group each, with their own datacube fields), whose
  ``xarray:open_kwargs`` open them with ``xr.open_datatree``/``xr.open_dataset``.
- Item per scene (id = the source item id): footprint (the source footprint clipped to the
  cube's bounds), datetime, ``eo:cloud_cover``, the cube grid (projection extension),
  provenance (processing extension: source processor version, hyperkd version, ingest time,
  lineage) and ``hyperkd:source_collection``/``hyperkd:source_hrefs``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pystac
from pystac.extensions.eo import EOExtension
from pystac.extensions.processing import ProcessingExtension
from pystac.extensions.projection import ProjectionExtension

from hyperkd.pipeline.stac.publish import (
    SOURCE_COLLECTION,
    add_datacube,
    array_nodes,
    describe_arrays,
    lonlat_bbox,
    save,
    set_open_kwargs,
    spatial_dimensions,
    temporal_dimension,
    zarr_asset,
)
from hyperkd.pipeline.store.location import CubeStore

GROUP_OPEN_KWARGS = {"engine": "zarr", "consolidated": True, "decode_coords": "all"}
"""What ``open_cube`` passes to xarray; an asset adds ``group`` for one group."""
_LEVEL = {"enmap": "L2A", "hls": "L2"}


def _grid(nodes: Mapping[str, Mapping[str, Any]]) -> tuple[str, list[float], list[int]]:
    """``(crs, transform, shape)`` of the cube grid from the enmap group's GeoZarr attributes."""
    attrs = nodes["enmap"]["attributes"]
    crs = str(attrs.get("proj:code") or attrs["proj:wkt2"])
    return crs, [float(v) for v in attrs["spatial:transform"]], list(attrs["spatial:shape"])


def _read_static(store: CubeStore, nodes: Mapping[str, Any], path: str) -> list[Any]:
    """The values of a small static coordinate array (band numbers, wavelengths)."""
    import zarr

    if path not in nodes:
        return []
    arr = zarr.open_array(store.zarr_store(read_only=True), path=path, mode="r")
    return list(arr[...].tolist())


def _group_cube(
    store: CubeStore, nodes: Mapping[str, Any], group: str, datetimes: Sequence[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Datacube dimensions and variables of one cube group."""
    crs, transform, shape = _grid(nodes)
    band = _read_static(store, nodes, f"{group}/band")
    var_values = {
        name: _read_static(store, nodes, f"{group}/{name}") for name in ("wavelength", "fwhm")
    }
    dims, variables = describe_arrays(
        array_nodes(nodes, group),
        dim_values={"band": band},
        var_values={k: v for k, v in var_values.items() if v},
    )
    spatial = spatial_dimensions(crs, transform, shape)
    when = temporal_dimension(datetimes, f"{group} acquisition start (UTC)")
    return {**spatial, "time": when, **dims}, variables


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "region"


def cube_collection(
    store: CubeStore, attrs: Mapping[str, Any], nodes: Mapping[str, Any]
) -> pystac.Collection:
    """The cube as a STAC Collection (no items attached)."""
    crs, transform, shape = _grid(nodes)
    bbox = lonlat_bbox(crs, transform, shape)
    scenes = list(attrs.get("hyperkd:scenes", []))
    times = sorted(_parse(s["datetime"]) for s in scenes)
    region = str(attrs.get("hyperkd:region") or "")
    collection = pystac.Collection(
        id=f"hyperkd-cube-{_slug(region)}",
        title=f"hyperkd cube {region}".strip(),
        description=(
            "EnMAP L2A and HLS surface reflectance co-registered on one 30 m grid "
            "(Zarr v3, layout: hyperkd docs/cube.md, cube version "
            f"{attrs.get('hyperkd:cube_version')})."
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([list(bbox)]),
            pystac.TemporalExtent([[times[0], times[-1]] if times else [None, None]]),
        ),
        license="various",
        providers=[pystac.Provider("hyperkd", roles=[pystac.ProviderRole.PROCESSOR])],
    )
    by_group = {g: [s["datetime"] for s in scenes if s.get("group") == g] for g in ("enmap", "hls")}
    collection.add_asset("zarr", zarr_asset("./", "the cube (both groups)", GROUP_OPEN_KWARGS))
    set_open_kwargs(collection, "zarr", GROUP_OPEN_KWARGS)
    for group, datetimes in by_group.items():
        if group not in nodes:
            continue
        kwargs = GROUP_OPEN_KWARGS | {"group": group}
        collection.add_asset(group, zarr_asset("./", f"the {group} group", kwargs))
        set_open_kwargs(collection, group, kwargs)
        dims, variables = _group_cube(store, nodes, group, datetimes)
        add_datacube(collection.assets[group], dims, variables)
        if group == "enmap":
            add_datacube(collection, dims, variables)
    return collection


def scene_item(
    record: Mapping[str, Any],
    time_index: int,
    nodes: Mapping[str, Any],
) -> pystac.Item:
    """One committed scene as a STAC Item (provenance from its scene record)."""
    from shapely.geometry import box, mapping, shape

    crs, transform, grid_shape = _grid(nodes)
    cube_box = box(*lonlat_bbox(crs, transform, grid_shape))
    footprint = cube_box
    if record.get("footprint"):
        clipped = shape(record["footprint"]).intersection(cube_box)
        footprint = clipped if not clipped.is_empty else cube_box
    group = str(record["group"])
    item = pystac.Item(
        id=str(record["id"]),
        geometry=mapping(footprint),
        bbox=[float(v) for v in footprint.bounds],
        datetime=_parse(record["datetime"]),
        properties={
            "hyperkd:group": group,
            "hyperkd:time_index": int(time_index),
            SOURCE_COLLECTION: record.get("collection"),
            "hyperkd:source_hrefs": dict(record.get("hrefs") or {}),
        },
    )
    for key in ("sensor", "paired_enmap"):
        if record.get(key):
            item.properties[f"hyperkd:{key}"] = record[key]
    if record.get("cloud_cover") is not None:
        EOExtension.ext(item, add_if_missing=True).cloud_cover = float(record["cloud_cover"])
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.code = crs if ":" in crs else None
    if proj.code is None:
        proj.wkt2 = crs
    proj.shape, proj.transform = [int(v) for v in grid_shape], [float(v) for v in transform]
    _processing(item, record, group)
    kwargs = GROUP_OPEN_KWARGS | {"group": group}
    item.add_asset(
        "zarr",
        zarr_asset(
            "../",
            f"the cube's {group} group",
            kwargs,
            description=f"this scene is time index {time_index} of the {group} group",
        ),
    )
    set_open_kwargs(item, "zarr", kwargs)
    return item


def _processing(item: pystac.Item, record: Mapping[str, Any], group: str) -> None:
    ext = ProcessingExtension.ext(item, add_if_missing=True)
    ingested = record.get("ingested_at")
    ext.apply(
        lineage=(
            f"STAC item {record['id']} of collection {record.get('collection')} "
            f"(processor version {record.get('processing_version') or 'unknown'}) read by "
            "hyperkd ingest onto the cube grid and band axis (docs/cube.md)"
        ),
        level=_LEVEL.get(group),
        software={"hyperkd": str(record.get("code_version") or "unknown")},
        version=str(record["processing_version"]) if record.get("processing_version") else None,
        processing_datetime=_parse(ingested) if ingested else None,
    )


def _parse(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def publish_cube(
    store: CubeStore, attrs: Mapping[str, Any], nodes: Mapping[str, Mapping[str, Any]]
) -> None:
    """Write (or update) ``<cube>/collection.json`` and ``<cube>/items/<scene>.json``.

    ``attrs``/``nodes``: the committed root attributes and consolidated metadata.
    """
    collection = cube_collection(store, attrs, nodes)
    counts: dict[str, int] = {}
    items = []
    for record in attrs.get("hyperkd:scenes", []):
        group = str(record["group"])
        items.append(scene_item(record, counts.get(group, 0), nodes))
        counts[group] = counts.get(group, 0) + 1
    save(store, collection, items)
