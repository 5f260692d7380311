"""The hyperkd flows: ingest_region, build_tiles, train_teacher, distill_student, evaluate_run,
and hyperkd_pipeline, which chains them for one region.

Flows only orchestrate. Each stage is a plain function (``*_stage``) that calls tasks, so the
pipeline and the demo run every stage inside ONE flow run, while each stage is also a flow of
its own for scheduled or ad-hoc use.

Output layout under ``<out>/<region>/`` (content-addressed where a parameter changes the result):

    cube.zarr                          the region's cube (appended over time)
    tiles-<cfg>.zarr                   tile store for one tile configuration
    teachers/<fingerprint>/            pretrained teacher run
    runs/<fingerprint>/                one student configuration (docs/run.md): run.json,
                                       student/, evaluate/, report.html, teacher -> ../../teachers/..
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from hyperkd.flows import tasks
from hyperkd.flows.params import PipelineParams, RegionParams, resolve_date
from hyperkd.flows.records import (
    IngestRecord,
    RunRecord,
    TileRecord,
    fingerprint,
    optimizer_key,
    teacher_fingerprint,
)


def region_root(out: str, region: str) -> str:
    """``<out>/<slug>``: a file-system friendly folder per region."""
    slug = re.sub(
        r"[^A-Za-z0-9._-]+", "_", region.rsplit("/", 1)[-1].removesuffix(".geojson")
    ).strip("_")
    return f"{out.rstrip('/')}/{slug or 'region'}"


_STORAGE: ContextVar[tuple[Any, dict[str, Any]]] = ContextVar("hyperkd_storage")
"""The running pipeline's result storage (Prefect block) and the outputs' storage options."""


def result_storage(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    """A Prefect result storage on any fsspec URL: a local folder, or a ``RemoteFileSystem``
    block saved on the Prefect server under a name derived from the URL and options.

    Task results (and the cache records keyed on them) live there, so every machine pointed at
    the same URL shares one cache. Prefect wants remote storage saved server-side; what is saved
    holds no credentials (they come from the environment, see ``PipelineParams``).
    """
    from pathlib import Path

    from prefect.filesystems import RemoteFileSystem

    from hyperkd.pipeline.store.location import storage_options_for

    if "://" not in url or url.startswith("file://"):
        return Path(url.removeprefix("file://")).absolute()
    settings = storage_options_for(url, storage_options)
    block = RemoteFileSystem(basepath=url, settings=settings)
    block.save(f"hyperkd-results-{fingerprint(url, settings)}", overwrite=True)
    return block


def _unless_gone(task: Any, *outputs: str, fresh: bool = False) -> Any:
    """``task`` as is while every one of ``outputs`` exists, else one that ignores its cache;
    either way writing its result to the running pipeline's result storage.

    "Cached" must mean "still there": a user who deletes a cube, a tile store, a run folder or
    the demo region gets it rebuilt (or a clear error naming what is missing), not a cached
    record pointing at nothing.
    """
    from hyperkd.pipeline.store.location import CubeStore

    storage, options = _STORAGE.get((None, {}))
    if storage is not None:
        task = task.with_options(result_storage=storage)
    gone = fresh or any(not CubeStore(output, options).exists() for output in outputs)
    return task.with_options(refresh_cache=True) if gone else task


def local_catalogs(sources: tuple[str, ...]) -> tuple[str, ...]:
    """The sources that are local catalog files (not shipped source names, not URLs)."""
    from hyperkd.pipeline.stac.sources import source_names

    return tuple(s for s in sources if s not in source_names() and "://" not in s)


# -- stages (run inside a flow) ---------------------------------------------------------------


def ingest_stage(
    params: PipelineParams, cube: str, *, resampling: str = "bilinear"
) -> IngestRecord:
    logger = get_run_logger()
    start, end = resolve_date(params.start), resolve_date(params.end)
    # A cached search names the catalog's scene files: it holds while the catalog is there.
    search = _unless_gone(tasks.search_scenes, *local_catalogs(params.sources))
    refs = search(
        params.sources, params.region, start, end, params.max_cloud, params.pair_window_days,
        params.allow_hrefs,
    )  # fmt: skip
    if not refs:
        logger.info("no scenes in %s between %s and %s", params.region, start, end)
        return IngestRecord(cube, ())
    enmap = [r for r in refs if r.group == "enmap"]
    if not enmap:
        raise ValueError(
            f"no EnMAP scene in {params.region} between {start} and {end} to define the grid"
        )
    grid = _unless_gone(tasks.region_grid)(enmap[0], params.region)
    from hyperkd.pipeline.cube import committed_scenes

    # Scenes load and write in parallel (threads, or the dask cluster at dask_address) and are
    # committed in time order by one writer. A cube missing any scene (say it was deleted, or a scene
    # failed before) ignores the cached result; scenes already in it are skipped, not reloaded.
    options = params.storage_options
    present = set(committed_scenes(cube, options))
    ingest = _unless_gone(tasks.ingest_scenes, fresh=not present >= {r.id for r in refs})
    outcomes = ingest(
        cube, refs, grid, params.region, resampling, params.tile_size, options, params.dask_address
    )
    record = tasks.record_from(outcomes, cube, committed_scenes(cube, options))
    _ingest_artifacts(refs, record)
    return record


def tiles_stage(params: PipelineParams, ingest: IngestRecord, root: str) -> TileRecord:
    tile_cfg = {
        "tile_size": params.tile_size,
        "patch_size": params.patch_size,
        "stride": params.stride,
        "min_valid": params.min_valid,
        "split_block_px": params.split_block_px,
        "seed": params.seed,
    }
    if params.train_stride is not None:  # absent when unset: existing stores keep their URL
        tile_cfg["train_stride"] = params.train_stride
    url = f"{root}/tiles-{fingerprint(tile_cfg, params.labels)}.zarr"
    build = _unless_gone(tasks.build_tiles, f"{url}/zarr.json")
    return build(
        ingest.cube, ingest.fingerprint, url, tile_cfg, dict(params.labels), params.dask_address,
        params.storage_options,
    )  # fmt: skip


def teacher_stage(params: PipelineParams, tiles: TileRecord, root: str) -> RunRecord | str:
    if params.teacher:
        return params.teacher
    p = params
    preset = p.teacher_architecture
    key = teacher_fingerprint(
        tiles.fingerprint, preset, p.teacher_steps, p.batch_size, p.seed, p.lr, p.optimizer
    )
    out = f"{root}/teachers/{key}"
    return _unless_gone(tasks.train_teacher, f"{out}/model.safetensors")(
        tiles, out, preset, p.teacher_steps, p.batch_size, p.seed, p.lr, p.optimizer
    )


def run_dir_of(
    params: PipelineParams, tiles: TileRecord, teacher: RunRecord | str, root: str
) -> str:
    """``<root>/runs/<fingerprint>``: one folder per student configuration (docs/run.md)."""
    teacher_key = teacher.fingerprint if isinstance(teacher, RunRecord) else teacher
    if params.official_teacher:  # the same .pt read as another architecture is another run
        teacher_key = f"{teacher_key}#{params.teacher_architecture}"
    parts = [
        tiles.fingerprint, teacher_key, params.student_preset, params.masking, params.loss,
        params.student_steps, params.batch_size, params.seed, params.lr,
    ]  # fmt: skip
    # The spectral factorisation is another student too; appended only when set, so folders
    # of full-band students keep their names.
    if params.spectral_dim:
        parts += [params.spectral_dim, params.spectral_basis]
    return f"{root}/runs/{fingerprint(*parts, *optimizer_key(params.optimizer))}"


def student_stage(
    params: PipelineParams, tiles: TileRecord, teacher: RunRecord | str, run_dir: str
) -> RunRecord:
    distill = _unless_gone(tasks.distill_student, f"{run_dir}/student/model.safetensors")
    return distill(
        tiles, teacher, f"{run_dir}/student", params.student_preset, params.masking, params.loss,
        params.student_steps, params.batch_size, params.seed, params.lr,
        params.teacher_architecture, params.spectral_dim, params.spectral_basis, params.optimizer,
    )  # fmt: skip


def evaluate_stage(
    params: PipelineParams,
    student: RunRecord,
    tiles: TileRecord,
    teacher: RunRecord | str,
    run_dir: str,
) -> dict[str, Any]:
    teacher_path = teacher.path if isinstance(teacher, RunRecord) else teacher
    manifest = _unless_gone(tasks.write_run_manifest, f"{run_dir}/run.json")
    manifest(run_dir, tiles.url, student.path, teacher_path)
    # The test split can be empty on small regions (whole blocks go to one split): fall back
    # to val, then train, and say so in the metrics table.
    split = next((s for s in ("test", "val", "train") if tiles.splits.get(s)), "test")
    if split != "test":
        get_run_logger().warning(
            "tile store %s has no test tiles: evaluating on %s", tiles.url, split
        )
    evaluate = _unless_gone(tasks.evaluate, f"{run_dir}/evaluate/metrics.json")
    evaluation = evaluate(student, tiles, f"{run_dir}/evaluate", split, teacher_path)
    report = _unless_gone(tasks.write_report, f"{run_dir}/report.html")
    html = report(run_dir, evaluation) if "report" in params.stages else None
    rows = [{"metric": k, "value": round(v, 4)} for k, v in sorted(evaluation.metrics.items())]
    create_table_artifact(
        rows, key="hyperkd-metrics", description=f"reconstruction metrics, {run_dir}"
    )
    return {"run": run_dir, "metrics": evaluation.metrics, "report": html}


def _ingest_artifacts(refs: list[Any], record: IngestRecord) -> None:
    failed = dict(record.failed)
    rows = [
        {
            "scene": r.id,
            "group": r.group,
            "datetime": r.datetime,
            "cloud %": r.cloud_cover,
            "paired with": r.paired_enmap,
            "status": "failed"
            if r.id in failed
            else ("written" if r.id in record.written else "skipped"),
            "reason": failed.get(r.id, ""),
        }
        for r in refs
    ]
    create_table_artifact(rows, key="hyperkd-scenes", description=f"scenes for {record.cube}")


def _summary_artifact(params: RegionParams, out: dict[str, Any]) -> None:
    lines = [f"# hyperkd run: {params.region}", "", f"- sources: {', '.join(params.sources)}",
             f"- dates: {params.start} .. {params.end}"]  # fmt: skip
    ingest: IngestRecord | None = out.get("ingest")
    if ingest is not None:
        lines += [f"- cube: `{ingest.cube}` ({len(ingest.scenes)} scenes; {len(ingest.written)} written, "
                  f"{len(ingest.skipped)} skipped, {len(ingest.failed)} failed)"]  # fmt: skip
        lines += [f"  - failed `{sid}`: {why}" for sid, why in ingest.failed]
    if (tiles := out.get("tiles")) is not None:
        lines += [f"- tiles: `{tiles.url}` ({tiles.n_tiles} tiles, splits {tiles.splits})"]
    if (ev := out.get("evaluate")) is not None:
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in sorted(ev["metrics"].items()))
        lines += [f"- run: `{ev['run']}`", f"- metrics: {metrics}"]
        if ev.get("report"):
            lines += [f"- report: `{ev['report']}`"]
    create_markdown_artifact(
        "\n".join(lines), key="hyperkd-summary", description="hyperkd run summary"
    )


def _no_scenes(record: IngestRecord) -> str:
    """Why there is nothing to tile, naming the first cause (a failed scene) when there is one."""
    if record.failed:
        sid, why = record.failed[0]
        return (f"cube {record.cube} holds no scenes: all {len(record.failed)} scenes failed, "
                f"the first ({sid}) with: {why}")  # fmt: skip
    return f"cube {record.cube} holds no scenes: nothing to tile"


def run_pipeline(params: PipelineParams) -> dict[str, Any]:
    """Every requested stage for one region, inside the current flow run."""
    token = _STORAGE.set(
        (result_storage(params.results_url, params.storage_options), params.storage_options)
    )
    try:
        return _run_stages(params)
    finally:
        _STORAGE.reset(token)


def _run_stages(params: PipelineParams) -> dict[str, Any]:
    root = region_root(params.out, params.name or params.region)
    stages, out = set(params.stages), {}
    cube = f"{root}/cube.zarr"
    if "ingest" in stages:
        out["ingest"] = ingest_stage(params, cube)
    else:
        from hyperkd.pipeline.cube import committed_scenes

        out["ingest"] = IngestRecord(cube, committed_scenes(cube, params.storage_options))
    needs_tiles = stages & {"tiles", "teacher", "student", "evaluate", "report"}
    if needs_tiles:
        if not out["ingest"].scenes:
            raise ValueError(_no_scenes(out["ingest"]))
        out["tiles"] = tiles_stage(params, out["ingest"], root)
    if stages & {"teacher", "student", "evaluate", "report"}:
        out["teacher"] = teacher_stage(params, out["tiles"], root)
    if stages & {"student", "evaluate", "report"}:
        run_dir = run_dir_of(params, out["tiles"], out["teacher"], root)
        out["student"] = student_stage(params, out["tiles"], out["teacher"], run_dir)
    if stages & {"evaluate", "report"}:
        out["evaluate"] = evaluate_stage(
            params, out["student"], out["tiles"], out["teacher"], run_dir
        )
    _summary_artifact(params, out)
    return out


# -- flows ------------------------------------------------------------------------------------

_ONE_AT_A_TIME = ThreadPoolTaskRunner(max_workers=1)


@flow(name="ingest-region", task_runner=_ONE_AT_A_TIME, log_prints=True)
def ingest_region(params: PipelineParams) -> IngestRecord:
    """Search, pair and ingest one region into its cube."""
    return run_pipeline(params.model_copy(update={"stages": ("ingest",)}))["ingest"]


@flow(name="build-tiles", task_runner=_ONE_AT_A_TIME)
def build_tiles(params: PipelineParams) -> TileRecord:
    """Aggregation, significance maps and the tile store for a region's cube."""
    return run_pipeline(params.model_copy(update={"stages": ("tiles",)}))["tiles"]


@flow(name="train-teacher", task_runner=_ONE_AT_A_TIME)
def train_teacher(params: PipelineParams) -> RunRecord | str:
    """MAE-pretrains the teacher on a region's tiles (or passes an official checkpoint through)."""
    return run_pipeline(params.model_copy(update={"stages": ("teacher",)}))["teacher"]


@flow(name="distill-student", task_runner=_ONE_AT_A_TIME)
def distill_student(params: PipelineParams) -> RunRecord:
    """Distils the student on a region's tiles."""
    return run_pipeline(params.model_copy(update={"stages": ("student",)}))["student"]


@flow(name="evaluate-run", task_runner=_ONE_AT_A_TIME)
def evaluate_run(params: PipelineParams) -> dict[str, Any]:
    """Evaluates the student and writes the report."""
    return run_pipeline(params.model_copy(update={"stages": ("evaluate", "report")}))["evaluate"]


@flow(name="hyperkd-pipeline", task_runner=_ONE_AT_A_TIME)
def hyperkd_pipeline(params: PipelineParams) -> dict[str, Any]:
    """The whole chain for one region: ingest -> tiles -> teacher -> student -> evaluate -> report."""
    return run_pipeline(params)
