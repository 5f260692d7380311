"""Scene chunks written by workers, committed by the one writer (scale-out ingest).

In a scale-out ingest (:mod:`hyperkd.pipeline.ingest.parallel`) the writer holding the cube's
lock gives each scene that will be appended a *slot*: the index it will have on its group's
time axis, at or beyond the committed length, where no reader looks. The worker that loads
the scene writes its ``reflectance`` and ``valid`` chunks there itself (:func:`write_slot`):
a scene owns its time chunks, so no two workers write the same object, and no array travels
back to the writer. The writer then writes the per-scene 1-D arrays (``time``, ``scene_id``,
labels: their chunks hold many scenes, so only the writer touches them) and commits a batch of
scenes with one root-document write (:func:`commit_written`), as docs/cube.md "Consistency
guarantees" describes for one scene.

A slot whose scene never commits (its load failed, or the writer was killed) lies beyond the
committed length: the writer's own clean-up or the next writer's reconcile deletes it. A
worker writes only while the lock still carries its writer's token (checked before and after
the write), so a worker outliving a killed writer stops at its next scene.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hyperkd.pipeline.cube.io import CubeWriter, SceneWrite
from hyperkd.pipeline.cube.layout import encode_time
from hyperkd.pipeline.cube.scene_chunks import array_handle, store_scene_arrays
from hyperkd.pipeline.cube.timeline import copy_slot, insert_index
from hyperkd.pipeline.store.location import CubeLock, CubeStore

SCENE_ARRAYS = ("reflectance", "valid")
"""The per-scene arrays a worker writes: one time chunk per scene, nothing shared."""


@dataclass(frozen=True)
class SlotTarget:
    """Where a worker writes one scene (plain, picklable values).

    ``docs``: the zarr.json documents of ``reflectance`` and ``valid`` with the time axis grown
    to ``slot + 1``; ``token``: the writer's lock token.
    """

    url: str
    storage_options: Mapping[str, Any] = field(repr=False)  # never in a log line
    group: str
    slot: int
    docs: Mapping[str, Mapping[str, Any]]
    token: str


def slot_target(writer: CubeWriter, group: str, slot: int) -> SlotTarget:
    """The target of the scene that will hold ``slot`` in ``group`` (``slot >= length``)."""
    if slot < writer.length(group):
        raise ValueError(f"slot {slot} of {group} is committed: a worker never writes there")
    docs = {}
    for name in SCENE_ARRAYS:
        doc = copy.deepcopy(writer.nodes[f"{group}/{name}"])
        doc["shape"] = [slot + 1, *doc["shape"][1:]]
        docs[name] = doc
    store = writer.store
    return SlotTarget(store.url, dict(store.storage_options), group, slot, docs, writer.lock.token)


def write_slot(target: SlotTarget, reflectance: Any, valid: Any, scheduler: str) -> int:
    """Write one scene's ``reflectance`` ``(band, y, x)`` and ``valid`` ``(y, x)`` at
    ``target.slot``; returns the number of valid pixels. Runs on a worker.

    ``scheduler``: dask's scheduler for the chunk writes (``threads`` or ``synchronous``).
    Raises ``ValueError`` when the arrays do not fit the cube and ``CubeLockedError`` when the
    writer lost its lock (nothing is written then; a half-written slot is never committed).
    """
    store = CubeStore(target.url, target.storage_options)
    lock = CubeLock(store)
    lock.token, lock.held = target.token, True
    lock.check()
    zstore = store.zarr_store()
    arr = {name: array_handle(zstore, f"{target.group}/{name}", target.docs[name])
           for name in SCENE_ARRAYS}  # fmt: skip
    store_scene_arrays(arr, reflectance, valid, target.slot, scheduler=scheduler)
    lock.check()
    return int(np.count_nonzero(np.asarray(valid)))


def move_slot(writer: CubeWriter, group: str, src: int, dst: int) -> None:
    """Copy a written slot ``src`` down to ``dst`` (both uncommitted): a scene before it in the
    batch did not commit, so the slots close up."""
    if min(src, dst) < writer.length(group):
        raise ValueError(f"slots {src}->{dst} of {group}: committed slots are never moved")
    for name in SCENE_ARRAYS:
        target = slot_target(writer, group, max(src, dst))
        copy_slot(writer._array(f"{group}/{name}", target.docs[name]), src, dst)


def commit_written(writer: CubeWriter, scenes: Sequence[SceneWrite]) -> None:
    """Commit ``scenes`` (one group, in time order, each after the group's newest) as the
    group's next slots, whose ``reflectance`` and ``valid`` chunks are already written there;
    the scenes' arrays are not used. One root-document write commits them all."""
    if not scenes:
        return
    group = scenes[0].group
    n = writer.length(group)
    records = writer.records(group)
    for scene in scenes:
        when = encode_time(scene.time)
        if scene.group != group or scene.scene_id in writer.scene_ids(group):
            raise ValueError(f"scene {scene.scene_id}: not a new scene of {group}")
        if insert_index(records, (when, scene.scene_id)) != len(records) or any(
            encode_time(r["datetime"]) == when for r in records
        ):
            raise ValueError(f"scene {scene.scene_id} is not after the newest scene of {group}")
        records = [*records, writer._record_of(scene)]
    size = n + len(scenes)
    arr = {p.split("/", 1)[1]: writer._array(p, d) for p, d in writer._resized(group, size).items()}
    for slot, scene in enumerate(scenes, start=n):
        arr["time"][slot] = encode_time(scene.time)
        arr["scene_id"][slot] = scene.scene_id
        for name, label in scene.labels.items():
            arr[name][slot] = label
    writer.lock.check()
    writer.nodes.update(writer._resized(group, size))
    writer.attrs["hyperkd:scenes"] = [*writer.scenes, *records[n:]]
    writer._commit(writer._time_arrays(group))
    writer.lock.refresh()
