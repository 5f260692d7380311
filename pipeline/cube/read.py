"""Open a hyperkd cube for reading (docs/cube.md): lazily, committed scenes only, never writing.

The root ``zarr.json`` is the commit point (:mod:`hyperkd.pipeline.cube.io`); everything here
reads through it, so a reader never sees a scene that is still being written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from hyperkd.pipeline.store.location import CubeStore

ROOT_DOC = "zarr.json"


def committed_scenes(
    url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """Ids of the committed scenes, in commit order; ``()`` when there is no cube yet."""
    doc = CubeStore(url, storage_options).read_json(ROOT_DOC)
    if doc is None:
        return ()
    return tuple(s["id"] for s in doc.get("attributes", {}).get("hyperkd:scenes", []))


def open_cube(url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> Any:
    """Open a cube lazily as an ``xarray.DataTree`` (groups ``enmap`` and ``hls``).

    Only committed scenes are visible (consolidated metadata); CRS decoded
    (``decode_coords="all"``); int16 reflectance and teacher bands decode to float32
    reflectance (NaN nodata), not float64.
    """
    import xarray as xr

    store = CubeStore(url, storage_options)
    doc = store.read_json(ROOT_DOC)
    if doc is None or "hyperkd:cube_version" not in doc.get("attributes", {}):
        raise FileNotFoundError(f"no hyperkd cube at {store.url}")
    tree = xr.open_datatree(
        store.zarr_store(read_only=True), engine="zarr", consolidated=True, decode_cf=False
    )
    return tree.map_over_datasets(_decode_float32)


def _decode_float32(ds: Any) -> Any:
    """CF-decode ``ds`` with small scaled integers going to float32.

    xarray picks the decoded dtype from the type of ``scale_factor``, and JSON attributes
    come back as Python floats (float64); as float32 they decode to float32, lazily.
    """
    import xarray as xr

    ds = ds.copy()
    for var in ds.variables.values():
        if "scale_factor" in var.attrs and var.dtype.kind in "iu" and var.dtype.itemsize <= 2:
            var.attrs["scale_factor"] = np.float32(var.attrs["scale_factor"])
            var.attrs["add_offset"] = np.float32(var.attrs.get("add_offset", 0.0))
    return xr.decode_cf(ds, decode_coords="all")
