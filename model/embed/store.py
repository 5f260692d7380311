"""The embeddings store (Zarr v3): per-patch student embeddings of a cube, on the patch grid.

Layout (``docs/embeddings.md`` is the contract)::

    embeddings.zarr/
      zarr.json          root attrs (hyperkd:embeddings_version, ...), consolidated metadata
      embedding          (time, feature, y, x) float32, NaN until the scene is embedded
      valid_fraction     (time, y, x) float32: share of the patch's pixels that were valid
      time, feature, y, x, scene_id(time), spatial_ref (CF grid mapping: CRS + GeoTransform)
      collection.json    STAC Collection (datacube extension) describing the store

A scene is committed when its id is appended to the root attribute
``hyperkd:embedded_scenes`` (the root ``zarr.json`` is replaced in one write), after all its
chunks are written. Chunks are written whole (zarr's local store writes a temp file and renames
it; S3 applies a PUT at once), so a killed run leaves a readable store in which unfinished
scenes hold NaN or complete chunks; the next run recomputes every scene not committed.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hyperkd.pipeline.store.location import CubeStore

EMBEDDINGS_VERSION = 1
VERSION_ATTR = "hyperkd:embeddings_version"
DONE_ATTR = "hyperkd:embedded_scenes"
READY_ATTR = "hyperkd:layout_complete"
"""False while the store is being created: a killed creation is removed and started over."""
TIME_UNITS = "microseconds since 1970-01-01T00:00:00"
ROOT_DOC = "zarr.json"


@dataclass(frozen=True)
class EmbeddingGrid:
    """The patch grid of a cube: ``(y, x)`` patch centres in metres of ``crs``.

    ``transform`` is the affine (a, b, c, d, e, f) of the patch grid (pixel size x patch size).
    """

    crs: str
    transform: tuple[float, float, float, float, float, float]
    y: np.ndarray
    x: np.ndarray

    @classmethod
    def from_pixels(
        cls, crs: str, pixel_transform: Sequence[float], height: int, width: int, patch: int
    ) -> EmbeddingGrid:
        """Whole patches of a ``height`` x ``width`` pixel grid (edge strips < patch dropped)."""
        a, b, c, d, e, f = (float(v) for v in tuple(pixel_transform)[:6])
        if b or d:
            raise ValueError("rotated cube grids are not supported")
        ny, nx = height // patch, width // patch
        y = f + e * patch * (np.arange(ny) + 0.5)  # patch centres
        x = c + a * patch * (np.arange(nx) + 0.5)
        return cls(crs, (a * patch, 0.0, c, 0.0, e * patch, f), y, x)


def _template(
    grid: EmbeddingGrid,
    times: np.ndarray,
    scene_ids: Sequence[str],
    dim: int,
    chunk: int,
    attrs: Mapping[str, Any],
) -> Any:
    """The store as a lazy ``xarray.Dataset`` (dask NaN arrays: only metadata is written)."""
    import dask.array as da
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr
    from affine import Affine

    nt, ny, nx = len(times), len(grid.y), len(grid.x)
    emb = da.full((nt, dim, ny, nx), np.nan, dtype=np.float32, chunks=(1, dim, chunk, chunk))
    frac = da.full((nt, ny, nx), np.nan, dtype=np.float32, chunks=(1, chunk, chunk))
    ds = xr.Dataset(
        {
            "embedding": (
                ("time", "feature", "y", "x"),
                emb,
                {
                    "long_name": "student encoder patch token (final LayerNorm)",
                    "units": "1",
                },
            ),
            "valid_fraction": (
                ("time", "y", "x"),
                frac,
                {
                    "long_name": "share of the patch's pixels that were valid",
                    "units": "1",
                },
            ),
        },
        coords={
            "time": ("time", np.asarray(times, dtype="datetime64[ns]")),
            "feature": ("feature", np.arange(dim, dtype=np.int32)),
            "y": ("y", grid.y, {"units": "m", "standard_name": "projection_y_coordinate"}),
            "x": ("x", grid.x, {"units": "m", "standard_name": "projection_x_coordinate"}),
            "scene_id": ("time", np.asarray(list(scene_ids), dtype=object)),
        },
        attrs=dict(attrs),
    )
    ds = ds.rio.write_crs(grid.crs).rio.write_transform(Affine(*grid.transform))
    ds = ds.rio.write_coordinate_system()
    for name in ("embedding", "valid_fraction"):
        # CF ``coordinates`` names spatial_ref too, so a plain ``xr.open_zarr`` makes it a
        # coordinate and rioxarray finds the CRS without ``decode_coords="all"``.
        ds[name].attrs["coordinates"] = "scene_id spatial_ref"
    return ds


def create_store(
    store: CubeStore,
    grid: EmbeddingGrid,
    times: np.ndarray,
    scene_ids: Sequence[str],
    dim: int,
    chunk: int,
    attrs: Mapping[str, Any],
) -> None:
    """Write the store's metadata and coordinates (not yet marked complete: the caller adds the
    STAC Collection, then sets ``READY_ATTR``)."""
    ds = _template(grid, times, scene_ids, dim, chunk, {**attrs, READY_ATTR: False, DONE_ATTR: []})
    encoding = {
        "time": {"units": TIME_UNITS, "calendar": "proleptic_gregorian", "dtype": "int64"},
        "embedding": {"_FillValue": np.float32(np.nan), "grid_mapping": "spatial_ref"},
        "valid_fraction": {"_FillValue": np.float32(np.nan), "grid_mapping": "spatial_ref"},
    }
    with warnings.catch_warnings():
        # zarr notes that consolidated metadata is not in the v3 spec; readers rely on it.
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        ds.to_zarr(
            store.zarr_store(),
            mode="w-",
            compute=False,
            consolidated=True,
            zarr_format=3,
            encoding=encoding,
        )


def read_root(store: CubeStore) -> dict[str, Any] | None:
    """The root ``zarr.json`` (with consolidated metadata), or None."""
    store.invalidate()
    return store.read_json(ROOT_DOC)


def update_root(store: CubeStore, attrs: Mapping[str, Any]) -> None:
    """Replace root attributes in one write: the store's commit point."""
    doc = read_root(store)
    if doc is None:
        raise FileNotFoundError(f"no embeddings store at {store.url}")
    doc["attributes"] = {**doc.get("attributes", {}), **attrs}
    store.write_atomic(ROOT_DOC, json.dumps(doc, indent=1).encode())


def commit_scene(store: CubeStore, scene_id: str) -> None:
    """Mark one scene's embeddings complete (after all its chunks are written)."""
    doc = read_root(store) or {}
    done = list(doc.get("attributes", {}).get(DONE_ATTR, []))
    if scene_id not in done:
        update_root(store, {DONE_ATTR: [*done, scene_id]})


def write_window(
    group: Any,
    t: int,
    rows: slice,
    cols: slice,
    embedding: np.ndarray,
    valid_fraction: np.ndarray,
) -> None:
    """One window's (D, h, w) embeddings and (h, w) valid fractions at patch rows/cols."""
    group["embedding"][t, :, rows, cols] = embedding
    group["valid_fraction"][t, rows, cols] = valid_fraction
