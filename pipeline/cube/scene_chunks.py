"""One scene's chunks, written at a time index no reader looks at (step 1 of the commit protocol).

The cube's writer (:meth:`~hyperkd.pipeline.cube.io.CubeWriter.append`) and the scale-out
workers (:func:`~hyperkd.pipeline.cube.staging.write_slot`) write a scene at ``slot``, at or
beyond the committed length, through array handles whose *in-memory* metadata has the time
axis grown past it; nothing here changes a ``zarr.json``. Showing the scene is the writer's
commit, and deleting the chunks when no commit follows is the writer's clean-up
(docs/cube.md "Consistency guarantees").
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from hyperkd.pipeline.cube.faults import PausingTarget
from hyperkd.pipeline.cube.layout import SceneWrite, encode_time
from hyperkd.pipeline.store.integrity import WRITE_EVERY_CHUNK


class EmptySceneError(ValueError):
    """A scene that would add fewer valid pixels than required: reported, not committed."""


def array_handle(zstore: Any, path: str, doc: Mapping[str, Any]) -> Any:
    """A zarr array handle on ``path`` of ``zstore`` whose metadata is ``doc`` (nothing is
    written)."""
    from zarr.core.array import Array, AsyncArray
    from zarr.core.metadata.v3 import ArrayV3Metadata
    from zarr.storage import StorePath

    meta = ArrayV3Metadata.from_dict(copy.deepcopy(dict(doc)))
    # Every chunk is written, fill values too, so an absent chunk is always damage.
    return Array(AsyncArray(meta, StorePath(zstore, path), config=WRITE_EVERY_CHUNK))


def as_dask(values: Any, target: Any) -> Any:
    """``values`` as a dask array chunked like ``target``'s shards, or its chunks when it is
    not sharded (minus the time axis): one dask block per stored object, so no two blocks
    write into one shard."""
    import dask.array as da

    chunks = (getattr(target, "shards", None) or target.chunks)[1:]
    if isinstance(values, da.Array):
        return values.rechunk(chunks) if values.chunksize != chunks else values
    return da.from_array(np.asarray(values), chunks=chunks)


def store_scene_arrays(
    arrays: Mapping[str, Any],
    reflectance: Any,
    valid: Any,
    slot: int,
    *,
    context: str = "",
    scheduler: str | None = None,
) -> None:
    """Write ``reflectance`` ``(band, y, x)`` and ``valid`` ``(y, x)`` at time index ``slot`` of
    ``arrays["reflectance"]`` and ``arrays["valid"]`` (handles sized past ``slot``).

    Raises ``ValueError`` (prefixed by ``context``) when the shapes do not fit the cube, before
    anything is written. ``scheduler``: dask's scheduler for the chunk writes (its default
    when ``None``).
    """
    import dask.array as da

    refl, ok = as_dask(reflectance, arrays["reflectance"]), as_dask(valid, arrays["valid"])
    if refl.shape != arrays["reflectance"].shape[1:] or ok.shape != arrays["valid"].shape[1:]:
        raise ValueError(
            f"{context}arrays {refl.shape}/{ok.shape} do not match the cube's "
            f"{arrays['reflectance'].shape[1:]}/{arrays['valid'].shape[1:]}"
        )
    region = (slice(slot, slot + 1),)
    da.store(
        [refl[None], ok[None]],
        [PausingTarget(arrays["reflectance"], "scene-chunks"), arrays["valid"]],
        regions=[region, region],
        lock=False,
        scheduler=scheduler,
    )


def write_scene(
    arrays: Mapping[str, Any], scene: SceneWrite, slot: int, min_valid_pixels: int
) -> None:
    """Write every time-axis array of ``scene`` at ``slot``: ``time``, ``scene_id`` and the
    labels, then the scene's chunks (:func:`store_scene_arrays`).

    ``arrays``: the group's time-axis arrays by name, sized past ``slot``. Raises
    :class:`EmptySceneError` when fewer than ``min_valid_pixels`` pixels are valid.
    """
    arrays["time"][slot] = encode_time(scene.time)
    arrays["scene_id"][slot] = scene.scene_id
    for name, label in scene.labels.items():
        arrays[name][slot] = label
    context = f"scene {scene.scene_id}: "
    store_scene_arrays(arrays, scene.reflectance, scene.valid, slot, context=context)
    check_valid(arrays["valid"], slot, min_valid_pixels)


def check_valid(valid: Any, slot: int, min_valid_pixels: int) -> None:
    """Raise :class:`EmptySceneError` when the written scene ``slot`` has fewer than
    ``min_valid_pixels`` valid pixels (read back from the store: one small bool array, no
    second read of the inputs)."""
    if min_valid_pixels <= 0:
        return
    count = int(np.count_nonzero(valid[slot]))
    if count < min_valid_pixels:
        raise EmptySceneError(
            f"{count} valid pixels in the cube's region (fewer than {min_valid_pixels})"
        )
