"""Serve scheduled deployments of the pipeline flow from a YAML schedules file.

The file (see ``examples/schedules.yaml``) has ``defaults`` (flow parameters shared by every
deployment) and ``deployments``: ``name``, ``cron`` and ``parameters``. Each becomes a
``hyperkd_pipeline.to_deployment(...)``; all are served by one ``prefect.serve`` process, which
polls the Prefect API given by ``PREFECT_API_URL`` (or the temporary local server Prefect
starts when none is set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment

from hyperkd.flows.flows import hyperkd_pipeline
from hyperkd.flows.params import PipelineParams


@dataclass(frozen=True)
class ScheduledRun:
    """One deployment: a name, a cron expression and the flow's parameters."""

    name: str
    cron: str
    parameters: PipelineParams


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
        name, cron = entry.get("name"), entry.get("cron")
        if not name or not cron:
            raise ValueError(f"{path}: deployment #{i + 1} needs both 'name' and 'cron'")
        if name in seen:
            raise ValueError(f"{path}: deployment name {name!r} is used twice")
        seen.add(name)
        _check_cron(path, name, cron)
        merged = {**defaults, **(entry.get("parameters") or {})}
        try:
            params = PipelineParams(**merged)
        except ValueError as exc:
            first = str(exc).splitlines()
            detail = "; ".join(line.strip() for line in first[1:3]) or first[0]
            raise ValueError(
                f"{path}: deployment {name!r} has invalid parameters: {detail}"
            ) from None
        runs.append(ScheduledRun(name=name, cron=cron, parameters=params))
    return runs


def _check_cron(path: Path, name: str, cron: str) -> None:
    try:
        CronSchedule(cron=cron)
    except ValueError:
        raise ValueError(
            f"{path}: deployment {name!r} has an invalid cron expression {cron!r}"
        ) from None


def deployments(runs: list[ScheduledRun]) -> list[RunnerDeployment]:
    """Runner deployments of ``hyperkd_pipeline``, one per scheduled run."""
    return [
        hyperkd_pipeline.to_deployment(
            name=run.name,
            cron=run.cron,
            parameters={"params": run.parameters.model_dump(mode="json")},
            tags=["hyperkd"],
            description=f"hyperkd pipeline for {run.parameters.region} ({', '.join(run.parameters.stages)})",
        )
        for run in runs
    ]


def serve_schedules(path: str | Path, *, limit: int | None = None) -> None:
    """Register the deployments with their cron schedules and serve them until interrupted.

    Stopping the process pauses the schedules (Prefect's ``pause_on_shutdown``); serving again
    resumes them.
    """
    serve(*deployments(load_schedules(path)), limit=limit, print_starting_message=True)
