"""``hyperkd train-teacher`` and ``hyperkd train`` (``evaluate``: :mod:`hyperkd.cli.evaluation`).

Every training command writes ``DIR/model.safetensors`` + ``DIR/config.json`` (plus
``DIR/metrics.jsonl`` and ``DIR/checkpoints/``), so ``--teacher`` and ``--checkpoint`` accept a
run directory; ``--teacher`` also takes an official Prithvi ``.pt`` (read with
``torch.load(weights_only=True)``). Multi-process training: launch through ``torchrun``.
Credentials for object stores come from the environment, never from the command line.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from hyperkd import defaults
from hyperkd.cli.common import add_device, add_storage_options, storage_options

STUDENT_PRESETS = defaults.STUDENT_PRESETS
TEACHER_PRESETS = defaults.TEACHER_PRESETS
MASKINGS = defaults.MASKINGS
LOSSES = defaults.LOSSES


@dataclass(frozen=True)
class TrainCommand:
    """One ``hyperkd train``/``train-teacher`` invocation, as typed values."""

    command: str
    config: Any
    """A ``DistillConfig``, ``TeacherPretrainConfig`` or ``EvaluateConfig``."""


def _add_training_args(parser: argparse.ArgumentParser) -> None:
    # train-teacher and train both turn these into one TrainConfig (_train_config).
    _add_schedule_args(parser)
    _add_run_control_args(parser)


def add_optimizer(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--optimizer",
        choices=defaults.OPTIMIZERS,
        default=defaults.OPTIMIZER,
        help="adamw, or muon on the transformer blocks' matrices with adamw on the rest, at the "
        f"same lr and weight decay (default {defaults.OPTIMIZER})",
    )


def _add_schedule_args(parser: argparse.ArgumentParser) -> None:
    """How long the run is and how the optimizer steps: length, batch, seed, lr schedule."""
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, metavar="N", help="optimizer steps")
    length.add_argument("--epochs", type=int, metavar="N", help="passes over the train split")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        metavar="N",
        help="tiles per process and step (default 8)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of weights, order and masks (default 0)",
    )
    parser.add_argument(
        "--blr",
        type=float,
        default=1.5e-4,
        metavar="LR",
        help="base lr; lr = blr * effective batch / 256 (default 1.5e-4)",
    )
    parser.add_argument(
        "--lr", type=float, default=None, metavar="LR", help="absolute lr, overrides --blr"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.05,
        metavar="F",
        help="warm-up share of the steps (default 0.05)",
    )
    add_optimizer(parser)
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=0.05,
        metavar="F",
        help="weight decay of the matrices (default 0.05)",
    )
    parser.add_argument(
        "--clip-grad",
        type=float,
        default=1.0,
        metavar="NORM",
        help="max gradient norm, 0 = off (default 1.0)",
    )


def _add_run_control_args(parser: argparse.ArgumentParser) -> None:
    """Where and how the run executes: logging, checkpoints, resume, device, loaders, storage."""
    parser.add_argument(
        "--log-every",
        type=int,
        default=10,
        metavar="N",
        help="steps per metrics.jsonl line (default 10)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        metavar="N",
        help="steps per checkpoint (default 100)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model (default: on CUDA only)",
    )
    add_device(parser)
    parser.add_argument(
        "--num-workers", type=int, default=None, metavar="N", help="loader workers (default: cores)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_storage_options(parser)


def register(subparsers: argparse._SubParsersAction) -> None:
    # The order here is the order of ``hyperkd --help``.
    _register_train_teacher(subparsers)
    _register_train(subparsers)


def _register_train_teacher(subparsers: argparse._SubParsersAction) -> None:
    teacher = subparsers.add_parser(
        "train-teacher",
        help="MAE-pretrain the Prithvi architecture on the six-band teacher tiles",
        description="Pretrain a Prithvi MAE on a tile store's teacher bands, for runs without "
        "the official weights. Writes DIR/model.safetensors in Prithvi's checkpoint layout.",
    )
    teacher.add_argument("--tiles", required=True, metavar="URL", help="tile store")
    add_out_or_run(teacher, "teacher")
    teacher.add_argument("--preset", choices=TEACHER_PRESETS, default=defaults.PRETRAIN_TEACHER_PRESET,
                         help=f"architecture (default {defaults.PRETRAIN_TEACHER_PRESET})")  # fmt: skip
    _add_mask_ratio(teacher)
    _add_training_args(teacher)
    teacher.set_defaults(handler=run_train_teacher)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train the student MAE, distilled from a teacher",
        description="Train the hyperspectral student MAE on a tile store with guided masking and "
        "the MSE + SSIM + KLD loss; the teacher is a train-teacher run or an official Prithvi .pt.",
    )
    train.add_argument("--tiles", required=True, metavar="URL", help="tile store")
    add_out_or_run(train, "student")
    train.add_argument(
        "--teacher",
        metavar="CKPT",
        help="teacher run directory or Prithvi .pt (needed for kld); random:<preset> for a "
        "randomly initialised teacher (control)",
    )
    train.add_argument("--teacher-preset", choices=TEACHER_PRESETS, default=defaults.OFFICIAL_TEACHER_PRESET,
                       help=f"architecture of a .pt teacher (default {defaults.OFFICIAL_TEACHER_PRESET})")  # fmt: skip
    train.add_argument("--preset", choices=STUDENT_PRESETS, default=defaults.STUDENT_PRESET,
                       help=f"student size (default {defaults.STUDENT_PRESET})")  # fmt: skip
    train.add_argument("--spectral-dim", type=int, default=defaults.SPECTRAL_DIM, metavar="K",
                       help="factorise the student's embedding and head through K spectral "
                       f"components per pixel, PCA start (default {defaults.SPECTRAL_DIM} = every band)")  # fmt: skip
    train.add_argument("--spectral-basis", choices=defaults.SPECTRAL_BASES, default=defaults.SPECTRAL_BASIS,
                       help="with --spectral-dim: learn the components from their PCA start, or keep "
                       "them fixed at the PCA (the loss then runs on the K components, ~4x cheaper "
                       f"steps; default {defaults.SPECTRAL_BASIS})")  # fmt: skip
    _add_masking_args(train)
    _add_loss_args(train)
    _add_training_args(train)
    train.set_defaults(handler=run_train)


def _add_mask_ratio(parser: argparse.ArgumentParser) -> None:
    """One declaration for train-teacher and train, which mask the same share by default."""
    parser.add_argument(
        "--mask-ratio",
        type=float,
        default=0.75,
        metavar="F",
        help="masked share of patches (default 0.75)",
    )


def _add_masking_args(train: argparse.ArgumentParser) -> None:
    """Which patches the student must reconstruct."""
    train.add_argument("--masking", choices=MASKINGS, default="gabor", help="default gabor")
    _add_mask_ratio(train)
    train.add_argument(
        "--sample-masking", action="store_true", help="draw guided masks with a temperature"
    )
    train.add_argument(
        "--mask-temperature",
        type=float,
        default=1.0,
        metavar="T",
        help="guided sampling temperature (default 1)",
    )


def _add_loss_args(train: argparse.ArgumentParser) -> None:
    """The loss and the weights of its terms."""
    train.add_argument(
        "--loss", choices=LOSSES, default=defaults.LOSS, help=f"default {defaults.LOSS}"
    )
    train.add_argument(
        "--lambda",
        dest="recon_weight",
        type=float,
        default=1.0,
        metavar="W",
        help="weight of MSE + (1 - SSIM)",
    )
    train.add_argument(
        "--beta", dest="kd_weight", type=float, default=1.0, metavar="W", help="weight of the KLD"
    )
    train.add_argument(
        "--tau",
        dest="temperature",
        type=float,
        default=1.0,
        metavar="T",
        help="KLD softmax temperature",
    )


def add_out_or_run(parser: argparse.ArgumentParser, part: str) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="DIR", help="output directory")
    where.add_argument(
        "--run",
        metavar="DIR",
        help=f"a run directory (docs/run.md): write DIR/{part} and DIR/run.json",
    )


def resolve_run(args: argparse.Namespace, part: str) -> None:
    """``--run DIR``: ``--out`` becomes ``DIR/<part>``; ``evaluate`` also takes its checkpoint
    (``DIR/student``) and tile store (from ``DIR/run.json``) from the run directory."""
    import json
    from pathlib import Path

    if args.run is None:
        if part == "evaluate" and (args.checkpoint is None or args.tiles is None):
            raise ValueError("evaluate needs --checkpoint and --tiles (or --run DIR)")
        return
    run = Path(args.run)
    args.out = str(run / part)
    if part != "evaluate":
        return
    manifest = run / "run.json"
    if args.tiles is None:
        if not manifest.is_file():
            raise ValueError(f"{run} has no run.json naming the tile store: pass --tiles")
        args.tiles = json.loads(manifest.read_text())["tiles"]
    args.checkpoint = args.checkpoint or str(run / "student")


def _write_manifest(args: argparse.Namespace) -> None:
    """``--run DIR``: ``DIR/run.json`` names the tile store, the student and the teacher."""
    import json
    from pathlib import Path

    from hyperkd.model.train.runs import write_run_manifest

    run = Path(args.run)
    old = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    student = str(run / "student") if (run / "student" / "config.json").is_file() else None
    teacher = getattr(args, "teacher", None) or old.get("teacher")
    if (run / "teacher" / "config.json").is_file() and teacher is None:
        teacher = str(run / "teacher")
    write_run_manifest(run, tiles=args.tiles, student=student, teacher=teacher)


def _train_config(args: argparse.Namespace) -> Any:
    from hyperkd.model.train.config import OptimConfig, TrainConfig

    return TrainConfig(
        out=args.out,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        optim=OptimConfig(
            optimizer=args.optimizer,
            blr=args.blr,
            lr=args.lr,
            warmup_fraction=args.warmup,
            weight_decay=args.weight_decay,
            clip_grad=args.clip_grad or None,
        ),
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        compile=args.compile,
        device=args.device,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )


def _fit(run: Any, config: Any) -> None:
    from hyperkd.cli import CliError
    from hyperkd.model.train.trainer import NonFiniteLossError

    try:
        run(config)
    except NonFiniteLossError as exc:
        raise CliError(str(exc)) from exc


def run_train_teacher(args: argparse.Namespace) -> int:
    from hyperkd.model.train.config import TeacherPretrainConfig
    from hyperkd.model.train.runs import run_teacher_pretrain

    resolve_run(args, "teacher")
    command = TrainCommand(
        "train-teacher",
        TeacherPretrainConfig(
            tiles=args.tiles,
            train=_train_config(args),
            preset=args.preset,
            mask_ratio=args.mask_ratio,
            storage_options=storage_options(args.storage_options) or None,
        ),
    )
    _fit(run_teacher_pretrain, command.config)
    if args.run is not None:
        _write_manifest(args)
    print(f"teacher written to {args.out}/model.safetensors")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from hyperkd.model.nets.masking import Masking
    from hyperkd.model.train.config import DistillConfig
    from hyperkd.model.train.losses import LossConfig
    from hyperkd.model.train.runs import run_distill

    resolve_run(args, "student")
    if "kld" in args.loss and not args.teacher:
        raise ValueError(
            f"--loss {args.loss} needs --teacher (a train-teacher run or a Prithvi .pt)"
        )
    command = TrainCommand(
        "train",
        DistillConfig(
            tiles=args.tiles,
            train=_train_config(args),
            teacher=args.teacher,
            teacher_preset=args.teacher_preset,
            preset=args.preset,
            masking=Masking(
                args.masking, args.mask_ratio, args.sample_masking, args.mask_temperature
            ),
            loss=LossConfig(args.loss, args.recon_weight, args.kd_weight, args.temperature),
            storage_options=storage_options(args.storage_options) or None,
            spectral_dim=args.spectral_dim,
            spectral_basis=args.spectral_basis,
        ),
    )
    _fit(run_distill, command.config)
    if args.run is not None:
        _write_manifest(args)
    print(f"student written to {args.out}/model.safetensors")
    return 0
