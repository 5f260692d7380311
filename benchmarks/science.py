"""HyperKD's claims with controls, on one tile store: three arms, paired by seed, resumable.

* **A, masking** (all MSE): ``random``; Gabor masks sampled at temperatures 3, 1 and 0.3
  (``gabor-t3``, ``gabor-t1``, ``gabor-t0.3``); the deterministic top-r (``gabor-top``).
  Reference: ``random``.
* **B, distillation** (random masking): ``mse+ssim`` against ``mse+ssim+kld`` from the trained
  teacher (``kld-teacher``) and from a randomly initialised one (``kld-random``, the control
  that tells knowledge apart from regularisation). Reference: ``mse+ssim``.
* **C, full HyperKD**: Gabor masks sampled at temperature 1, MSE + SSIM + KLD, trained
  teacher (``hyperkd``). Reference: ``random`` of arm A.

``--recon-loss mse`` drops the SSIM term from arms B and C (``mse`` against ``mse+kld``; B's
reference is then arm A's ``random``): with a fixed spectral basis every student then keeps
the component loss, whose CPU step is about 14x cheaper than one with SSIM over 218 bands, so
the hour buys students near the demo's.

Every student trains the same preset, steps, batch, optimizer, learning rate and spectral
factorisation (the demo's by default) from the same seeds
(weights, order, masks) through the trainer's library API, and is scored once on the test
split (``val`` with ``--split val``) with ``hyperkd evaluate``'s code: the same random masks for
every student, with the baselines (train mean, visible-patch mean, interpolation) on those
masks. Each row gives the mean over seeds; each difference is paired by seed (mean ± standard
error over seeds) and bootstrapped over test tiles (95 % interval of the mean difference,
tiles resampled, seeds pooled). Guided rows also give the share of their masked patches that
lie in the top-r set (1 = deterministic, 0.75 = random).

Runs live in ``--out/<student>_<loss>/seed<N>`` and finished ones are reused, so an
interrupted run picks up where it stopped; a run folder made with other settings (steps,
batch, tiles, teacher, ...) is refused instead of reused. Nothing here is tuned on the test split.

    .venv/bin/python benchmarks/science.py --tiles T.zarr --teacher TEACHER_RUN --out /tmp/science \\
        --steps 300 --seeds 0 1 2 [--arms A B C] [--md table.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperkd import defaults


@dataclass(frozen=True)
class Student:
    arm: str
    masking: str
    loss: str
    sample: bool = False
    temperature: float = 1.0
    teacher: str = "none"
    """``none``, ``trained`` (``--teacher``) or ``random`` (``random:<preset>``)."""


STUDENTS = {
    "random": Student("A", "random", "mse"),
    "gabor-t3": Student("A", "gabor", "mse", True, 3.0),
    "gabor-t1": Student("A", "gabor", "mse", True, 1.0),
    "gabor-t0.3": Student("A", "gabor", "mse", True, 0.3),
    "gabor-top": Student("A", "gabor", "mse"),
    "mse+ssim": Student("B", "random", "mse+ssim"),
    "kld-teacher": Student("B", "random", "mse+ssim+kld", teacher="trained"),
    "kld-random": Student("B", "random", "mse+ssim+kld", teacher="random"),
    "hyperkd": Student("C", "gabor", "mse+ssim+kld", True, 1.0, "trained"),
}
REFERENCE = {"A": "random", "B": "mse+ssim", "C": "random"}
BASELINES = ("train_mean", "visible_mean", "interpolation")


def students(recon_loss: str) -> dict[str, Student]:
    """The students of every arm, arms B and C with ``recon_loss`` (``mse+ssim`` or ``mse``)."""
    if recon_loss == "mse+ssim":
        return STUDENTS
    out = {n: s for n, s in STUDENTS.items() if n != "mse+ssim"}
    for name in ("kld-teacher", "kld-random", "hyperkd"):
        out[name] = dataclasses.replace(out[name], loss=f"{recon_loss}+kld")
    return out


def references(recon_loss: str) -> dict[str, str]:
    return REFERENCE if recon_loss == "mse+ssim" else {**REFERENCE, "B": "random"}


def _teacher(args: argparse.Namespace, student: Student) -> str | None:
    if student.teacher == "trained":
        return args.teacher
    if student.teacher == "random":
        return f"random:{args.random_teacher_preset}"
    return None


class OtherSettingsError(ValueError):
    """A run folder holds a run made with other settings."""


def settings(args: argparse.Namespace, student: Student) -> dict[str, Any]:
    """What a finished run was trained and scored with; a resumed run must match it."""
    keys = ("tiles", "preset", "steps", "batch_size", "lr", "spectral_dim", "spectral_basis",
            "mask_ratio", "teacher", "teacher_preset", "random_teacher_preset", "eval_seed")  # fmt: skip
    return (
        {k: getattr(args, k) for k in keys}
        | defaults.optimizer_setting(args.optimizer)
        | {"student": dataclasses.asdict(student)}
    )


def _same_settings(out: Path, wanted: dict[str, Any]) -> None:
    path = out / "settings.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != wanted:
            changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
            raise OtherSettingsError(f"{out} holds a run with other {', '.join(changed)}")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=1) + "\n")


def run_one(args: argparse.Namespace, name: str, seed: int) -> dict[str, Any]:
    """Train (unless finished) and evaluate (unless scored) one student; its metrics.json."""
    from hyperkd.model.nets.masking import Masking
    from hyperkd.model.train.checkpoint import latest_checkpoint
    from hyperkd.model.train.config import DistillConfig, EvaluateConfig, OptimConfig, TrainConfig
    from hyperkd.model.train.losses import LossConfig
    from hyperkd.model.train.runs import run_distill

    s = students(args.recon_loss)[name]
    out = Path(args.out) / f"{name}_{s.loss}" / f"seed{seed}"
    _same_settings(out, settings(args, s))
    scored = out / "evaluate" / f"metrics_{args.split}.json"
    if scored.is_file():
        return json.loads(scored.read_text())
    run = out / "student"
    if not (run / "model.safetensors").is_file():
        t0 = time.perf_counter()
        run_distill(
            DistillConfig(
                tiles=args.tiles,
                train=TrainConfig(
                    out=str(run), steps=args.steps, batch_size=args.batch_size, seed=seed,
                    optim=OptimConfig(lr=args.lr, optimizer=args.optimizer), log_every=max(1, args.steps // 10),
                    checkpoint_every=max(1, args.steps // 2), resume=latest_checkpoint(run) is not None,
                    device=args.device, compile=args.compile, progress=False,
                ),
                teacher=_teacher(args, s),
                teacher_preset=args.teacher_preset,
                preset=args.preset,
                masking=Masking(s.masking, args.mask_ratio, s.sample, s.temperature),
                loss=LossConfig(s.loss),
                spectral_dim=args.spectral_dim,
                spectral_basis=args.spectral_basis,
            )
        )  # fmt: skip
        (out / "train_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    from hyperkd.model.evaluate.reconstruction import evaluate

    result = evaluate(
        EvaluateConfig(
            checkpoint=str(run), tiles=args.tiles, out=str(out / "evaluate"), split=args.split,
            seed=args.eval_seed, device=args.device,
        )
    )  # fmt: skip
    scored.write_text(json.dumps(result))
    return result


def overlap(args: argparse.Namespace, name: str) -> float | None:
    """Share of the student's training masks inside the top-r set, on the scored tiles."""
    s = students(args.recon_loss)[name]
    if s.masking == "random" and name != "random":
        return None
    import torch

    from hyperkd.model.data.dataset import TileDataset
    from hyperkd.model.nets.masking import Masking, top_r_overlap

    ds = TileDataset(args.tiles, split=args.split)
    sig = torch.stack([ds[i]["significance_gabor"] for i in range(len(ds))])
    masking = Masking(s.masking, args.mask_ratio, s.sample, s.temperature)
    return top_r_overlap(masking, sig, generator=torch.Generator().manual_seed(0))


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error of the paired differences ``a - b`` (SE nan for one pair)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return statistics.fmean(d), se


def bootstrap(a: list[list[float]], b: list[list[float]], n: int = 2000) -> tuple[float, float]:
    """95 % interval of the mean per-tile difference ``a - b``, tiles resampled (seeds pooled).

    ``a``, ``b``: per seed, per tile values on the same tiles and masks.
    """
    diffs = [[x - y for x, y in zip(sa, sb, strict=True)] for sa, sb in zip(a, b, strict=True)]
    tiles = len(diffs[0])
    rng = random.Random(0)
    means = []
    for _ in range(n):
        pick = [rng.randrange(tiles) for _ in range(tiles)]
        vals = [d[i] for d in diffs for i in pick if not math.isnan(d[i])]
        means.append(statistics.fmean(vals))
    means.sort()
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def table(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> str:
    key = args.metric
    first = next(iter(results.values()))[0]
    lines = [
        f"Masked-patch {key} on the {args.split} split ({first['n_tiles']} tiles, random masks, "
        f"seed {args.eval_seed}); mean over seeds {args.seeds}; differences paired by seed "
        "(± SE) and bootstrapped over tiles (95 %).",
        "",
        f"| arm | student | loss | {key} | Δ vs reference (± SE) | bootstrap 95 % | Δ vs interpolation (± SE) | top-r overlap |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for base in BASELINES:
        v = statistics.fmean(r["baselines"][base][key] for r in first_seed_runs(results))
        lines.append(f"| - | baseline: {base} | | {v:.2f} | | | | |")
    for name, runs in results.items():
        s = students(args.recon_loss)[name]
        ref = references(args.recon_loss)[s.arm]
        scores = [r[key] for r in runs]
        interp = [r["baselines"]["interpolation"][key] for r in runs]
        vs_i = "{:+.2f} ± {:.2f}".format(*paired(scores, interp))
        vs_ref, boot = "(reference)", ""
        if ref != name and ref in results:
            vs_ref = "{:+.2f} ± {:.2f}".format(*paired(scores, [r[key] for r in results[ref]]))
            lo, hi = bootstrap(
                [r["per_tile"]["model"][key] for r in runs],
                [r["per_tile"]["model"][key] for r in results[ref]],
            )
            boot = f"[{lo:+.2f}, {hi:+.2f}]"
        ov = overlap(args, name)
        lines.append(
            f"| {s.arm} | {name} | {s.loss} | {statistics.fmean(scores):.2f} | {vs_ref} | {boot} | "
            f"{vs_i} | {'' if ov is None else f'{ov:.2f}'} |"
        )
    return "\n".join(lines)


def first_seed_runs(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return next(iter(results.values()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", required=True)
    p.add_argument("--teacher", required=True, help="trained teacher run directory or .pt")
    p.add_argument("--teacher-preset", default="prithvi-eo-1.0-100m")
    p.add_argument("--random-teacher-preset", default="tiny")
    p.add_argument("--out", required=True)
    p.add_argument("--arms", nargs="+", default=["A", "B", "C"], choices=["A", "B", "C"])
    p.add_argument("--students", nargs="+", default=None, choices=sorted(STUDENTS))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=defaults.DEMO_LR)
    p.add_argument("--optimizer", default=defaults.DEMO_OPTIMIZER, choices=defaults.OPTIMIZERS,
                   help="the demo's (muon) or adamw (the arms of sessions 5 and 8, at --lr 2e-3)")  # fmt: skip
    p.add_argument("--spectral-dim", type=int, default=defaults.DEMO_SPECTRAL_DIM)
    p.add_argument("--spectral-basis", default=defaults.SPECTRAL_BASIS, choices=defaults.SPECTRAL_BASES,
                   help="learned (the recorded arms) or fixed (the demo's: ~4x cheaper MSE steps)")  # fmt: skip
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument(
        "--recon-loss", default="mse+ssim", choices=["mse+ssim", "mse"],
        help="reconstruction terms of arms B and C (default: the paper's mse+ssim)",
    )  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--split", default="test")
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--metric", default="psnr", choices=["psnr", "psnr_range", "mse_norm"])
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--md", default=None, help="also write the table here")
    args = p.parse_args()
    roster, reference = students(args.recon_loss), references(args.recon_loss)
    names = args.students or [n for n, s in roster.items() if s.arm in args.arms]
    if absent := sorted(set(names) - set(roster)):
        p.error(f"no student {absent} with --recon-loss {args.recon_loss}")
    names += [reference[roster[n].arm] for n in names]  # every arm needs its reference
    names = [n for n in roster if n in names]  # arm order
    t0 = time.perf_counter()
    try:
        results = {n: [run_one(args, n, seed) for seed in args.seeds] for n in names}
    except OtherSettingsError as e:
        p.error(f"{e}; choose another --out")
    text = table(args, results)
    print(text)
    print(f"\nwall {time.perf_counter() - t0:.0f} s")
    if args.md:
        Path(args.md).write_text(text + "\n")


if __name__ == "__main__":
    main()
