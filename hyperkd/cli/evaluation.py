"""``hyperkd evaluate``, ``ablate``, ``downstream`` and ``report``: judging a pretraining run.

Each command builds one frozen config (:class:`hyperkd.model.train.config.EvaluateConfig`,
:class:`hyperkd.model.evaluate.ablate.AblationConfig`,
:class:`hyperkd.model.evaluate.downstream.DownstreamConfig`, :class:`hyperkd.model.report.page.ReportConfig`)
from its arguments and hands it to the model layer. Credentials for object stores come from the
environment (``AWS_*``), never from the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from hyperkd import defaults
from hyperkd.cli.common import (
    HelpFormatter,
    add_device,
    add_storage_options,
    progress_of_files,
    progress_of_steps,
    storage_options,
)
from hyperkd.cli.train import add_optimizer, add_out_or_run, resolve_run


def register(subparsers: argparse._SubParsersAction) -> None:
    # The order here is the order of ``hyperkd --help``.
    _register_evaluate(subparsers)
    _register_ablate(subparsers)
    _register_downstream(subparsers)
    _register_report(subparsers)


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser(
        "evaluate",
        help="PSNR, SSIM and SAM of a student run on a split",
        description="Mask a split's tiles (fixed seed), reconstruct them with a student run and "
        "write DIR/metrics.json with psnr, ssim and sam on reflectance scale.",
    )
    evaluate.add_argument(
        "--checkpoint", metavar="CKPT", help="student run directory (default: RUN/student)"
    )
    evaluate.add_argument(
        "--tiles", metavar="URL", help="tile store (default: the one RUN/run.json names)"
    )
    evaluate.add_argument("--split", default="test", metavar="SPLIT", help="default test")
    add_out_or_run(evaluate, "evaluate")
    evaluate.add_argument(
        "--masking", choices=defaults.MASKINGS, default="random", help="default random"
    )
    evaluate.add_argument(
        "--mask-ratio", type=float, default=0.75, metavar="F", help="default 0.75"
    )
    evaluate.add_argument("--batch-size", type=int, default=8, metavar="N", help="default 8")
    evaluate.add_argument("--seed", type=int, default=0, metavar="N", help="mask seed (default 0)")
    evaluate.add_argument(
        "--teacher", metavar="CKPT", help="also score this teacher in teacher space, same masks"
    )
    evaluate.add_argument("--teacher-preset", choices=defaults.TEACHER_PRESETS, default=defaults.OFFICIAL_TEACHER_PRESET,
                          help=f"architecture of a .pt teacher (default {defaults.OFFICIAL_TEACHER_PRESET})")  # fmt: skip
    add_device(evaluate)
    add_storage_options(evaluate)
    evaluate.set_defaults(handler=run_evaluate)


def _register_ablate(subparsers: argparse._SubParsersAction) -> None:
    ablate = subparsers.add_parser(
        "ablate",
        formatter_class=HelpFormatter,
        help="masking x loss ablation grid (+ no-teacher) at an equal budget, resumable",
        description="Train and evaluate every masking {random, gabor, wavelet} x loss {mse, mse+ssim, "
        "mse+ssim+kld} cell plus a no-teacher student with the same seeds and budget; writes "
        "OUT/ablation.csv and OUT/ablation.md. Finished cells are skipped on a rerun.",
    )
    ablate.add_argument(
        "--tiles", required=True, metavar="URL", help="tile store (path or fsspec URL)"
    )
    ablate.add_argument(
        "--teacher",
        default=None,
        metavar="CKPT",
        help="teacher run directory or Prithvi .pt (the +kld cells)",
    )
    ablate.add_argument(
        "--teacher-preset",
        default=defaults.OFFICIAL_TEACHER_PRESET,
        choices=defaults.TEACHER_PRESETS,
        help="architecture of an official .pt teacher",
    )
    ablate.add_argument("--out", required=True, metavar="DIR", help="ablation directory")
    ablate.add_argument("--preset", default=defaults.STUDENT_PRESET, choices=defaults.STUDENT_PRESETS,
                        help="student preset")  # fmt: skip
    ablate.add_argument("--steps", type=int, default=200, metavar="N",
                        help="optimizer steps per cell (default 200)")  # fmt: skip
    ablate.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="tiles per step (default 8)")  # fmt: skip
    ablate.add_argument("--lr", type=float, default=1e-3, metavar="LR",
                        help="peak learning rate, every cell (default 1e-3)")  # fmt: skip
    add_optimizer(ablate)
    ablate.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of every cell (default 0)")  # fmt: skip
    add_device(ablate)
    add_storage_options(ablate)
    ablate.set_defaults(handler=run_ablate)


def _register_downstream(subparsers: argparse._SubParsersAction) -> None:
    down = subparsers.add_parser(
        "downstream",
        formatter_class=HelpFormatter,
        help="linear probe + short fine-tune of a frozen encoder on a labelled tile store",
        description="Land cover, crop type or SOC from a student's encoder, against raw spectra, "
        "patch-mean spectra (the encoder's resolution, no learning), a randomly initialised "
        "encoder and the no-teacher student; writes OUT/downstream_<task>.json/.md.",
    )
    down.add_argument("--checkpoint", required=True, metavar="CKPT", help="student run directory")
    down.add_argument("--task", required=True, choices=("landcover", "crop", "soc"),
                      help="the label to predict")  # fmt: skip
    tiles = down.add_mutually_exclusive_group(required=True)
    tiles.add_argument("--tiles", metavar="URL", help="tile store holding the task's label")
    # The old spelling, kept working but not shown: --tiles is a tile store in every command.
    tiles.add_argument("--data", dest="tiles", help=argparse.SUPPRESS)
    down.add_argument("--out", required=True, metavar="DIR", help="where the results go")
    down.add_argument(
        "--finetune-steps",
        type=int,
        default=50,
        metavar="N",
        help="fine-tune steps per encoder (0 = probe only)",
    )
    _add_downstream_comparisons(down)
    down.add_argument(
        "--only",
        default=None,
        metavar="LABEL=CODES",
        help="use only pixels of these classes of another label, e.g. landcover=5 (SOC on bare soil)",
    )
    down.add_argument("--label-level", choices=("pixel", "patch"), default="pixel",
                      help="score each pixel's own label, or its patch's majority class / mean "
                      "(the encoder's resolution); default pixel")  # fmt: skip
    down.add_argument("--max-train-pixels", type=int, default=50_000, metavar="N",
                      help="labelled train pixels for the probes")  # fmt: skip
    down.add_argument("--max-eval-pixels", type=int, default=100_000, metavar="N",
                      help="labelled test pixels scored")  # fmt: skip
    down.add_argument("--batch-size", type=int, default=8, metavar="N", help="tiles per batch")
    down.add_argument("--seed", type=int, default=0, metavar="N", help="seed of samples and probes")
    add_device(down)
    add_storage_options(down)
    down.set_defaults(handler=run_downstream)


def _add_downstream_comparisons(down: argparse.ArgumentParser) -> None:
    """What the student's encoder is scored against, besides the baselines every run has."""
    base = down.add_mutually_exclusive_group()
    base.add_argument(
        "--baseline-checkpoint",
        default=None,
        metavar="CKPT",
        help="the no-teacher student's run directory",
    )
    base.add_argument(
        "--ablation",
        default=None,
        metavar="DIR",
        help="take the no-teacher student from DIR/cells/no-teacher",
    )
    down.add_argument(
        "--embeddings",
        default=None,
        metavar="URL",
        help="also probe an embeddings store of the tile store's cube (hyperkd embed)",
    )


def _register_report(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report",
        formatter_class=HelpFormatter,
        help="self-contained HTML (+ markdown) report of a run directory",
        description="Writes DIR/report.html (figures embedded), DIR/report.md and DIR/report_files/*.png; "
        "the run directory layout is documented in docs/run.md. DIR may also be a student run "
        "made by `hyperkd train`: its config.json names the tile store and the teacher.",
    )
    report.add_argument("--run", required=True, metavar="DIR",
                        help="run directory (docs/run.md) or a student run directory")  # fmt: skip
    report.add_argument("--n-tiles", type=int, default=3, metavar="N", help="tiles shown")
    report.add_argument("--n-pixels", type=int, default=4, metavar="N", help="sample spectra")
    report.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the masks shown")
    add_storage_options(report)
    report.set_defaults(handler=run_report)


def run_ablate(args: argparse.Namespace) -> int:
    from hyperkd.model.evaluate.ablate import AblationConfig, run_ablation

    cfg = AblationConfig(
        tiles=args.tiles,
        out=args.out,
        teacher=args.teacher,
        teacher_preset=args.teacher_preset,
        preset=args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        seed=args.seed,
        device=args.device,
        storage_options=storage_options(args.storage_options) or None,
    )
    from hyperkd.model.evaluate.ablate import grid

    cells = Path(cfg.out) / "cells"

    def finished() -> int:
        return sum(1 for _ in cells.glob("*/evaluate/metrics.json"))

    with progress_of_files(finished, len(grid()), "ablate", "cell"):
        run_ablation(cfg)
    print((Path(cfg.out) / "ablation.md").read_text(), end="")
    return 0


def run_downstream(args: argparse.Namespace) -> int:
    from hyperkd.model.evaluate.downstream import DownstreamConfig
    from hyperkd.model.evaluate.downstream import run_downstream as evaluate_task
    from hyperkd.model.evaluate.downstream_results import markdown_table

    baseline = args.baseline_checkpoint
    if args.ablation is not None:
        baseline = str(Path(args.ablation) / "cells" / "no-teacher" / "student")
        if not (Path(baseline) / "config.json").is_file():
            raise ValueError(
                f"{args.ablation} holds no finished no-teacher cell (cells/no-teacher)"
            )
    only = None
    if args.only is not None:
        name, _, codes = args.only.partition("=")
        with contextlib.suppress(ValueError):  # a code that is not an integer
            only = (name.strip(), tuple(int(c) for c in codes.split(",")))
        if only is None or not only[0]:
            raise ValueError(
                f"--only {args.only!r}: expected LABEL=CODE[,CODE...], e.g. landcover=5"
            )
    cfg = DownstreamConfig(
        checkpoint=args.checkpoint,
        task=args.task,
        data=args.tiles,
        out=args.out,
        finetune_steps=args.finetune_steps,
        baseline_checkpoint=baseline,
        embeddings=args.embeddings,
        max_train_pixels=args.max_train_pixels,
        max_eval_pixels=args.max_eval_pixels,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        only=only,
        storage_options=storage_options(args.storage_options) or None,
        label_level=args.label_level,
    )
    with progress_of_steps("downstream", "result") as advance:
        result = evaluate_task(cfg, progress=advance)
    print(markdown_table(result))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from hyperkd.model.report.page import ReportConfig, write_report

    options = storage_options(args.storage_options) or None
    adopt_student_run(Path(args.run))
    paths = write_report(
        ReportConfig(run=args.run, n_tiles=args.n_tiles, n_pixels=args.n_pixels, seed=args.seed,
                     storage_options=options)
    )  # fmt: skip
    print(f"report: {paths['html']} (markdown: {paths['markdown']})")
    return 0


def adopt_student_run(run: Path) -> None:
    """Give a student run directory made by ``hyperkd train`` the run layout the report reads.

    A folder with ``run.json`` is left alone. A student run (``config.json`` of kind
    ``student``) gets ``run.json`` naming the tile store and teacher its ``config.json``
    recorded, and ``student/`` holding links to its own ``config.json``, weights and
    ``metrics.jsonl`` (file links: a folder linking to itself would loop). Nothing of the
    run is changed.
    """
    config = _read(run / "config.json")
    if (run / "run.json").is_file() or config is None:
        return  # a run directory, or not a run at all (the report says which)
    if config.get("kind") != "student":
        raise ValueError(
            f"{run} is a {config.get('kind', 'unknown')} run: the report needs a student run "
            "or a run directory (docs/run.md)"
        )
    spec: dict[str, Any] = config.get("run") or {}

    def located(value: str | None) -> str | None:  # config.json holds paths relative to the run
        if value is None or "://" in value:
            return value
        return str((run / value).resolve())

    (run / "student").mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors", "metrics.jsonl"):
        link = run / "student" / name
        if (run / name).is_file() and not link.exists():
            link.symlink_to(Path("..") / name)
    manifest = {"tiles": located(spec.get("tiles")), "student": "student",
                "teacher": located(spec.get("teacher"))}  # fmt: skip
    (run / "run.json").write_text(json.dumps(manifest, indent=1))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _batches_with_progress(config: Any) -> dict[str, Any]:
    """The split's dataset and its batches (as ``evaluate`` would make them) behind a progress
    bar that appears with the first batch, after ``evaluate`` has checked its inputs."""
    import math

    from hyperkd.cli.common import progress_iter
    from hyperkd.model.data.loader import make_loader
    from hyperkd.model.train.runs import open_tiles

    dataset = open_tiles(config.tiles, config.split, config.storage_options)
    loader = make_loader(dataset, config.batch_size, shuffle=False, drop_last=False, num_workers=0)
    total = math.ceil(len(dataset) / config.batch_size)
    batches = progress_iter(loader, total, f"evaluate {config.split}", "batch")
    return {"dataset": dataset, "batches": batches}


def run_evaluate(args: argparse.Namespace) -> int:
    from hyperkd.model.evaluate.reconstruction import evaluate
    from hyperkd.model.nets.masking import Masking
    from hyperkd.model.train.config import EvaluateConfig

    resolve_run(args, "evaluate")
    config = EvaluateConfig(
        checkpoint=args.checkpoint,
        tiles=args.tiles,
        out=args.out,
        split=args.split,
        masking=Masking(args.masking, args.mask_ratio),
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        teacher=args.teacher,
        teacher_preset=args.teacher_preset,
        storage_options=storage_options(args.storage_options) or None,
    )
    result = evaluate(config, **_batches_with_progress(config))
    print(f"{result['n_tiles']} {args.split} tiles, masked patches (PSNR peak 1 / band range, dB):")
    rows = [("student", result), *result["baselines"].items()]
    if "teacher" in result:
        rows += [("teacher (6 bands)", result["teacher"])]
        rows += [(f"  {k} (6 bands)", v) for k, v in result["teacher"]["baselines"].items()]
    for name, m in rows:
        print(
            f"  {name:<22} PSNR {m['psnr']:.2f} / {m['psnr_range']:.2f}  SSIM {m['ssim']:.4f}  "
            f"SAM {m['sam']:.2f} deg  MSE(norm) {m['mse_norm']:.4f}"
        )
    print(f"written to {args.out}/metrics.json")
    return 0
