"""An embeddings store as per-pixel features of a tile store's pixels (``hyperkd downstream
--embeddings``).

A tile-store pixel ``(tile, y, x)`` lies at cube pixel ``(y0 + y, x0 + x)`` of its scene (the
tile index's ``scene``, ``y0``, ``x0``); its feature is the embedding of the patch it falls in,
``embedding[scene, :, (y0 + y) // P, (x0 + x) // P]``. The store must be made from the cube
the tile store was cut from, and hold every scene the sampled tiles come from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hyperkd.model.embed.store import DONE_ATTR
from hyperkd.pipeline.redaction import clean_href


def pixel_features(
    url: str,
    ds: Any,
    tiles: np.ndarray,
    pixels: np.ndarray,
    storage_options: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """(N, D) float32 features of the pixels ``pixels`` (flat ``y * T + x``) of dataset
    positions ``tiles`` of ``ds`` (a :class:`~hyperkd.model.data.dataset.TileDataset`)."""
    import xarray as xr

    from hyperkd.pipeline.store.location import CubeStore
    from hyperkd.pipeline.tiles.verify import as_str, open_store

    store = CubeStore(url, storage_options)
    emb = xr.open_zarr(store.zarr_store(read_only=True), consolidated=True)
    done = set(emb.attrs.get(DONE_ATTR, []))
    time_of = {str(s): i for i, s in enumerate(emb["scene_id"].values) if str(s) in done}
    root = open_store(ds.url, ds.storage_options)
    ids = ds.tile_ids[tiles]
    scenes = as_str(root["index/scene"][:])[ids]
    y0, x0 = np.asarray(root["index/y0"][:])[ids], np.asarray(root["index/x0"][:])[ids]
    missing = sorted(set(scenes.tolist()) - set(time_of))
    if missing:
        raise ValueError(
            f"embeddings store {clean_href(url)} holds no finished embeddings of scene(s) "
            f"{missing[:3]}: run hyperkd embed on the tile store's cube first"
        )
    patch, size = int(emb.attrs["hyperkd:patch_size"]), ds.info.tile_size
    gy = (y0 + pixels // size) // patch
    gx = (x0 + pixels % size) // patch
    ny, nx = emb.sizes["y"], emb.sizes["x"]
    if gy.max(initial=0) >= ny or gx.max(initial=0) >= nx:
        raise ValueError(f"tiles reach outside the grid of {clean_href(url)}: another cube?")
    out = np.empty((len(pixels), emb.sizes["feature"]), np.float32)
    for scene in np.unique(scenes):
        rows = np.flatnonzero(scenes == scene)
        grid = emb["embedding"].isel(time=time_of[scene]).values  # (D, ny, nx), one scene
        out[rows] = grid[:, gy[rows], gx[rows]].T
    return out
