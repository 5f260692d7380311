"""``hyperkd train-teacher``, ``hyperkd train`` and ``hyperkd evaluate``.

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

STUDENT_PRESETS = ("tiny", "small", "base")
TEACHER_PRESETS = ("tiny", "prithvi-eo-1.0-100m", "prithvi-eo-2.0-300m")
MASKINGS = ("random", "gabor", "wavelet")
LOSSES = ("mse", "mse+ssim", "mse+ssim+kld")


@dataclass(frozen=True)
class TrainCommand:
    """One ``hyperkd train``/``train-teacher``/``evaluate`` invocation, as typed values."""

    command: str
    config: Any
    """A ``DistillConfig``, ``TeacherPretrainConfig`` or ``EvaluateConfig``."""


def _add_training_args(parser: argparse.ArgumentParser) -> None:
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
        help="base lr; lr = blr * effective batch / 256 (default 1.5e-4)",
    )
    parser.add_argument("--lr", type=float, default=None, help="absolute lr, overrides --blr")
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.05,
        metavar="F",
        help="warm-up share of the steps (default 0.05)",
    )
    parser.add_argument(
        "--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)"
    )
    parser.add_argument(
        "--clip-grad", type=float, default=1.0, help="max gradient norm, 0 = off (default 1.0)"
    )
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
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="default: CUDA when present",
    )
    parser.add_argument(
        "--num-workers", type=int, default=None, metavar="N", help="loader workers (default: cores)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    teacher = subparsers.add_parser(
        "train-teacher",
        help="MAE-pretrain the Prithvi architecture on the six-band teacher tiles",
        description="Pretrain a Prithvi MAE on a tile store's teacher bands, for runs without "
        "the official weights. Writes DIR/model.safetensors in Prithvi's checkpoint layout.",
    )
    teacher.add_argument("--tiles", required=True, metavar="URL", help="tile store")
    teacher.add_argument("--out", required=True, metavar="DIR", help="run directory")
    teacher.add_argument(
        "--preset", choices=TEACHER_PRESETS, default="tiny", help="architecture (default tiny)"
    )
    teacher.add_argument(
        "--mask-ratio", type=float, default=0.75, help="masked share of patches (default 0.75)"
    )
    _add_training_args(teacher)
    teacher.set_defaults(handler=run_train_teacher)

    train = subparsers.add_parser(
        "train",
        help="train the student MAE, distilled from a teacher",
        description="Train the hyperspectral student MAE on a tile store with guided masking and "
        "the MSE + SSIM + KLD loss; the teacher is a train-teacher run or an official Prithvi .pt.",
    )
    train.add_argument("--tiles", required=True, metavar="URL", help="tile store")
    train.add_argument("--out", required=True, metavar="DIR", help="run directory")
    train.add_argument(
        "--teacher", metavar="CKPT", help="teacher run directory or Prithvi .pt (needed for kld)"
    )
    train.add_argument("--teacher-preset", choices=TEACHER_PRESETS, default="prithvi-eo-1.0-100m",
                       help="architecture of a .pt teacher (default prithvi-eo-1.0-100m)")  # fmt: skip
    train.add_argument(
        "--preset", choices=STUDENT_PRESETS, default="tiny", help="student size (default tiny)"
    )
    train.add_argument("--masking", choices=MASKINGS, default="gabor", help="default gabor")
    train.add_argument(
        "--mask-ratio", type=float, default=0.75, help="masked share of patches (default 0.75)"
    )
    train.add_argument(
        "--sample-masking", action="store_true", help="draw guided masks with a temperature"
    )
    train.add_argument(
        "--mask-temperature",
        type=float,
        default=1.0,
        help="guided sampling temperature (default 1)",
    )
    train.add_argument(
        "--loss", choices=LOSSES, default="mse+ssim+kld", help="default mse+ssim+kld"
    )
    train.add_argument(
        "--lambda", dest="recon_weight", type=float, default=1.0, help="weight of MSE + (1 - SSIM)"
    )
    train.add_argument(
        "--beta", dest="kd_weight", type=float, default=1.0, help="weight of the KLD"
    )
    train.add_argument(
        "--tau", dest="temperature", type=float, default=1.0, help="KLD softmax temperature"
    )
    _add_training_args(train)
    train.set_defaults(handler=run_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="PSNR, SSIM and SAM of a student run on a split",
        description="Mask a split's tiles (fixed seed), reconstruct them with a student run and "
        "write DIR/metrics.json with psnr, ssim and sam on reflectance scale.",
    )
    evaluate.add_argument(
        "--checkpoint", required=True, metavar="CKPT", help="student run directory"
    )
    evaluate.add_argument("--tiles", required=True, metavar="URL", help="tile store")
    evaluate.add_argument("--split", default="test", help="default test")
    evaluate.add_argument("--out", required=True, metavar="DIR", help="where metrics.json goes")
    evaluate.add_argument("--masking", choices=MASKINGS, default="random", help="default random")
    evaluate.add_argument("--mask-ratio", type=float, default=0.75, help="default 0.75")
    evaluate.add_argument("--batch-size", type=int, default=8, metavar="N", help="default 8")
    evaluate.add_argument("--seed", type=int, default=0, metavar="N", help="mask seed (default 0)")
    evaluate.add_argument(
        "--teacher", metavar="CKPT", help="also score this teacher in teacher space, same masks"
    )
    evaluate.add_argument("--teacher-preset", choices=TEACHER_PRESETS, default="prithvi-eo-1.0-100m",
                          help="architecture of a .pt teacher (default prithvi-eo-1.0-100m)")  # fmt: skip
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    evaluate.set_defaults(handler=run_evaluate)


def _train_config(args: argparse.Namespace) -> Any:
    from hyperkd.model.train.config import OptimConfig, TrainConfig

    return TrainConfig(
        out=args.out,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        optim=OptimConfig(
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

    command = TrainCommand(
        "train-teacher",
        TeacherPretrainConfig(
            tiles=args.tiles,
            train=_train_config(args),
            preset=args.preset,
            mask_ratio=args.mask_ratio,
        ),
    )
    _fit(run_teacher_pretrain, command.config)
    print(f"teacher written to {args.out}/model.safetensors")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from hyperkd.model.nets.masking import Masking
    from hyperkd.model.train.config import DistillConfig
    from hyperkd.model.train.losses import LossConfig
    from hyperkd.model.train.runs import run_distill

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
        ),
    )
    _fit(run_distill, command.config)
    print(f"student written to {args.out}/model.safetensors")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from hyperkd.model.evaluate.reconstruction import evaluate
    from hyperkd.model.nets.masking import Masking
    from hyperkd.model.train.config import EvaluateConfig

    command = TrainCommand(
        "evaluate",
        EvaluateConfig(
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
        ),
    )
    result = evaluate(command.config)
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
