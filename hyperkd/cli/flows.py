"""``hyperkd demo``, ``pipeline``, ``serve`` and ``deploy``: the Prefect side of the CLI.

Defaults come from :mod:`hyperkd.defaults` (the flows' parameter models read the same values).
Every input is checked before Prefect starts: a bad parameter is one line, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

from hyperkd import defaults
from hyperkd.cli.common import add_parser, add_storage_options, storage_options, validated
from hyperkd.cli.stac import add_allow_href_argument
from hyperkd.cli.train import add_optimizer

STAGES = "ingest,tiles,teacher,student,evaluate,report"


def _quiet_prefect() -> None:
    # Telemetry stays off unless the user set these explicitly.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class DemoConfig:
    out: Path
    size: str = defaults.DEMO_SIZE
    seed: int = defaults.SEED
    steps: int | None = defaults.DEMO_STEPS


def _demo(args: argparse.Namespace) -> int:
    cfg = DemoConfig(Path(args.out), args.size, args.seed, args.steps)
    if cfg.steps is not None and cfg.steps <= 0:
        raise ValueError(f"--steps {cfg.steps}: must be at least 1")
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


@dataclass(frozen=True)
class DeployConfig:
    schedules: Path
    cpu_pool: str = defaults.CPU_POOL
    gpu_pool: str = defaults.GPU_POOL


def _deploy(args: argparse.Namespace) -> int:
    cfg = DeployConfig(Path(args.schedules), args.cpu_pool, args.gpu_pool)
    _quiet_prefect()
    from hyperkd.flows.serve import deploy_schedules, load_schedules

    load_schedules(cfg.schedules)  # fail on a bad file before talking to the API
    for name, pool in deploy_schedules(
        cfg.schedules, cpu_pool=cfg.cpu_pool, gpu_pool=cfg.gpu_pool
    ).items():
        print(f"deployed hyperkd-pipeline/{name} to work pool {pool}")
    print("start a worker per pool: prefect worker start --pool NAME")
    return 0


def pipeline_params(args: argparse.Namespace):  # -> PipelineParams
    """The flow's parameters from the command line, checked: one ``ValueError`` line if bad."""
    from hyperkd.flows.params import PipelineParams

    params = validated(
        PipelineParams,
        region=args.region,
        sources=tuple(args.source),
        start=args.start,
        end=args.end,
        max_cloud=args.max_cloud,
        allow_hrefs=tuple(args.allow_href),
        out=args.out,
        stages=tuple(s.strip() for s in args.stages.split(",") if s.strip()),
        tile_size=args.tile_size,
        patch_size=args.patch_size,
        teacher=args.teacher,
        student_preset=args.preset,
        spectral_dim=args.spectral_dim,
        spectral_basis=args.spectral_basis,
        teacher_preset=args.teacher_preset,
        teacher_steps=args.steps,
        student_steps=args.steps,
        optimizer=args.optimizer,
        seed=args.seed,
        dask_address=args.dask_address,
        storage_options=storage_options(args.storage_options),
        results=args.results,
    )
    params.check_inputs()
    return params


def _pipeline(args: argparse.Namespace) -> int:
    params = pipeline_params(args)
    _quiet_prefect()
    from hyperkd.flows.flows import hyperkd_pipeline

    result = hyperkd_pipeline(params)
    ingest = result.get("ingest")
    if ingest is not None and ingest.failed:
        for sid, why in ingest.failed:
            print(f"failed {sid}: {why}")
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    # The order here is the order of ``hyperkd --help``.
    _register_demo(sub)
    _register_pipeline(sub)
    _register_serve(sub)
    _register_deploy(sub)


def _register_demo(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "demo",
        help="run the whole job on the embedded demo region (one Prefect flow run)",
        description="Generate the demo region, ingest it, tile it, pretrain a teacher, distil the "
        "student, evaluate and write the report, in one Prefect flow run on local files. "
        "Re-running skips finished steps; a deleted output folder is made again.",
    )  # fmt: skip
    p.add_argument("--out", default=defaults.DEMO_OUT, metavar="DIR", help="output folder")
    p.add_argument("--size", default=defaults.DEMO_SIZE, choices=["tiny", "small", "medium", "large"],
                   help="demo region: 64 / 256 / 512 / 1024 EnMAP pixels at 30 m")  # fmt: skip
    p.add_argument("--seed", type=int, default=defaults.SEED, metavar="N", help="random seed")
    p.add_argument("--steps", type=int, default=defaults.DEMO_STEPS, metavar="N",
                   help=f"training steps for teacher and student (default {defaults.DEMO_TEACHER_STEPS} "
                   f"/ {defaults.DEMO_STUDENT_STEPS})")  # fmt: skip
    p.set_defaults(handler=_demo)


def _register_pipeline(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "pipeline",
        help="run the hyperkd-pipeline flow for one region",
        description="Search, ingest, tile, train the teacher (unless --teacher is given), distil "
        "the student, evaluate and report for one region and date range, as one Prefect flow "
        "run. Outputs go under OUT/<region>/; task results (the cache) under "
        f"OUT/{defaults.RESULTS_DIR} unless --results says otherwise.",
    )  # fmt: skip
    p.add_argument("--source", action="append", required=True, metavar="NAME|CATALOG",
                   help="source name or catalog.json (repeatable)")  # fmt: skip
    p.add_argument("--region", required=True, metavar="REGION",
                   help="minlon,minlat,maxlon,maxlat, a GeoJSON file or a named region")  # fmt: skip
    p.add_argument("--start", required=True, metavar="DATE", help="YYYY-MM-DD, today or -Nd")
    p.add_argument("--end", required=True, metavar="DATE", help="YYYY-MM-DD, today or -Nd")
    p.add_argument("--max-cloud", type=float, default=None, metavar="PCT",
                   help="largest scene cloud cover in percent (default: any)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="URL", help="root URL for cube, tiles and runs")
    add_allow_href_argument(p)
    add_storage_options(p)
    p.add_argument("--results", default=None, metavar="URL",
                   help=f"fsspec URL of Prefect's task results, shared by every machine "
                   f"pointed at it (default: OUT/{defaults.RESULTS_DIR})")  # fmt: skip
    p.add_argument("--stages", default=STAGES, metavar="LIST", help="comma-separated stages")
    p.add_argument(
        "--tile-size", type=int, default=defaults.TILE_SIZE, metavar="PX", help="tile edge"
    )
    p.add_argument("--patch-size", type=int, default=defaults.PATCH_SIZE, metavar="PX",
                   help="ViT patch edge")  # fmt: skip
    p.add_argument("--teacher", default=None, metavar="CKPT",
                   help="teacher checkpoint: a train-teacher run or an official Prithvi .pt "
                   "(default: pretrain one on the region)")  # fmt: skip
    p.add_argument("--preset", default=defaults.STUDENT_PRESET, choices=defaults.STUDENT_PRESETS,
                   help="student size")  # fmt: skip
    p.add_argument("--spectral-dim", type=int, default=defaults.SPECTRAL_DIM, metavar="K",
                   help="spectral components per pixel of the student's embedding and head "
                   "(0 = every band)")  # fmt: skip
    p.add_argument("--spectral-basis", default=defaults.SPECTRAL_BASIS, choices=defaults.SPECTRAL_BASES,
                   help="learn the spectral components from their PCA start, or keep them fixed "
                   "(the loss then runs on the components)")  # fmt: skip
    p.add_argument("--teacher-preset", default=None, choices=defaults.TEACHER_PRESETS,
                   help=f"teacher architecture (default: {defaults.PRETRAIN_TEACHER_PRESET} to "
                   f"pretrain, {defaults.OFFICIAL_TEACHER_PRESET} for a .pt)")  # fmt: skip
    p.add_argument("--steps", type=int, default=defaults.STEPS, metavar="N",
                   help="training steps for teacher and student")  # fmt: skip
    add_optimizer(p)
    p.add_argument("--seed", type=int, default=defaults.SEED, metavar="N", help="random seed")
    p.add_argument("--dask-address", default=None, metavar="ADDR",
                   help="dask scheduler tcp://host:port, or 'local' for a LocalCluster "
                   "(default: threads of this process)")  # fmt: skip
    p.set_defaults(handler=_pipeline)


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "serve",
        help="serve scheduled Prefect deployments from a schedules file (one machine)",
        description="Register one deployment per entry of the schedules file and run them from "
        "this process until interrupted (which pauses their schedules). For separate CPU and "
        "GPU machines use `hyperkd deploy` and Prefect workers instead.",
    )  # fmt: skip
    _add_schedules_argument(p)
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="max concurrent flow runs (default: no limit)")  # fmt: skip
    p.set_defaults(handler=_serve)


def _register_deploy(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "deploy",
        help="register scheduled deployments on Prefect work pools (CPU and GPU workers)",
        description="Register one deployment per entry of the schedules file on a work pool: "
        "ingest and tiles on the CPU pool, training and evaluation on the GPU pool (an entry's "
        "work_pool overrides). Start workers with `prefect worker start --pool NAME` on "
        "machines with hyperkd installed.",
    )  # fmt: skip
    _add_schedules_argument(p)
    p.add_argument("--cpu-pool", default=defaults.CPU_POOL, metavar="POOL",
                   help="work pool for ingest and tiles")  # fmt: skip
    p.add_argument("--gpu-pool", default=defaults.GPU_POOL, metavar="POOL",
                   help="work pool for training, evaluation and reports")  # fmt: skip
    p.set_defaults(handler=_deploy)


def _add_schedules_argument(parser: argparse.ArgumentParser) -> None:
    """``--schedules``: ``serve`` and ``deploy`` read the same file."""
    parser.add_argument("--schedules", required=True, metavar="FILE",
                        help="YAML file, see examples/schedules.yaml")  # fmt: skip
