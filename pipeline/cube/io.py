"""Write, open and check the hyperkd Zarr v3 cube (docs/cube.md), crash-safely.

Commit protocol (docs/cube.md "Consistency guarantees"). The root ``zarr.json`` holds the
consolidated metadata of every array AND the scene records; it is the single commit point.

1. A scene's chunks are written at time index ``N`` (the committed length) through array handles
   whose *in-memory* metadata has the grown shape ``N + 1``; no ``zarr.json`` changes yet.
2. The root ``zarr.json`` (grown shapes + the new scene record) is replaced in ONE write.
3. Each grown array's own ``zarr.json`` is then rewritten to match (it lags, never leads).

Readers that use consolidated metadata (xarray does) only ever see committed scenes; readers
that do not see committed scenes or fewer. A killed writer leaves chunks at index ``N`` that no
metadata points to; the next writer deletes them before reuse and rewrites any lagging
``zarr.json`` (:meth:`CubeWriter.reconcile`). Appends are serialised by :class:`CubeLock`.

A scene that is not the newest of its group (a backfill), or that replaces an older
processing of its datatake, is placed by an edit of the later slots: staged beyond the axis,
hidden behind one commit, copied slot by slot, shown by the next commit
(:mod:`hyperkd.pipeline.cube.timeline`); a killed edit is rolled forward by the next writer.
"""

from __future__ import annotations

import contextlib
import copy
import os
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from hyperkd.pipeline.cube.derived import plan_variables
from hyperkd.pipeline.cube.faults import pause_point
from hyperkd.pipeline.cube.layout import CORE_VARIABLES, CubeLayout, Grid, SceneWrite, encode_time
from hyperkd.pipeline.cube.new_cube import root_attributes, write_groups
from hyperkd.pipeline.cube.read import ROOT_DOC
from hyperkd.pipeline.cube.scene_chunks import EmptySceneError, array_handle, write_scene
from hyperkd.pipeline.cube.schema import CUBE_VERSION, GROUPS, READABLE_VERSIONS
from hyperkd.pipeline.cube.stac import publish_cube
from hyperkd.pipeline.cube.timeline import PROGRESS, Edit, copy_slot, insert_index, plan_edit
from hyperkd.pipeline.store.location import CubeLock, CubeStore

PENDING = "hyperkd:pending"
"""Root attribute of a committed but unfinished time-axis edit (see ``timeline``)."""


class NotACubeError(ValueError):
    """The URL holds something that is not a hyperkd cube."""


class CubeWriter:
    """The one writer of a cube: ``with CubeWriter(url) as w: w.create(...); w.append(...)``.

    Entering takes the lock and reconciles leftovers of a killed run; leaving releases it.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
        *,
        lock_timeout_s: float = 60.0,
        min_valid_pixels: int = 0,
    ):
        self.store = CubeStore(url, storage_options)
        self.lock = CubeLock(self.store, timeout_s=lock_timeout_s)
        self.min_valid_pixels = min_valid_pixels
        """A scene with fewer valid pixels is not committed (:class:`EmptySceneError`)."""
        self.attrs: dict[str, Any] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self._zstore: Any = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> CubeWriter:
        self.lock.acquire()
        try:
            self._load()
            if self.exists:
                self.reconcile()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
        if not self.exists and self.store.is_local:
            # Taking the lock created the folder; leave nothing behind when no cube was made.
            with contextlib.suppress(OSError):
                os.rmdir(self.store.root)

    @property
    def exists(self) -> bool:
        return bool(self.attrs)

    @property
    def zstore(self) -> Any:
        if self._zstore is None:
            self._zstore = self.store.zarr_store()
        return self._zstore

    def _load(self) -> None:
        self.store.invalidate()
        doc = self.store.read_json(ROOT_DOC)
        self.attrs, self.nodes = {}, {}
        if doc is None:
            return
        attrs = doc.get("attributes", {})
        meta = (doc.get("consolidated_metadata") or {}).get("metadata")
        if "hyperkd:cube_version" not in attrs or meta is None:
            raise NotACubeError(f"{self.store.url} is a zarr store but not a hyperkd cube")
        if attrs["hyperkd:cube_version"] not in READABLE_VERSIONS:
            raise NotACubeError(
                f"{self.store.url} has cube version {attrs['hyperkd:cube_version']}, "
                f"this code writes version {CUBE_VERSION}"
            )
        self.attrs, self.nodes = dict(attrs), {k: dict(v) for k, v in meta.items()}

    def reconcile(self) -> None:
        """Make storage match the committed view after a killed run.

        Rewrites array ``zarr.json`` files that lag (or lead) the consolidated metadata,
        deletes arrays no metadata points to, and deletes chunks at the uncommitted time index.
        """
        for path, doc in self.nodes.items():
            if doc.get("node_type") == "array" and self.store.read_json(f"{path}/zarr.json") != doc:
                self.store.write_json(f"{path}/zarr.json", doc)
        if PENDING in self.attrs:  # a killed backfill/replacement: roll it forward first
            self._finish_edit(self.attrs[PENDING])
        for group in GROUPS:
            for name in self.store.listdir(group):
                if name != "zarr.json" and f"{group}/{name}" not in self.nodes:
                    self.store.delete_tree(f"{group}/{name}")
            self._drop_uncommitted(group)
        publish_cube(self.store, self.attrs, self.nodes)  # records a killed run left behind

    def _time_arrays(self, group: str) -> list[str]:
        return [
            p
            for p, d in self.nodes.items()
            if p.startswith(f"{group}/")
            and d.get("node_type") == "array"
            and (d.get("dimension_names") or [None])[0] == "time"
        ]

    def _drop_uncommitted(self, group: str) -> None:
        """Delete every chunk wholly at or beyond the committed length; in the one chunk of a
        1-D per-scene array that straddles it, reset the uncommitted tail to the fill value."""
        n = self.length(group)
        for path in self._time_arrays(group):
            step = int(self.nodes[path]["chunk_grid"]["configuration"]["chunk_shape"][0])
            for name in self.store.listdir(f"{path}/c"):
                if name.isdigit() and int(name) * step >= n:
                    self.store.delete_tree(f"{path}/c/{name}")
            if n % step:
                self._clear_tail(path, n, n - n % step + step)

    def _clear_tail(self, path: str, n: int, end: int) -> None:
        """Set ``[n, end)`` of a 1-D array to its fill value when a killed run left values
        there. One atomic chunk rewrite: indices below ``n`` (committed) keep their values."""
        doc = copy.deepcopy(self.nodes[path])
        doc["shape"] = [end]
        array = self._array(path, doc)
        if np.any(np.asarray(array[n:end]) != array.fill_value):
            array[n:end] = array.fill_value

    # -- queries -----------------------------------------------------------------------------
    def length(self, group: str) -> int:
        """Committed number of scenes in ``group``."""
        return int(self.nodes[f"{group}/time"]["shape"][0])

    @property
    def scenes(self) -> list[dict[str, Any]]:
        return list(self.attrs.get("hyperkd:scenes", []))

    def scene_ids(self, group: str | None = None) -> set[str]:
        return {s["id"] for s in self.scenes if group is None or s["group"] == group}

    def records(self, group: str) -> list[dict[str, Any]]:
        """The group's scene records, in time-axis order."""
        return [s for s in self.scenes if s["group"] == group]

    @property
    def grid(self) -> Grid:
        return Grid.from_geozarr(self.nodes["enmap"]["attributes"])

    @property
    def tile_size(self) -> int:
        return int(self.attrs["hyperkd:tile_size"])

    # -- writing -----------------------------------------------------------------------------
    def _array(self, path: str, doc: Mapping[str, Any]) -> Any:
        """A zarr array handle on ``path`` whose metadata is ``doc`` (nothing is written)."""
        return array_handle(self.zstore, path, doc)

    def _commit(self, changed: list[str]) -> None:
        """Replace the root document (the commit point), then the changed arrays' own docs."""
        self.lock.check()
        pause_point("before-commit")
        root = {
            "attributes": self.attrs,
            "zarr_format": 3,
            "consolidated_metadata": {
                "kind": "inline",
                "must_understand": False,
                "metadata": dict(sorted(self.nodes.items())),
            },
            "node_type": "group",
        }
        self.store.write_json(ROOT_DOC, root)
        pause_point("after-commit")
        for path in changed:
            self.store.write_json(f"{path}/zarr.json", self.nodes[path])
        # The STAC records follow the commit (a kill here leaves them one commit behind;
        # the next writer's reconcile brings them up to date).
        publish_cube(self.store, self.attrs, self.nodes)

    def create(self, layout: CubeLayout) -> None:
        """Create an empty cube (both groups, ``time`` length 0) and commit it."""
        if self.exists:
            raise ValueError(f"{self.store.url} already holds a cube")
        leftovers = set(self.store.listdir()) - {".hyperkd.lock", "enmap", "hls"}
        if any(not n.startswith(".zarr.json.") for n in leftovers):
            raise NotACubeError(f"{self.store.url} exists and is not a hyperkd cube: not writing")
        for group in GROUPS:  # an earlier run killed before its first commit
            self.store.delete_tree(group)
        self.nodes = write_groups(self.store, self.zstore, layout)
        self.attrs = root_attributes(layout, CUBE_VERSION)
        self._commit([])

    def append(self, scene: SceneWrite, *, replaces: str | None = None) -> None:
        """Add one scene at its place on its group's time axis (by time, then id) and commit.

        ``replaces``: the id of a committed scene of the same group that this one supersedes
        (a reprocessed product); it leaves the axis and its record moves into the new
        record's ``replaces`` list. A scene newer than the newest is appended in place; any
        other is an edit (:mod:`hyperkd.pipeline.cube.timeline`). On any error before the
        first commit the scene's chunks are removed again and nothing changes.
        """
        group = scene.group
        if scene.scene_id in self.scene_ids(group):
            raise ValueError(f"scene {scene.scene_id} is already in the cube")
        records = self.records(group)
        ids = [r["id"] for r in records]
        if replaces is not None and replaces not in ids:
            raise ValueError(f"scene {replaces} to replace is not in the cube's {group} group")
        removed = ids.index(replaces) if replaces is not None else None
        rest = [r for i, r in enumerate(records) if i != removed]
        when = encode_time(scene.time)
        same = next((r["id"] for r in rest if encode_time(r["datetime"]) == when), None)
        if same is not None:  # the axis is a coordinate: its values stay unique
            raise ValueError(f"scene {scene.scene_id} has the same acquisition time as {same}")
        index = insert_index(rest, (when, scene.scene_id))
        n = self.length(group)
        record = self._record_of(scene)
        if removed is None and index == n:
            self._write_staged(scene, n, n + 1)
            self.nodes.update(self._resized(group, n + 1))
            self.attrs["hyperkd:scenes"] = [*self.scenes, record]
            self._commit(self._time_arrays(group))
            self.lock.refresh()
            return
        if removed is not None:
            old = records[removed]
            kept = {k: old.get(k) for k in ("id", "datetime", "processing_version", "ingested_at")}
            record["replaces"] = [kept, *old.get("replaces", [])]
        edit = plan_edit(n, index, removed)
        self._write_staged(scene, edit.staged, max(n, edit.staged + 1))
        journal = {
            "id": uuid.uuid4().hex,
            "group": group,
            "edit": edit.as_json(),
            "scenes": [*rest[:index], record, *rest[index:]],
            "relabel": {replaces: scene.scene_id} if replaces and group == "enmap" else {},
        }
        # Hide the slots from `keep` on: readers see a sorted prefix while slots move.
        self.nodes.update(self._resized(group, edit.keep))
        self.attrs["hyperkd:scenes"] = self._with_group(group, records[: edit.keep])
        self.attrs[PENDING] = journal
        self._commit(self._time_arrays(group))
        self._finish_edit(journal)

    def _record_of(self, scene: SceneWrite) -> dict[str, Any]:
        iso = str(np.datetime64(encode_time(scene.time), "us")) + "Z"
        return dict(scene.record) | {"id": scene.scene_id, "group": scene.group, "datetime": iso}

    def _resized(self, group: str, length: int) -> dict[str, dict[str, Any]]:
        """Copies of the group's time-axis array docs with ``length`` scenes."""
        docs = {}
        for path in self._time_arrays(group):
            doc = copy.deepcopy(self.nodes[path])
            doc["shape"] = [length, *doc["shape"][1:]]
            docs[path] = doc
        return docs

    def _with_group(self, group: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [*(s for s in self.scenes if s["group"] != group), *records]

    def _write_staged(self, scene: SceneWrite, slot: int, size: int) -> None:
        """Write the scene's chunks at ``slot`` through handles sized ``size`` (uncommitted);
        on any error they are deleted again."""
        group = scene.group
        self._drop_uncommitted(group)
        try:
            arr = {
                p.split("/", 1)[1]: self._array(p, d) for p, d in self._resized(group, size).items()
            }
            write_scene(arr, scene, slot, self.min_valid_pixels)
            self.lock.check()
        except BaseException:
            self._drop_uncommitted(group)
            raise

    def _finish_edit(self, journal: Mapping[str, Any]) -> None:
        """Run (or resume) the slot copies of a committed edit, then commit the whole axis."""
        group, edit = str(journal["group"]), Edit.from_json(journal["edit"])
        size = max(edit.staged + 1, edit.length)
        arrays = [self._array(p, d) for p, d in self._resized(group, size).items()]
        progress = self.store.read_json(PROGRESS) or {}
        done = int(progress.get("done", 0)) if progress.get("edit") == journal["id"] else 0
        for i, (src, dst) in enumerate(edit.moves[done:], start=done):
            for array in arrays:
                copy_slot(array, src, dst)
            self.lock.check()
            self.store.write_json(PROGRESS, {"edit": journal["id"], "done": i + 1})
            pause_point("edit-copy")
        changed = self._time_arrays(group)
        relabel = dict(journal.get("relabel") or {})
        if relabel:  # HLS scenes paired with a replaced EnMAP scene follow it
            changed.append("hls/paired_enmap")
            pairs = self._array("hls/paired_enmap", self.nodes["hls/paired_enmap"])
            values = np.asarray(pairs[...], dtype=object)
            for i, value in enumerate(values):
                if value in relabel:
                    pairs[i] = relabel[value]
            hls = [r | {"paired_enmap": relabel.get(r.get("paired_enmap"), r.get("paired_enmap"))}
                   for r in self.records("hls")]  # fmt: skip
            self.attrs["hyperkd:scenes"] = self._with_group("hls", hls)
        self.nodes.update(self._resized(group, edit.length))
        self.attrs["hyperkd:scenes"] = self._with_group(group, list(journal["scenes"]))
        del self.attrs[PENDING]
        self._commit(changed)
        self._drop_uncommitted(group)
        self.store.delete_tree(PROGRESS)
        self.lock.refresh()

    def write_variables(self, group: str, ds: Any) -> list[str]:
        """Add or overwrite derived variables of ``group`` (see :func:`write_variables`)."""
        plans = plan_variables(self.nodes, self.tile_size, group, ds)
        for plan in plans:
            if plan.replace:
                self.store.delete_tree(plan.path)
            target = self._array(plan.path, plan.doc)
            plan.store(target)
            self.store.write_json(f"{plan.path}/zarr.json", plan.doc)
        self.lock.check()
        for plan in plans:
            self.nodes[plan.path] = plan.doc
        self._commit([])
        return [p.path for p in plans]

    def remove(self) -> None:
        """Delete the whole cube (used when a run created it and then wrote no scene)."""
        self.lock.check()
        self.store.delete_tree()
        self.lock.held = False
        self.attrs, self.nodes = {}, {}


def write_variables(
    url: str | os.PathLike[str],
    group: str,
    ds: Any,
    storage_options: Mapping[str, Any] | None = None,
    *,
    lock_timeout_s: float = 60.0,
) -> list[str]:
    """Add or overwrite derived variables in ``group``, aligned on its existing dims.

    ``ds``: an ``xarray.Dataset`` whose dims shared with the group (``time``, ``band``, ``y``,
    ``x``) have the group's sizes; new dims (``band6``, ``py``, ``px``) are free. Core
    variables (reflectance, valid, coordinates) cannot be replaced. Variables with a ``time``
    dim are chunked one scene per chunk and grow with later appends (fill value = not yet
    computed). Written under the cube lock and committed by re-consolidating. Returns the
    array paths written.
    """
    if group not in GROUPS:
        raise ValueError(f"unknown cube group {group!r}: expected one of {GROUPS}")
    if CubeStore(url, storage_options).read_json(ROOT_DOC) is None:
        raise FileNotFoundError(f"no hyperkd cube at {url}")
    with CubeWriter(url, storage_options, lock_timeout_s=lock_timeout_s) as writer:
        if not writer.exists:
            raise FileNotFoundError(f"no hyperkd cube at {writer.store.url}")
        return writer.write_variables(group, ds)


__all__ = [
    "CORE_VARIABLES",
    "CubeLayout",
    "CubeWriter",
    "EmptySceneError",
    "Grid",
    "NotACubeError",
    "SceneWrite",
    "write_variables",
]
