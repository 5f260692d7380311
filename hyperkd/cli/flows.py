"""``hyperkd demo``, ``hyperkd pipeline`` and ``hyperkd serve``: the Prefect side of the CLI."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path


def _quiet_prefect() -> None:
    # Telemetry stays off unless the user set these explicitly.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class DemoConfig:
    out: Path
    size: str
    seed: int
    steps: int


def _demo(args: argparse.Namespace) -> int:
    cfg = DemoConfig(Path(args.out), args.size, args.seed, args.steps)
    _quiet_prefect()
    from hyperkd.flows.demo import demo

    t0 = time.monotonic()
    result = demo(out=str(cfg.out), size=cfg.size, seed=cfg.seed, steps=cfg.steps)
    ev = result.get("evaluate") or {}
    ingest = result["ingest"]
    print(f"cube:    {ingest.cube} ({len(ingest.scenes)} scenes)")
    print(f"tiles:   {result['tiles'].url} ({result['tiles'].n_tiles} tiles)")
    print("metrics: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(ev.get("metrics", {}).items())))
    print(f"report:  {ev.get('report')}")
    print(f"demo finished in {time.monotonic() - t0:.0f} s")
    return 0


@dataclass(frozen=True)
class ServeConfig:
    schedules: Path
    limit: int | None


def _serve(args: argparse.Namespace) -> int:
    cfg = ServeConfig(Path(args.schedules), args.limit)
    _quiet_prefect()
    from hyperkd.flows.serve import load_schedules, serve_schedules

    load_schedules(cfg.schedules)  # fail on a bad file before Prefect starts anything
    serve_schedules(cfg.schedules, limit=cfg.limit)
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    _quiet_prefect()
    from hyperkd.flows.flows import hyperkd_pipeline
    from hyperkd.flows.params import PipelineParams

    params = PipelineParams(
        region=args.region,
        sources=tuple(args.source),
        start=args.start,
        end=args.end,
        max_cloud=args.max_cloud,
        out=args.out,
        stages=tuple(args.stages.split(",")),
        tile_size=args.tile_size,
        patch_size=args.patch_size,
        teacher=args.teacher,
        student_preset=args.preset,
        teacher_preset=args.teacher_preset,
        teacher_steps=args.steps,
        student_steps=args.steps,
        dask_address=args.dask_address,
    )
    result = hyperkd_pipeline(params)
    ingest = result.get("ingest")
    if ingest is not None and ingest.failed:
        for sid, why in ingest.failed:
            print(f"failed {sid}: {why}")
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the whole job on the embedded demo region (one Prefect flow run)"
    )
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--size", default="medium", choices=["tiny", "small", "medium", "large"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=150, help="training steps for teacher and student")
    p.set_defaults(handler=_demo)

    p = sub.add_parser("pipeline", help="run the hyperkd-pipeline flow for one region")
    p.add_argument(
        "--source", action="append", required=True, help="source name or catalog.json (repeatable)"
    )
    p.add_argument("--region", required=True)
    p.add_argument("--start", required=True)
    p.add_argument("--end", required=True)
    p.add_argument("--max-cloud", type=float, default=None)
    p.add_argument("--out", required=True, help="root URL for cube, tiles and runs")
    p.add_argument("--stages", default="ingest,tiles,teacher,student,evaluate,report")
    p.add_argument("--tile-size", type=int, default=128)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--teacher", default=None, help="teacher checkpoint (run dir or Prithvi .pt)")
    p.add_argument("--preset", default="tiny", help="student preset")
    p.add_argument("--teacher-preset", default="tiny")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--dask-address", default=None, help="dask scheduler (tcp://...) or 'local'")
    p.set_defaults(handler=_pipeline)

    p = sub.add_parser("serve", help="serve scheduled Prefect deployments from a schedules file")
    p.add_argument("--schedules", required=True, help="YAML file, see examples/schedules.yaml")
    p.add_argument("--limit", type=int, default=None, help="max concurrent flow runs")
    p.set_defaults(handler=_serve)
