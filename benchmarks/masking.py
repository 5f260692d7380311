"""Masking comparison on a tile store: is guided masking + HyperKD's loss no worse than MAE?

Trains each student for the same steps from the same seeds (through the trainer's library
API, as ``hyperkd train`` does), scores every run on the test split with several random-mask
draws and once with Gabor masks (as ``hyperkd evaluate`` does), and prints mean ± sd over the
training seeds plus each student's difference to the first one, paired by seed. Runs are kept
in ``--out`` and reused, so an interrupted comparison picks up where it stopped.

Students (``--students``, the first is the baseline):

* ``random-mse``: MAE's random masking, MSE (the issue #6 baseline);
* ``gabor-kld``: the 75 % most Gabor-significant patches masked, MSE + SSIM + KLD;
* ``gabor-sample-kld``: Gabor masks drawn with a temperature (``sample``), MSE + SSIM + KLD;
* ``random-kld`` and ``gabor-sample-mse``: the ablations that split masking from loss.

    .venv/bin/python benchmarks/masking.py --tiles demo-out/pipeline/demo/tiles-*.zarr \\
        --teacher demo-out/pipeline/demo/teachers/* --out /tmp/masking [--seeds 0 1 2]

The last line is ``<student>/psnr=<mean dB> ...`` (random masks) for every student.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Student:
    masking: str
    sample: bool
    loss: str


STUDENTS = {
    "random-mse": Student("random", False, "mse"),
    "gabor-kld": Student("gabor", False, "mse+ssim+kld"),
    "gabor-sample-kld": Student("gabor", True, "mse+ssim+kld"),
    "random-kld": Student("random", False, "mse+ssim+kld"),
    "gabor-sample-mse": Student("gabor", True, "mse"),
}


def train(args: argparse.Namespace, student: Student, seed: int, out: Path) -> None:
    from hyperkd.model.nets.masking import Masking
    from hyperkd.model.train.checkpoint import latest_checkpoint
    from hyperkd.model.train.config import DistillConfig, OptimConfig, TrainConfig
    from hyperkd.model.train.losses import LossConfig
    from hyperkd.model.train.runs import run_distill

    if (out / "model.safetensors").is_file():
        return
    config = DistillConfig(
        tiles=args.tiles,
        train=TrainConfig(
            out=str(out),
            steps=args.steps,
            batch_size=args.batch_size,
            seed=seed,
            optim=OptimConfig(lr=args.lr),
            resume=latest_checkpoint(out) is not None,
            device="cpu",
            progress=False,
        ),
        teacher=args.teacher if "kld" in student.loss else None,
        teacher_preset=args.teacher_preset,
        preset="tiny",
        masking=Masking(student.masking, sample=student.sample),
        loss=LossConfig(student.loss),
    )
    run_distill(config)


def score(args: argparse.Namespace, run: Path, masking: str, seed: int) -> dict[str, float]:
    from hyperkd.model.evaluate.reconstruction import evaluate
    from hyperkd.model.nets.masking import Masking
    from hyperkd.model.train.config import EvaluateConfig

    out = run.parent / f"{run.name}-evaluate-{masking}-{seed}"  # never inside the run it reads
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    config = EvaluateConfig(
        checkpoint=str(run),
        tiles=args.tiles,
        out=str(out),
        split="test",
        masking=Masking(masking),
        seed=seed,
        device="cpu",
    )
    return evaluate(config)


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", required=True, help="tile store (the demo's)")
    parser.add_argument("--teacher", required=True, help="teacher run directory")
    parser.add_argument("--teacher-preset", default="tiny")
    parser.add_argument("--out", required=True, type=Path, help="runs are kept and reused here")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS)[:3], choices=STUDENTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--eval-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    # psnr[name][seed]: mean over the random-mask draws; gabor[name][seed]: Gabor masks.
    psnr: dict[str, dict[int, float]] = {}
    gabor: dict[str, dict[int, float]] = {}
    other: dict[str, dict[str, list[float]]] = {}
    baselines: dict[str, tuple[float, float]] = {}  # same masks for every student
    for name in args.students:
        psnr[name], gabor[name], other[name] = {}, {}, {"ssim": [], "sam": []}
        for seed in args.seeds:
            run = args.out / f"{name}-s{seed}"
            train(args, STUDENTS[name], seed, run)
            draws = [score(args, run, "random", e) for e in args.eval_seeds]
            psnr[name][seed] = statistics.mean(d["psnr"] for d in draws)
            for key in ("ssim", "sam"):
                other[name][key].append(statistics.mean(d[key] for d in draws))
            on_gabor = score(args, run, "gabor", 0)
            gabor[name][seed] = on_gabor["psnr"]
            baselines = {
                k: (statistics.mean(d["baselines"][k]["psnr"] for d in draws), v["psnr"])
                for k, v in on_gabor["baselines"].items()
            }
            print(f"{name} seed {seed}: PSNR {psnr[name][seed]:.3f} dB", flush=True)

    base = args.students[0]
    print(f"\n{len(args.seeds)} seeds x {len(args.eval_seeds)} random-mask draws, test split")
    print(
        "| student | PSNR random masks | SSIM | SAM (deg) | PSNR Gabor masks | vs first, paired |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.students:
        diff = [psnr[name][s] - psnr[base][s] for s in args.seeds]
        print(
            f"| {name} | {mean_sd(list(psnr[name].values()))} "
            f"| {statistics.mean(other[name]['ssim']):.3f} "
            f"| {statistics.mean(other[name]['sam']):.2f} "
            f"| {mean_sd(list(gabor[name].values()))} | {mean_sd(diff)} |"
        )
    for name, (on_random, on_gabor) in baselines.items():
        print(f"| baseline: {name} | {on_random:.2f} | | | {on_gabor:.2f} | |")
    print(" ".join(f"{n}/psnr={statistics.mean(psnr[n].values()):.3f}" for n in args.students))


if __name__ == "__main__":
    main()
