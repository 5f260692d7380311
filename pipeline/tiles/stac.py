"""The tile store's STAC record: one Collection, ``<store>/collection.json``.

Written by :func:`publish_tiles` when a build is complete (root attributes written; a local
build publishes into its partial folder, so the rename commits data and record together).
Fields: docs/tiles.md "STAC record". The datacube extension describes every array (dims from
the arrays' ``dimension_names``, or the documented names for stores written without them);
``derived_from`` links point at the source cubes' collections; the ``zarr`` asset's
``xarray:open_kwargs`` open the store with ``xr.open_zarr``/``xr.open_dataset``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np
import pystac

from hyperkd.pipeline.redaction import clean_href
from hyperkd.pipeline.stac.publish import (
    COLLECTION_KEY,
    add_datacube,
    describe_arrays,
    lonlat_bbox,
    save,
    set_open_kwargs,
    zarr_asset,
)
from hyperkd.pipeline.store.location import CubeStore

# Names for arrays of stores written before the arrays carried ``dimension_names``.
_FALLBACK_DIMS = {
    "student": ("tile", "band", "y", "x"),
    "teacher": ("tile", "teacher_band", "y", "x"),
    "significance_gabor": ("tile", "py", "px"),
    "significance_wavelet": ("tile", "py", "px"),
    "valid": ("tile", "y", "x"),
}
_DIM_TEXT = {
    "y": "pixel row inside the tile",
    "x": "pixel column inside the tile",
    "py": "patch row inside the tile",
    "px": "patch column inside the tile",
}


def _array_docs(group: Any, prefix: str = "") -> dict[str, dict[str, Any]]:
    """name -> zarr v3 array document for the arrays of ``group`` (and its ``index/``)."""
    docs: dict[str, dict[str, Any]] = {}
    for name, arr in group.arrays():
        doc = arr.metadata.to_dict()
        if not doc.get("dimension_names"):
            fallback = _FALLBACK_DIMS.get(name) or (
                ("tile", "y", "x") if name.startswith("label_") else ("tile",)
            )
            doc["dimension_names"] = list(fallback[: len(doc["shape"])])
        docs[f"{prefix}{name}"] = doc
    for name, sub in group.groups():
        docs |= _array_docs(sub, f"{prefix}{name}/")
    return docs


def _time_extent(group: Any) -> list[dt.datetime | None]:
    try:
        times = np.asarray(group["index/time"][...]).astype("datetime64[us]")
    except KeyError:
        return [None, None]
    times = times[~np.isnat(times)]
    if times.size == 0:
        return [None, None]
    return [t.astype(dt.datetime).replace(tzinfo=dt.UTC) for t in (times.min(), times.max())]


def tiles_collection(root: Any, consolidated: bool) -> pystac.Collection:
    """The complete tile store opened as the zarr group ``root``, as a STAC Collection."""
    attrs = dict(root.attrs)
    docs = _array_docs(root)
    bbox = lonlat_bbox(attrs["crs"], attrs["transform"], attrs["grid_shape"])
    collection = pystac.Collection(
        id=f"hyperkd-tiles-{str(attrs.get('params_hash', ''))[:12] or 'store'}",
        title=(
            f"hyperkd tile store: {docs['student']['shape'][0]} tiles of "
            f"{attrs['tile_size']} px, {attrs['patch_size']} px patches"
        ),
        description=(
            "Training tiles cut from hyperkd cubes (Zarr v3, layout: hyperkd docs/tiles.md, "
            f"tiles version {attrs.get('hyperkd:tiles_version')})."
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([list(bbox)]), pystac.TemporalExtent([_time_extent(root)])
        ),
        license="various",
        providers=[pystac.Provider("hyperkd", roles=[pystac.ProviderRole.PROCESSOR])],
        extra_fields={
            "hyperkd:tile_size": int(attrs["tile_size"]),
            "hyperkd:patch_size": int(attrs["patch_size"]),
            "hyperkd:splits": dict(attrs.get("splits") or {}),
        },
    )
    for cube in attrs.get("source_cubes") or []:
        href = f"{clean_href(str(cube)).rstrip('/')}/{COLLECTION_KEY}"
        collection.add_link(pystac.Link("derived_from", href, pystac.MediaType.JSON, "source cube"))
    dims, variables = describe_arrays(
        docs,
        dim_values={
            "band": attrs.get("band_wavelength") or [],
            "teacher_band": attrs.get("teacher_bands") or [],
        },
        skip_dims=(),
    )
    if "band" in dims and "values" in dims["band"]:
        dims["band"]["unit"] = "nm"
        dims["band"]["description"] = "student band, by centre wavelength"
    for name, text in _DIM_TEXT.items():
        if name in dims:
            dims[name]["type"] = "pixel"
            dims[name]["description"] = text
    for name, var in variables.items():
        if name.startswith("index/"):
            var["type"] = "auxiliary"
    kwargs = {"engine": "zarr", "consolidated": consolidated}
    collection.add_asset("zarr", zarr_asset("./", "the tile store", kwargs))
    set_open_kwargs(collection, "zarr", kwargs)
    add_datacube(collection, dims, variables)
    return collection


def publish_tiles(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``<store>/collection.json`` for the complete tile store at ``url``."""
    import zarr

    store = CubeStore(url, storage_options)
    root_doc = store.read_json("zarr.json") or {}
    root = zarr.open_group(store.zarr_store(read_only=True), mode="r")
    collection = tiles_collection(root, "consolidated_metadata" in root_doc)
    save(store, collection, [])
