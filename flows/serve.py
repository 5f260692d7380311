"""Scheduled deployments of the pipeline flow from a YAML schedules file: served by one
process, or registered on work pools for workers to run.

The file (see ``examples/schedules.yaml``) has ``defaults`` (flow parameters shared by every
deployment) and ``deployments``: ``name``, ``cron``, optional ``timezone`` (IANA name, default
UTC) and ``work_pool``, and ``parameters``. Everything is checked when the file is loaded (the
region, the sources, the presets, a local teacher), and each error names its entry.

* :func:`serve_schedules`: one ``prefect.serve`` process runs every deployment (one machine).
* :func:`deploy_schedules`: each deployment goes to a work pool, by default the CPU pool for
  ingest and tiles and the GPU pool for anything that trains or evaluates; a worker started
  on each pool (``prefect worker start --pool NAME``) runs the flow runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from prefect import serve
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from hyperkd import defaults
from hyperkd.flows.flows import hyperkd_pipeline
from hyperkd.flows.params import PipelineParams, one_line

TRAINING_STAGES = frozenset({"teacher", "student", "evaluate", "report"})
ENTRY_KEYS = frozenset({"name", "cron", "timezone", "work_pool", "parameters"})


@dataclass(frozen=True)
class ScheduledRun:
    """One deployment: a name, a cron expression in a time zone, a pool and the parameters."""

    name: str
    cron: str
    parameters: PipelineParams
    timezone: str = "UTC"
    work_pool: str | None = None
    """None: the CPU pool for ingest/tiles, the GPU pool when a stage trains or evaluates."""

    def pool(self, cpu_pool: str = defaults.CPU_POOL, gpu_pool: str = defaults.GPU_POOL) -> str:
        if self.work_pool:
            return self.work_pool
        return gpu_pool if TRAINING_STAGES & set(self.parameters.stages) else cpu_pool


def load_schedules(path: str | Path) -> list[ScheduledRun]:
    """Parse and validate a schedules file; every problem is a one-line ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"schedules file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(
            f"schedules file {path} is not valid YAML: {exc}".splitlines()[0]
        ) from None
    defaults: dict[str, Any] = raw.get("defaults") or {}
    entries = raw.get("deployments") or []
    if not entries:
        raise ValueError(f"schedules file {path} lists no deployments")
    runs, seen = [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: deployment #{i + 1} is not a mapping")
        name, cron = entry.get("name"), entry.get("cron")
        if not name or not cron:
            raise ValueError(f"{path}: deployment #{i + 1} needs both 'name' and 'cron'")
        if name in seen:
            raise ValueError(f"{path}: deployment name {name!r} is used twice")
        seen.add(name)
        if unknown := sorted(set(entry) - ENTRY_KEYS):
            raise ValueError(f"{path}: deployment {name!r} has unknown keys {unknown}")
        timezone = str(entry.get("timezone") or "UTC")
        _check_cron(path, name, cron, timezone)
        merged = {**defaults, **(entry.get("parameters") or {})}
        try:
            params = PipelineParams(**merged)
            params.check_inputs()
        except ValueError as exc:
            raise ValueError(
                f"{path}: deployment {name!r} has invalid parameters: {one_line(exc)}"
            ) from None
        runs.append(ScheduledRun(name, cron, params, timezone, entry.get("work_pool")))
    return runs


def _check_cron(path: Path, name: str, cron: str, timezone: str) -> None:
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{path}: deployment {name!r} has an unknown timezone {timezone!r} "
            "(use an IANA name such as Europe/Berlin)"
        ) from None
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValueError:
        raise ValueError(
            f"{path}: deployment {name!r} has an invalid cron expression {cron!r}"
        ) from None


def deployments(
    runs: list[ScheduledRun], pools: tuple[str, str] | None = None
) -> list[RunnerDeployment]:
    """Runner deployments of ``hyperkd_pipeline``, one per scheduled run.

    With ``pools`` (the CPU and the GPU pool) each names its work pool and an
    importable entrypoint (``hyperkd.flows.flows:hyperkd_pipeline``), so a worker on any
    machine with hyperkd installed can run it; without, they are for :func:`serve`.
    """
    out = []
    for run in runs:
        p = run.parameters
        extra: dict[str, Any] = {}
        if pools is not None:
            extra = {"work_pool_name": run.pool(*pools),
                     "entrypoint_type": EntrypointType.MODULE_PATH}  # fmt: skip
        out.append(
            hyperkd_pipeline.to_deployment(
                name=run.name,
                schedules=[Cron(run.cron, timezone=run.timezone)],
                parameters={"params": p.model_dump(mode="json")},
                tags=["hyperkd"],
                description=f"hyperkd pipeline for {p.region} ({', '.join(p.stages)})",
                **extra,
            )
        )
    return out


def deploy_schedules(
    path: str | Path, *, cpu_pool: str = defaults.CPU_POOL, gpu_pool: str = defaults.GPU_POOL
) -> dict[str, str]:
    """Register every scheduled run as a deployment on its work pool; returns name -> pool.

    The pools must exist (``prefect work-pool create NAME --type process``); the deployments
    keep their schedules while no process serves them, and a worker per pool runs them.
    """
    runs = load_schedules(path)
    pools = {run.name: run.pool(cpu_pool, gpu_pool) for run in runs}
    _check_pools(set(pools.values()))
    for deployment in deployments(runs, (cpu_pool, gpu_pool)):
        # No image, no code upload: workers import the installed hyperkd (module entrypoint).
        deployment.apply(work_pool_name=pools[deployment.name])
    return pools


def _check_pools(names: set[str]) -> None:
    import asyncio

    from prefect.client.orchestration import get_client

    async def missing() -> list[str]:
        async with get_client() as client:
            pools = {p.name for p in await client.read_work_pools()}
        return sorted(names - pools)

    if gone := asyncio.run(missing()):
        raise ValueError(
            f"work pool(s) {', '.join(gone)} do not exist: create them with "
            f"`prefect work-pool create NAME --type process` (on the Prefect API you deploy to)"
        )


def serve_schedules(path: str | Path, *, limit: int | None = None) -> None:
    """Register the deployments with their cron schedules and serve them until interrupted.

    Stopping the process pauses the schedules (Prefect's ``pause_on_shutdown``); serving again
    resumes them.
    """
    serve(*deployments(load_schedules(path)), limit=limit, print_starting_message=True)
