"""Prefect tasks: each a few lines that call ``pipeline`` or ``model`` and return a small record.

Caching: every task is keyed on its inputs plus its own source code (``INPUTS + TASK_SOURCE``)
and persists its result, so re-running an unchanged region skips finished steps and a changed
parameter re-runs only the tasks whose inputs it changes. Outputs live at content-addressed
paths (see :mod:`hyperkd.flows.steps`), so a cached record always points at what made it.
The search task's cache also expires, because catalogs gain scenes over time.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.tasks import exponential_backoff

from hyperkd import defaults
from hyperkd.flows.records import (
    IngestRecord,
    RunRecord,
    SceneRef,
    TileRecord,
    fingerprint,
    optimizer_key,
    teacher_fingerprint,
)

CACHE = INPUTS + TASK_SOURCE


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry network trouble, not bad input: a ``ValueError`` (a catalog that is not there, an
    unknown source) fails the same way every time, so it fails at once and names itself."""
    return not isinstance(state.result(raise_on_failure=False), ValueError)


NETWORK_RETRIES = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _transient,
}


@task(
    cache_policy=CACHE,
    persist_result=True,
    cache_expiration=dt.timedelta(hours=6),
    **NETWORK_RETRIES,
)
def search_scenes(
    sources: tuple[str, ...],
    region: str,
    start: dt.date,
    end: dt.date,
    max_cloud: float | None,
    window_days: int,
    allow_hrefs: tuple[str, ...] = (),
) -> list[SceneRef]:
    """STAC search + pairing, in ingest order: EnMAP scenes first, then paired HLS, each by time."""
    from hyperkd.pipeline.ingest.region import plan_scenes
    from hyperkd.pipeline.stac.items import cloud_cover, scene_datetime
    from hyperkd.pipeline.stac.regions import parse_region
    from hyperkd.pipeline.stac.search import SearchQuery, search
    from hyperkd.pipeline.stac.sources import resolve_source

    resolved = tuple(resolve_source(s) for s in sources)
    query = SearchQuery(
        sources, parse_region(region), start, end, max_cloud, window_days, allow_hrefs
    )
    return [
        SceneRef(s.item.id, s.group, scene_datetime(s.item).isoformat(), s.source.url if s.source.kind == "static" else s.source.name,
                 s.item.to_dict(), s.paired_enmap, cloud_cover(s.item))
        for s in plan_scenes(search(query, sources=resolved), resolved)
    ]  # fmt: skip


@task(cache_policy=CACHE, persist_result=True, **NETWORK_RETRIES)
def region_grid(scene: SceneRef, region: str) -> Any:
    """The cube grid from the first EnMAP scene, cropped to the region."""
    import pystac

    from hyperkd.pipeline.ingest.region import region_grid as grid_of
    from hyperkd.pipeline.stac.regions import parse_region
    from hyperkd.pipeline.stac.sources import resolve_source

    return grid_of(
        pystac.Item.from_dict(scene.item), resolve_source(scene.source), parse_region(region).bbox
    )


@task(cache_policy=CACHE, persist_result=True)
def ingest_scenes(
    cube: str,
    scenes: list[SceneRef],
    grid: Any,
    region: str,
    resampling: str,
    tile_size: int,
    storage_options: dict[str, Any],
    dask_address: str | None,
) -> list[tuple[str, str, str]]:
    """Write the scenes into the cube: loads and chunk writes in parallel (local threads, or the
    dask cluster at ``dask_address``), one writer committing them in order. A failed scene
    fails alone.

    Returns ``(scene id, status, reason)`` per scene, status ``written``, ``skipped``,
    ``empty`` or ``failed``.
    """
    import pystac

    from hyperkd.pipeline.ingest.parallel import ingest_planned
    from hyperkd.pipeline.ingest.region import IngestParams, PlannedScene
    from hyperkd.pipeline.stac.sources import resolve_source

    planned = [
        PlannedScene(pystac.Item.from_dict(s.item), resolve_source(s.source), s.paired_enmap)
        for s in scenes
    ]
    outcomes = ingest_planned(
        cube, planned, grid, IngestParams(resampling=resampling, tile_size=tile_size),
        region=region, storage_options=storage_options, dask_address=dask_address,
    )  # fmt: skip
    return [(o.scene_id, o.status, o.reason) for o in outcomes]


@task(cache_policy=CACHE, persist_result=True)
def build_tiles(
    cube: str,
    cube_fingerprint: str,
    out: str,
    tile_cfg: dict[str, Any],
    labels: dict[str, str],
    dask_address: str | None,
    storage_options: dict[str, Any] | None = None,
) -> TileRecord:
    """Aggregation, significance maps and the tile store for ``cube``.

    ``cube_fingerprint`` (the cube's committed scenes) is in the inputs so that a cube that
    gained scenes is tiled again, while a re-run that merely skipped scenes is not.
    """
    from hyperkd.pipeline.tiles.build import TileConfig
    from hyperkd.pipeline.tiles.build import build_tiles as build

    summary = build(
        cube, out, TileConfig(**tile_cfg), labels=labels, dask_address=dask_address,
        storage_options=storage_options,
    )  # fmt: skip
    key = fingerprint(cube_fingerprint, tile_cfg, labels)
    return TileRecord(out, summary.n_tiles, dict(summary.splits), key)


@task(cache_policy=CACHE, persist_result=True)
def preprocess_cube(
    cube: str, cube_fingerprint: str, patch_size: int, dask_address: str | None
) -> dict[str, Any]:
    """Store teacher bands and the significance maps for ``patch_size`` in ``cube`` (the one
    step that writes them; ``build_tiles`` only reads). Returns the run's summary."""
    from dataclasses import replace

    from hyperkd.pipeline.features.preprocess import PreprocessConfig, summary_dict
    from hyperkd.pipeline.features.preprocess import preprocess_cube as preprocess

    cfg = PreprocessConfig()
    cfg = replace(cfg, significance=replace(cfg.significance, patch_size=patch_size))
    if dask_address == "local":
        cfg = replace(cfg, scheduler="local")
    elif dask_address is not None:
        cfg = replace(cfg, dask_address=dask_address)
    return summary_dict(preprocess(cube, cfg)) | {"fingerprint": cube_fingerprint}


def _progress(key: str, total: int):
    artifact = create_progress_artifact(progress=0.0, key=key, description=f"{key}: {total} steps")

    def on_step(step: int) -> None:
        if step % max(1, total // 20) == 0 or step == total:
            update_progress_artifact(artifact_id=artifact, progress=100.0 * step / total)

    return on_step


@task(cache_policy=CACHE, persist_result=True)
def train_teacher(
    tiles: TileRecord,
    out: str,
    preset: str,
    steps: int,
    batch_size: int,
    seed: int,
    lr: float | None,
    optimizer: str = defaults.OPTIMIZER,
) -> RunRecord:
    """MAE-pretrains the Prithvi architecture on the six-band teacher tiles."""
    from hyperkd.model.train.config import OptimConfig, TeacherPretrainConfig, TrainConfig
    from hyperkd.model.train.runs import run_teacher_pretrain

    optim = OptimConfig(lr=lr, optimizer=optimizer)
    train = TrainConfig(
        out=out, steps=steps, batch_size=batch_size, seed=seed, optim=optim, progress=False
    )
    run_teacher_pretrain(
        TeacherPretrainConfig(tiles=tiles.url, train=train, preset=preset),
        on_step=_progress("teacher-pretraining", steps),
    )
    key = teacher_fingerprint(tiles.fingerprint, preset, steps, batch_size, seed, lr, optimizer)
    return RunRecord("teacher", out, key)


@task(cache_policy=CACHE, persist_result=True)
def distill_student(
    tiles: TileRecord,
    teacher: RunRecord | str,
    out: str,
    preset: str,
    masking: str,
    loss: str,
    steps: int,
    batch_size: int,
    seed: int,
    lr: float | None,
    teacher_preset: str = defaults.OFFICIAL_TEACHER_PRESET,
    spectral_dim: int = defaults.SPECTRAL_DIM,
    spectral_basis: str = defaults.SPECTRAL_BASIS,
    optimizer: str = defaults.OPTIMIZER,
) -> RunRecord:
    """Distils the student from the teacher on the tile store; ``teacher_preset`` is the
    architecture of an official ``.pt`` teacher (a run folder carries its own)."""
    from hyperkd.model.nets.masking import Masking
    from hyperkd.model.train.config import DistillConfig, OptimConfig, TrainConfig
    from hyperkd.model.train.losses import LossConfig
    from hyperkd.model.train.runs import run_distill

    teacher_path = teacher.path if isinstance(teacher, RunRecord) else teacher
    optim = OptimConfig(lr=lr, optimizer=optimizer)
    train = TrainConfig(
        out=out, steps=steps, batch_size=batch_size, seed=seed, optim=optim, progress=False
    )
    cfg = DistillConfig(
        tiles.url,
        train,
        teacher_path,
        teacher_preset=teacher_preset,
        preset=preset,
        masking=Masking(masking),
        loss=LossConfig(loss),
        spectral_dim=spectral_dim,
        spectral_basis=spectral_basis,
    )
    run_distill(cfg, on_step=_progress("student-distillation", steps))
    key = teacher.fingerprint if isinstance(teacher, RunRecord) else teacher
    parts = [tiles.fingerprint, key, preset, masking, loss, steps, batch_size, seed, lr]
    parts.append(spectral_dim)
    if spectral_basis != "learned":  # learned-basis runs keep the fingerprints they had
        parts.append(spectral_basis)
    return RunRecord("student", out, fingerprint(*parts, *optimizer_key(optimizer)))


@task(cache_policy=CACHE, persist_result=True)
def evaluate(
    student: RunRecord, tiles: TileRecord, out: str, split: str = "test", teacher: str | None = None
) -> RunRecord:
    """PSNR, SSIM and SAM of the student's reconstructions on ``split``, beside the baselines
    (and the teacher's, in teacher space, when its run directory or file is given)."""
    from hyperkd.model.evaluate.reconstruction import evaluate as run_evaluate
    from hyperkd.model.train.config import EvaluateConfig

    metrics = run_evaluate(
        EvaluateConfig(
            checkpoint=student.path, tiles=tiles.url, out=out, split=split, teacher=teacher
        )
    )
    flat = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    flat |= {
        f"{name}_{k}": float(v)
        for name, scores in metrics["baselines"].items()
        for k, v in scores.items()
        if k in ("psnr", "psnr_range")
    }
    return RunRecord(
        "evaluate", out, fingerprint(student.fingerprint, tiles.fingerprint, split), flat
    )


@task(cache_policy=CACHE, persist_result=True)
def write_run_manifest(run_dir: str, tiles: str, student: str, teacher: str) -> str:
    """``run.json`` of a run folder (docs/run.md), plus a ``teacher`` link to a local teacher run."""
    from hyperkd.model.train.runs import write_run_manifest as write

    return str(write(run_dir, tiles=tiles, student=student, teacher=teacher))


@task(cache_policy=CACHE, persist_result=True)
def write_report(run_dir: str, evaluation: RunRecord) -> str:
    """The HTML + markdown report of a run folder; returns the HTML path."""
    from hyperkd.model.report.page import ReportConfig
    from hyperkd.model.report.page import write_report as report

    return str(report(ReportConfig(run=run_dir))["html"])


def record_from(
    outcomes: list[tuple[str, str, str]], cube: str, committed: tuple[str, ...]
) -> IngestRecord:
    """Fold the scenes' outcomes into one record (failures with their reasons)."""
    written = tuple(sid for sid, status, _ in outcomes if status == "written")
    skipped = tuple(sid for sid, status, _ in outcomes if status in ("skipped", "empty"))
    failed = tuple((sid, why) for sid, status, why in outcomes if status == "failed")
    return IngestRecord(cube, committed, written, skipped, failed)
