"""``verify_cube``: every way a cube can break docs/cube.md, reported together.

Checks run on the committed view (the root document's consolidated metadata, which is what
readers see) plus the decoded values of the small coordinate arrays.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from hyperkd.pipeline.cube.layout import Grid
from hyperkd.pipeline.cube.schema import (
    GROUPS,
    READABLE_VERSIONS,
    band_group,
    group_arrays,
    time_chunks,
)
from hyperkd.pipeline.sensors import hls_sensor
from hyperkd.pipeline.store.integrity import deep_check
from hyperkd.pipeline.store.location import CubeStore

SCENE_FIELDS = (
    "id",
    "group",
    "collection",
    "datetime",
    "hrefs",
    "processing_version",
    "cloud_cover",
    "ingested_at",
    "code_version",
    "parameters",
)


def verify_cube(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    deep: bool = False,
) -> list[str]:
    """All problems found in the cube at ``url`` (``[]`` when it is sound).

    ``deep``: also read every chunk of every array and report, by key, the absent ones and
    those that do not decode (:func:`hyperkd.pipeline.store.integrity.deep_check`).
    """
    store = CubeStore(url, storage_options)
    doc = store.read_json("zarr.json")
    if doc is None:
        return [f"no readable root zarr.json at {store.url}"]
    problems: list[str] = []
    attrs = doc.get("attributes", {})
    nodes = (doc.get("consolidated_metadata") or {}).get("metadata")
    if doc.get("zarr_format") != 3:
        problems.append(f"zarr_format is {doc.get('zarr_format')}, expected 3")
    if nodes is None:
        return [*problems, "root has no consolidated metadata"]
    if attrs.get("hyperkd:cube_version") not in READABLE_VERSIONS:
        problems.append(f"hyperkd:cube_version is {attrs.get('hyperkd:cube_version')!r}")
    tile = attrs.get("hyperkd:tile_size")
    if not isinstance(tile, int) or tile <= 0:
        problems.append(f"hyperkd:tile_size is {tile!r}, expected a positive integer")
        tile = None
    scenes = attrs.get("hyperkd:scenes")
    if not isinstance(scenes, list):
        problems.append("hyperkd:scenes is missing or not a list")
        scenes = []
    grids: dict[str, Grid] = {}
    for group in GROUPS:
        if group not in nodes:
            problems.append(f"group {group!r} is missing")
            continue
        grid = _check_georef(problems, store, group, nodes)
        if grid is not None:
            grids[group] = grid
        _check_arrays(problems, group, nodes, tile)
        _check_values(problems, store, group, nodes, scenes, grid)
    if len(grids) == 2 and grids["enmap"] != grids["hls"]:
        problems.append("enmap and hls groups are on different grids")
    problems += _check_pairs(store, nodes, attrs.get("hyperkd:pending"))
    for i, rec in enumerate(scenes):
        missing = [k for k in SCENE_FIELDS if k not in rec]
        if missing:
            problems.append(f"scene record {i} ({rec.get('id')}) lacks {missing}")
    problems += _check_xarray(store)
    if deep:
        arrays = {p: d for p, d in nodes.items() if d.get("node_type") == "array"}
        problems += deep_check(store, arrays)
    return problems


def _check_pairs(
    store: CubeStore, nodes: Mapping[str, Any], pending: Mapping[str, Any] | None = None
) -> list[str]:
    """Every HLS scene's ``paired_enmap`` names an EnMAP scene of the cube, or one that an
    unfinished time-axis edit (``hyperkd:pending``, docs/cube.md) hides or replaces."""
    try:
        enmap = {str(v) for v in _read(store, "enmap/scene_id", nodes["enmap/scene_id"])}
        if pending and pending.get("group") == "enmap":
            enmap |= {str(r["id"]) for r in pending.get("scenes", [])}
            enmap |= set((pending.get("relabel") or {}).keys())
        pairs = [str(v) for v in _read(store, "hls/paired_enmap", nodes["hls/paired_enmap"])]
        hls = [str(v) for v in _read(store, "hls/scene_id", nodes["hls/scene_id"])]
    except (KeyError, OSError, ValueError):
        return []  # missing or unreadable arrays are reported by the checks above
    return [
        f"hls scene {h} is paired with EnMAP scene {p!r}, which is not in the cube"
        for h, p in zip(hls, pairs, strict=False)
        if p not in enmap
    ]


def _check_arrays(
    problems: list[str], group: str, nodes: Mapping[str, Any], tile: int | None
) -> None:
    expected = {a.name: (a.dims, a.dtype) for a in group_arrays(group)}
    for name, (dims, dtype) in expected.items():
        d = nodes.get(f"{group}/{name}")
        if d is None:
            problems.append(f"{group}/{name} is missing")
            continue
        if tuple(d.get("dimension_names") or ()) != dims:
            problems.append(f"{group}/{name} has dims {d.get('dimension_names')}, expected {dims}")
        if d.get("data_type") != dtype:
            problems.append(f"{group}/{name} has dtype {d.get('data_type')}, expected {dtype}")
    sizes: dict[str, int] = {}
    for path, d in nodes.items():
        if not path.startswith(f"{group}/") or d.get("node_type") != "array":
            continue
        dims = d.get("dimension_names") or ()
        if len(dims) != len(d["shape"]):
            problems.append(f"{path} has no dimension name for every axis")
            continue
        for dim, size in zip(dims, d["shape"], strict=True):
            if sizes.setdefault(dim, size) != size:
                problems.append(f"{path}: {dim}={size} but other arrays have {dim}={sizes[dim]}")
        if (
            "y" in dims
            and "x" in dims
            and d.get("attributes", {}).get("grid_mapping") != ("spatial_ref")
        ):
            problems.append(f"{path} lacks grid_mapping='spatial_ref'")
        chunks = tuple(d["chunk_grid"]["configuration"]["chunk_shape"])
        for dim, size, chunk in zip(dims, d["shape"], chunks, strict=True):
            if dim == "time" and chunk not in time_chunks(len(dims)):
                want = " or ".join(map(str, time_chunks(len(dims))))
                problems.append(f"{path}: time chunk is {chunk}, expected {want}")
            if dim in ("y", "x") and tile and chunk != min(tile, size) and path[-2:] != f"/{dim}":
                problems.append(f"{path}: {dim} chunk is {chunk}, expected tile size {tile}")
        if "band" in dims and not path.endswith(("/band", "/wavelength", "/fwhm", "/valid_band")):
            i = dims.index("band")
            if chunks[i] < d["shape"][i]:  # a chunk, or a shard of band groups (layout 2)
                problems.append(f"{path}: band chunk {chunks[i]} does not hold all bands")
            inner = _inner_chunks(d)
            if inner is not None and inner[i] != band_group(d["shape"][i]):
                problems.append(
                    f"{path}: band group {inner[i]}, expected {band_group(d['shape'][i])} bands"
                )


def _inner_chunks(doc: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The chunk shape inside the shards of a sharded array, else None."""
    for codec in doc.get("codecs", ()):
        if codec.get("name") == "sharding_indexed":
            return tuple(codec["configuration"]["chunk_shape"])
    return None


def _check_georef(
    problems: list[str], store: CubeStore, group: str, nodes: Mapping[str, Any]
) -> Grid | None:
    import pyproj

    gattrs = nodes[group].get("attributes", {})
    sref = nodes.get(f"{group}/spatial_ref", {}).get("attributes", {})
    try:
        grid = Grid.from_geozarr(gattrs)
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"{group}: GeoZarr proj:/spatial: attributes missing or invalid ({exc})")
        grid = None
    if "crs_wkt" not in sref or "GeoTransform" not in sref:
        problems.append(f"{group}/spatial_ref lacks crs_wkt or GeoTransform")
        return grid
    if grid is None:
        return None
    try:
        same_crs = pyproj.CRS.from_wkt(sref["crs_wkt"]) == pyproj.CRS.from_user_input(grid.crs)
        if "proj:wkt2" in gattrs:
            same_crs &= pyproj.CRS.from_wkt(gattrs["proj:wkt2"]) == pyproj.CRS.from_wkt(
                sref["crs_wkt"]
            )
    except pyproj.exceptions.CRSError as exc:
        problems.append(f"{group}: CRS does not parse ({exc})")
        return grid
    if not same_crs:
        problems.append(f"{group}: CF spatial_ref CRS differs from GeoZarr proj: CRS")
    gt = [float(v) for v in str(sref["GeoTransform"]).split()]
    if not np.allclose(gt, [float(v) for v in grid.geotransform().split()]):
        problems.append(f"{group}: CF GeoTransform {gt} differs from spatial:transform")
    return grid


def _read(store: CubeStore, path: str, doc: Mapping[str, Any]) -> np.ndarray:
    from zarr.core.array import Array, AsyncArray
    from zarr.core.metadata.v3 import ArrayV3Metadata
    from zarr.storage import StorePath

    meta = ArrayV3Metadata.from_dict(dict(doc))
    return np.asarray(Array(AsyncArray(meta, StorePath(store.zarr_store(True), path)))[...])


def _check_values(
    problems: list[str],
    store: CubeStore,
    group: str,
    nodes: Mapping[str, Any],
    scenes: list[dict[str, Any]],
    grid: Grid | None,
) -> None:
    try:
        time = _read(store, f"{group}/time", nodes[f"{group}/time"])
        ids = [str(v) for v in _read(store, f"{group}/scene_id", nodes[f"{group}/scene_id"])]
        y = _read(store, f"{group}/y", nodes[f"{group}/y"])
        x = _read(store, f"{group}/x", nodes[f"{group}/x"])
        band = _read(store, f"{group}/band", nodes[f"{group}/band"])
    except (KeyError, OSError, ValueError) as exc:
        problems.append(f"{group}: coordinate arrays unreadable ({exc})")
        return
    if time.size and not np.all(np.diff(time) > 0):
        problems.append(f"{group}/time is not sorted ascending and unique")
    recorded = [s.get("id") for s in scenes if s.get("group") == group]
    if recorded != ids:
        problems.append(f"{group}: scene records {recorded} do not match the scene_id axis {ids}")
    if "" in ids:
        problems.append(f"{group}/scene_id has an empty entry (a scene without its id)")
    if grid is not None and (
        not np.allclose(y, grid.y) or not np.allclose(x, grid.x) or (y.size, x.size) != grid.shape
    ):
        problems.append(f"{group}: x/y coordinates do not match the grid's pixel centres")
    if group == "enmap":
        wl = _read(store, "enmap/wavelength", nodes["enmap/wavelength"])
        if not np.all(np.diff(wl) > 0):
            problems.append("enmap/wavelength is not sorted ascending")
    else:
        if [str(b) for b in band] != list(hls_sensor().band_names):
            problems.append(f"hls/band is {list(band)}, expected {hls_sensor().band_names}")
        sensors = {str(s) for s in _read(store, "hls/sensor", nodes["hls/sensor"])}
        if sensors - {"L30", "S30"}:
            problems.append(f"hls/sensor holds {sorted(sensors - {'L30', 'S30'})}")


def _check_xarray(store: CubeStore) -> list[str]:
    import xarray as xr

    try:
        tree = xr.open_datatree(
            store.zarr_store(read_only=True), engine="zarr", consolidated=True, decode_coords="all"
        )
    except Exception as exc:  # any failure to open is a problem to report, not to raise
        return [f"xarray.open_datatree fails: {type(exc).__name__}: {exc}"]
    problems = []
    for group in GROUPS:
        if group not in tree.children:
            continue
        ds = tree[group].to_dataset()
        if "spatial_ref" not in ds.coords:
            problems.append(f"{group}: spatial_ref is not decoded as the grid mapping")
        if "time" in ds.coords and ds.sizes.get("time", 0) and ds.time.dtype.kind != "M":
            problems.append(f"{group}: time does not decode to datetime64")
    return problems
