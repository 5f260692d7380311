"""Scale-out ingest: the scenes of one run load and write in parallel, one writer commits.

A scene's load (COG reads, decompression, the warp of HLS onto the EnMAP grid, quality folding)
and its chunk writes are the expensive part, and scenes do not depend on each other, so up to
``workers`` scenes run at once, on local threads or as tasks on a dask distributed cluster
(:mod:`hyperkd.pipeline.ingest.pool`). Each worker writes its scene's chunks straight into the
cube at the slot the writer gave it (:mod:`hyperkd.pipeline.cube.staging`; the cube's URL must
reach the same storage from every worker: an object store, or a shared file system) and
returns only metadata.

What stays serial is what must: the one writer holding the cube's lock commits the scenes in
the plan's order (each group's time order), each run of finished scenes with one root-document
write (docs/cube.md "Consistency guarantees"). The cube is therefore the serial run's, byte
for byte in the arrays; a crash leaves it readable. Backfills and reprocessed products (rare)
are loaded in parallel but written by the writer, as in the serial path.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pystac

from hyperkd.pipeline.cube import CubeLayout, CubeWriter, SceneWrite
from hyperkd.pipeline.cube.bandmap import load_band_table
from hyperkd.pipeline.cube.layout import Grid, encode_time
from hyperkd.pipeline.cube.staging import (
    SlotTarget,
    commit_written,
    move_slot,
    slot_target,
    write_slot,
)
from hyperkd.pipeline.cube.timeline import order_key
from hyperkd.pipeline.ingest.pool import ScenePool, quiet_warnings, scene_pool
from hyperkd.pipeline.ingest.region import (
    IngestConfig,
    IngestParams,
    IngestSummary,
    PlannedScene,
    SceneOutcome,
    _group_of,
    _scene_write,
    _source_roots,
    _write_one,
    failure_reason,
    plan_scenes,
    region_grid,
)
from hyperkd.pipeline.stac.items import datatake_of, scene_datetime
from hyperkd.pipeline.stac.search import search
from hyperkd.pipeline.stac.sources import Source, resolve_source
from hyperkd.pipeline.store.guard import check_output


def load_scene(
    item: dict[str, Any],
    source: Source,
    grid: Grid,
    params: IngestParams,
    paired_enmap: str,
    quiet: bool = True,
    scheduler: str = "synchronous",
) -> SceneWrite:
    """One scene read into memory on ``grid``: the :class:`SceneWrite` with numpy arrays.

    Runs on a worker (a thread, or a dask worker process): arguments and result are plain,
    picklable values. Inside, the scene computes on ``scheduler``: ``synchronous`` on a dask
    worker (its threads are the parallelism), ``threads`` on the local pool (a scene's own
    reads overlap too: measured 2x faster per scene on 2 cores). ``quiet=False`` leaves the
    warning filters alone (``catch_warnings`` is not thread-safe: the thread pool sets them
    once, around all its threads).
    """
    import dask

    with quiet_warnings() if quiet else contextlib.nullcontext():
        scene = _scene_write(pystac.Item.from_dict(item), source, grid, params, paired_enmap)
        refl, valid = dask.compute(scene.reflectance, scene.valid, scheduler=scheduler)
    return replace(scene, reflectance=refl, valid=valid)


def stage_scene(
    item: dict[str, Any],
    source: Source,
    grid: Grid,
    params: IngestParams,
    paired_enmap: str,
    target: SlotTarget,
    quiet: bool = True,
    scheduler: str = "synchronous",
) -> Staged:
    """Load one scene and write its chunks at ``target``'s slot (:func:`write_slot`); runs on
    a worker and returns only the scene's small metadata, never its arrays."""
    t0 = time.monotonic()
    scene = load_scene(item, source, grid, params, paired_enmap, quiet, scheduler)
    with quiet_warnings() if quiet else contextlib.nullcontext():
        count = write_slot(target, scene.reflectance, scene.valid, scheduler)
    return Staged(replace(scene, reflectance=None, valid=None), count, time.monotonic() - t0)


@dataclass(frozen=True)
class Staged:
    """A scene whose chunks a worker wrote at its slot: the scene without its arrays, its
    valid pixel count and the worker's seconds (load + write)."""

    scene: SceneWrite
    valid_pixels: int
    seconds: float


def write_in_parallel(
    writer: CubeWriter,
    planned: Sequence[PlannedScene],
    params: IngestParams,
    pool: ScenePool,
    progress: Callable[[SceneOutcome], None] | None = None,
) -> list[SceneOutcome]:
    """Load (and, where possible, write) the planned scenes in parallel, ``pool.width`` at a
    time on ``pool``'s workers, and commit them in plan order through ``writer``.

    A group whose new scenes all go after its newest scene (a new cube, a newer season) gets
    slots, and its workers write their scenes' chunks straight into the cube; the writer
    commits each run of finished scenes with one root-document write. A group with a backfill
    or a reprocessed product loads in parallel and is appended by the writer, as in the serial
    path. Scenes already in the cube are skipped without loading; a failing load fails its
    scene alone (the same outcome and reason as the serial path).
    """
    todo = [s for s in planned if _needs_load(writer, s)]
    targets = _slot_targets(writer, todo)
    outcomes: list[SceneOutcome] = []
    batch = _Batch(writer, outcomes, progress)
    futures: dict[int, Any] = {}

    def start(j: int) -> None:
        if j < len(todo):
            s = todo[j]
            args = (s.item.to_dict(), s.source, writer.grid, params, s.paired_enmap)
            futures[j] = (pool.submit(stage_scene, *args, targets[j]) if j in targets
                          else pool.submit(load_scene, *args))  # fmt: skip

    try:
        _commit_in_order(writer, planned, params, todo, targets, batch, futures, start, pool.width)
    except BaseException:
        _settle(futures.values())  # no worker may write on once the writer lets go of the lock
        raise
    if batch.holes:
        writer.reconcile()  # chunks of scenes that did not commit lie beyond the axis: gone
    return outcomes


def _commit_in_order(
    writer: CubeWriter,
    planned: Sequence[PlannedScene],
    params: IngestParams,
    todo: Sequence[PlannedScene],
    targets: Mapping[int, SlotTarget],
    batch: _Batch,
    futures: dict[int, Any],
    start: Callable[[int], None],
    workers: int,
) -> None:
    """Walk the plan in order: queue worker-written scenes in ``batch`` (committed whenever
    the next one is not ready), append the others through the writer."""
    for j in range(workers):
        start(j)
    j = 0
    for scene in planned:
        future = None
        if j < len(todo) and scene is todo[j]:
            future = futures.pop(j)
            start(j + workers)  # keep `workers` scenes running while this one is committed
            j += 1
        if future is not None and j - 1 in targets:
            batch.add(scene, targets[j - 1], future)
            if j not in targets or j not in futures or not futures[j].done():
                batch.commit()  # commit what is ready; the rest commits with a later batch
            continue
        batch.commit()
        load = None if future is None else (lambda *_, f=future: f.result())
        outcome = _write_one(writer, scene.item, scene.source, params, scene.paired_enmap,
                             load=load)  # fmt: skip
        batch.report(outcome)
    batch.commit()


def _settle(futures: Iterable[Any]) -> None:
    """Cancel the scenes not started and wait for those running (threads or dask)."""
    for future in futures:
        future.cancel()
    for future in futures:
        with contextlib.suppress(BaseException):
            future.result()


def _slot_targets(writer: CubeWriter, todo: Sequence[PlannedScene]) -> dict[int, SlotTarget]:
    """``todo`` index -> slot, for the scenes of every group whose new scenes are all
    appends: after the group's newest scene, in time order, one per datatake."""
    targets: dict[int, SlotTarget] = {}
    for group in ("enmap", "hls"):
        mine = [(j, s) for j, s in enumerate(todo) if s.group == group]
        records = writer.records(group)
        keys = [(encode_time(scene_datetime(s.item)), s.item.id) for _, s in mine]
        takes = [datatake_of(s.item.id) for _, s in mine]
        newest = order_key(records[-1])[0] if records else None
        appends = (
            keys == sorted(keys)
            and len({k[0] for k in keys}) == len(keys)
            and (newest is None or not keys or keys[0][0] > newest)
            and len(set(takes)) == len(takes)
            and not set(takes) & {datatake_of(r["id"]) for r in records}
        )
        if appends:
            n = writer.length(group)
            targets |= {j: slot_target(writer, group, n + k) for k, (j, _) in enumerate(mine)}
    return targets


class _Batch:
    """Scenes written by workers, waiting to be committed together in plan order."""

    def __init__(self, writer: CubeWriter, outcomes: list[SceneOutcome],
                 progress: Callable[[SceneOutcome], None] | None) -> None:  # fmt: skip
        self.writer, self.outcomes, self.progress = writer, outcomes, progress
        self.pending: list[tuple[SceneOutcome, SceneWrite | None]] = []
        self.holes = 0
        """Slots whose scene did not commit (their chunks are deleted at the end)."""

    def add(self, scene: PlannedScene, target: SlotTarget, future: Any) -> None:
        """Wait for the scene's worker, then queue it (moved down over earlier holes), or
        queue its outcome: failed, empty, or skipped when its EnMAP pair is not in the cube."""
        item, group, writer = scene.item, target.group, self.writer
        if self.pending and self.pending[0][0].group != group:
            self.commit()  # one group per commit
        try:  # always wait: a later scene may move into this slot
            staged: Staged = future.result()
        except Exception as exc:  # a scene's failure is reported, never fatal to the run
            return self._hole(SceneOutcome(item.id, group, "failed", failure_reason(exc)))
        pending = [o.scene_id for o, sw in self.pending if sw is not None]
        pair = scene.paired_enmap
        if pair and pair not in writer.scene_ids("enmap"):
            why = f"its EnMAP pair {pair} is not in the cube"
            return self._hole(SceneOutcome(item.id, group, "skipped", why))
        if staged.valid_pixels < writer.min_valid_pixels:
            why = (f"{staged.valid_pixels} valid pixels in the cube's region (fewer than "
                   f"{writer.min_valid_pixels})")  # fmt: skip
            return self._hole(SceneOutcome(item.id, group, "empty", why, staged.seconds))
        slot = writer.length(group) + len(pending)
        if target.slot != slot:
            move_slot(writer, group, target.slot, slot)
        written = SceneOutcome(item.id, group, "written", "", staged.seconds)
        self.pending.append((written, staged.scene))

    def _hole(self, outcome: SceneOutcome) -> None:
        self.holes += 1
        self.pending.append((outcome, None))

    def commit(self) -> None:
        """One commit for every queued scene; then their outcomes are reported, in order."""
        scenes = [sw for _, sw in self.pending if sw is not None]
        reports = [o for o, _ in self.pending]
        try:
            commit_written(self.writer, scenes)
        except Exception as exc:  # e.g. the lock was lost: these scenes fail, nothing commits
            reason = failure_reason(exc)
            self.holes += len(scenes)
            reports = [o if o.status != "written" else replace(o, status="failed", reason=reason)
                       for o in reports]  # fmt: skip
        self.pending = []
        for outcome in reports:
            self.report(outcome)

    def report(self, outcome: SceneOutcome) -> None:
        self.outcomes.append(outcome)
        if self.progress is not None:
            self.progress(outcome)


def _needs_load(writer: CubeWriter, scene: PlannedScene) -> bool:
    try:
        return scene.item.id not in writer.scene_ids(_group_of(scene.item))
    except ValueError:  # not EnMAP or HLS: the serial path reports it
        return False


def ingest_planned(
    cube_url: str,
    planned: Sequence[PlannedScene],
    grid: Grid,
    params: IngestParams,
    *,
    region: str = "",
    storage_options: Mapping[str, Any] | None = None,
    lock_timeout_s: float = 60.0,
    min_valid_pixels: int = 1,
    dask_address: str | None = None,
    workers: int | None = None,
    progress: Callable[[SceneOutcome], None] | None = None,
    pool: ScenePool | None = None,
) -> list[SceneOutcome]:
    """Every planned scene into the cube at ``cube_url`` (created on ``grid`` if absent), loads
    and writes in parallel, one writer committing; a cube this call created and wrote nothing
    into is removed. ``pool``: an open :func:`scene_pool` (else one is opened from
    ``dask_address`` and ``workers``)."""
    if not planned:
        return []
    if pool is None:
        with scene_pool(dask_address, workers) as pool:
            return ingest_planned(
                cube_url, planned, grid, params, region=region, storage_options=storage_options,
                lock_timeout_s=lock_timeout_s, min_valid_pixels=min_valid_pixels,
                progress=progress, pool=pool,
            )  # fmt: skip
    with CubeWriter(
        cube_url, storage_options, lock_timeout_s=lock_timeout_s, min_valid_pixels=min_valid_pixels
    ) as writer:
        created = not writer.exists
        if created:
            writer.create(CubeLayout(grid, load_band_table(params.bands), params.tile_size, region))
        outcomes = write_in_parallel(writer, planned, params, pool, progress)
        if created and not any(o.status == "written" for o in outcomes):
            writer.remove()
    return outcomes


def ingest_region_parallel(
    config: IngestConfig,
    *,
    dask_address: str | None = None,
    workers: int | None = None,
    progress: Callable[[SceneOutcome], None] | None = None,
) -> IngestSummary:
    """:func:`hyperkd.pipeline.ingest.region.ingest_region` with parallel loads and writes:
    reach the workers (a bad ``dask_address`` fails here, before any work), search (one request
    stream, serial), plan, fix the grid from the first EnMAP scene, then :func:`ingest_planned`."""
    query = config.query
    sources = tuple(map(resolve_source, query.sources))
    check_output(config.out, "cube", _source_roots(sources), config.storage_options)
    load_band_table(config.params.bands)  # bad --bands fails before anything is written
    with scene_pool(dask_address, workers) as pool:
        planned = plan_scenes(search(query, sources=sources), sources)
        if not planned:
            return IngestSummary(config.out, (), f"no scenes in region {query.region.name}")
        enmap = [s for s in planned if s.group == "enmap"]
        if not enmap:
            return IngestSummary(config.out, (), "no EnMAP scene to define the cube grid")
        grid = region_grid(enmap[0].item, enmap[0].source, query.region.bbox)
        outcomes = ingest_planned(
            config.out, planned, grid, config.params, region=query.region.name,
            storage_options=config.storage_options, lock_timeout_s=config.lock_timeout_s,
            min_valid_pixels=config.min_valid_pixels, progress=progress, pool=pool,
        )  # fmt: skip
    return IngestSummary(config.out, tuple(outcomes))
