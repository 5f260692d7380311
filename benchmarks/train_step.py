"""Training-step throughput: a HyperKD step (teacher + student, forward + backward) per preset.

For each student preset the timed step is the real one from :class:`DistillationTask`:
gabor masking, the MSE + SSIM + KLD loss with the frozen teacher's forward pass, backward and an
AdamW update. The baseline, timed in the same process on the same inputs, is the plain MAE
step of the same student (random masking, MSE, no teacher), so the ratio is the cost of
distillation. Medians of ``--repeats`` timings of ``--steps`` steps each, after warm-up, baseline and
treatment alternating.

Teachers: ``tiny`` -> the tiny Prithvi-structured teacher, ``small``/``base`` -> the
Prithvi-EO-1.0-100M architecture (random weights; speed does not depend on them).

On CUDA the step runs under bf16 autocast and MFU is reported: model FLOPs of one step,
counted with ``torch.utils.flop_counter``, times steps/s, over the GPU's dense bf16 peak
(``--peak-tflops``, or looked up from the device name). Model FLOPs are the networks' (student,
teacher, projection): the SSIM term's blur is also a matrix product (a banded (T, T) matrix,
T multiply-adds per output where the 11-tap kernel needs 11), so its counted FLOPs are
subtracted rather than credited as useful work.

Fed training (``--fed``, the default on CUDA): the real trainer
(:func:`hyperkd.model.train.trainer.fit`) runs the last preset's HyperKD task twice, once fed by
the tile loader from a tile store (``--tiles``, or one built here from the test scene factory:
int16 tiles normalised on the GPU, pinned memory, workers = cores, copies on a side stream) and
once on batches of the same store already on the device; ``fed/in_gpu`` is the ratio of their
steady-state steps/s (steps after ``--fed-warmup``).

``--compiled-blur matrix`` makes ``torch.compile`` trace the SSIM blur as banded matrix products
instead of 11-tap stencils (:data:`hyperkd.model.train.ssim.compiled_blur`), to tell on a GPU
which of the two the compiled loss should use.

The last line is ``<preset>/samples_per_s=<n> <preset>/ratio_to_mae=<r>`` for each preset run,
plus ``mfu=<fraction>`` (of the last preset) on CUDA and ``fed/in_gpu=<r>`` when fed.

    .venv/bin/python benchmarks/train_step.py --presets tiny small [--batch 4] [--bands 218]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hyperkd.model.nets.mae import StudentMAE, student_config
from hyperkd.model.nets.masking import Masking
from hyperkd.model.nets.prithvi import PrithviMAE, Teacher, teacher_config
from hyperkd.model.train import ssim
from hyperkd.model.train.losses import LossConfig, tile_range, weighted_ssim
from hyperkd.model.train.tasks import DistillationTask

TEACHER_FOR = {"tiny": "tiny", "small": "prithvi-eo-1.0-100m", "base": "prithvi-eo-1.0-100m"}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}
"""Dense bf16 tensor-core peaks from NVIDIA's data sheets (SXM unless named)."""


def make_batch(
    batch: int, bands: int, tile: int, patch: int, device: torch.device
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {
        "student": torch.randn(batch, bands, tile, tile, generator=g),
        "teacher": torch.randn(batch, 6, tile, tile, generator=g),
        "significance_gabor": torch.rand(batch, tile // patch, tile // patch, generator=g),
        "valid": torch.ones(batch, tile, tile, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in out.items()}


def build(
    preset: str, kd: bool, args: argparse.Namespace, device: torch.device
) -> DistillationTask:
    torch.manual_seed(0)
    student = StudentMAE(
        student_config(preset, img_size=args.tile, patch_size=args.patch, in_chans=args.bands)
    )
    if not kd:
        return DistillationTask(student, Masking("random"), LossConfig("mse")).to(device)
    teacher_preset = TEACHER_FOR[preset]
    patch = args.patch if teacher_preset == "tiny" else None
    teacher = Teacher(
        PrithviMAE(teacher_config(teacher_preset, img_size=args.tile, patch_size=patch))
    )
    return DistillationTask(student, Masking("gabor"), LossConfig("mse+ssim+kld"), teacher).to(
        device
    )


def step_fn(
    task: DistillationTask, batch: dict[str, torch.Tensor], device: torch.device, compile_: bool
):  # type: ignore[no-untyped-def]
    opt = torch.optim.AdamW(
        [p for p in task.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95)
    )
    model = torch.compile(task) if compile_ else task
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        pm = task.make_mask(batch, generator)
        with autocast:
            loss = model(batch, pm)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_steps(step, n: int, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def step_flops(
    task: DistillationTask, batch: dict[str, torch.Tensor], device: torch.device
) -> float:
    """Model FLOPs of one forward + backward, counted on the real step."""
    from torch.utils.flop_counter import FlopCounterMode

    pm = task.make_mask(batch, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = task(batch, pm)["loss"]
        loss.backward()
    task.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def ssim_flops(batch: dict[str, torch.Tensor]) -> float:
    """Counted FLOPs of the SSIM term alone, forward + backward, on the step's image shape."""
    from torch.utils.flop_counter import FlopCounterMode

    target = batch["student"]
    recon = target.detach().clone().requires_grad_(True)
    weight = torch.ones_like(target[:, :1])
    with FlopCounterMode(display=False) as counter:
        weighted_ssim(recon, target, weight, tile_range(target)).mean().backward()
    return float(counter.get_total_flops())


def peak_flops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS.items():  # longest names first where they overlap
        if key in name:
            return tflops * 1e12
    return None


def build_tile_store(out: Path, args: argparse.Namespace) -> str:
    """A tile store of ``--fed-scenes`` time steps of one ``--fed-size`` px grid, from the
    tests' scene factory (``args.bands`` valid student bands, one bad band), every tile in
    train."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tile_helpers import make_scene

    from hyperkd.pipeline.tiles.build import TileConfig, write_tile_store

    t = time.perf_counter()
    scenes = (
        make_scene(
            args.fed_size, args.fed_size, bands=args.bands + 1, patch=args.patch, seed=i,
            scene_id=f"ENMAP_BENCH_{i}", time=f"2022-07-{i + 1:02d}T10:45:26",
        )
        for i in range(args.fed_scenes)
    )  # fmt: skip
    cfg = TileConfig(
        tile_size=args.tile, patch_size=args.patch, min_valid=0.0,
        split_fractions=(1.0, 0.0, 0.0), allow_empty_splits=True,
    )  # fmt: skip
    summary = write_tile_store(scenes, str(out), cfg)
    print(f"tile store: {summary.n_tiles} tiles, built in {time.perf_counter() - t:.1f} s")
    return str(out)


def fed_ratio(
    task: DistillationTask,
    tiles: str,
    batch_size: int,
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[float, float]:
    """Steps/s of the real trainer fed by the tile loader, and fed from batches already on
    ``device`` (the same store's first batches), on the same task; steady state only."""
    from hyperkd.model.data.dataset import TileDataset
    from hyperkd.model.data.loader import make_loader
    from hyperkd.model.train.config import TrainConfig
    from hyperkd.model.train.distributed import DistEnv
    from hyperkd.model.train.trainer import fit

    env = DistEnv(rank=0, world_size=1, device=device, owns_group=False)
    dataset = TileDataset(tiles, split="train")
    if len(dataset) < batch_size:
        raise SystemExit(f"--fed needs at least {batch_size} tiles, the store has {len(dataset)}")
    staged = [
        dataset.normalise_batch({k: v.to(device) for k, v in b.items()})
        for b in make_loader(dataset, batch_size, shuffle=False, num_workers=0)
    ]

    def in_gpu(epoch: int) -> Any:
        return iter(staged)

    rates = {}
    for name, factory in (("in_gpu", in_gpu), ("fed", None), ("in_gpu", in_gpu), ("fed", None)):
        stamps: list[float] = []

        def on_step(step: int, stamps: list[float] = stamps) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(
                out=out, steps=args.fed_warmup + args.fed_steps, batch_size=batch_size,
                compile=args.compile, device=device.type, progress=False,
                log_every=10**6, checkpoint_every=10**6, num_workers=args.fed_workers,
            )  # fmt: skip
            fit(
                task, dataset, config, env=env, loader_factory=factory, on_step=on_step,
                run_config={"kind": "student", "model": task.student.config.to_dict()},
                export=task.trainable_state_dict,
            )  # fmt: skip
        # stamps[-1] comes after the final checkpoint write: leave that step out
        span = stamps[-2] - stamps[args.fed_warmup - 1]
        rates.setdefault(name, []).append((len(stamps) - 1 - args.fed_warmup) / span)
    fed, staged_rate = max(rates["fed"]), max(rates["in_gpu"])
    return fed, staged_rate


def parse_args() -> argparse.Namespace:
    """The command line: presets and sizes of the timed steps, and the fed-training options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--presets", nargs="+", default=["tiny", "small"], choices=sorted(TEACHER_FOR)
    )
    parser.add_argument("--batch", type=int, default=None, help="default 4 on CPU, 32 on CUDA")
    parser.add_argument("--bands", type=int, default=218)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="steps per timing")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--compiled-blur", choices=ssim.COMPILED_BLURS, default=ssim.compiled_blur,
        help="the SSIM blur form torch.compile traces (CUDA path)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU"
    )
    fed = parser.add_argument_group("fed training (default on CUDA)")
    fed.add_argument("--fed", action=argparse.BooleanOptionalAction, default=None)
    fed.add_argument(
        "--tiles",
        default=None,
        help="tile store to feed from; built there if absent (default: a temporary one)",
    )
    fed.add_argument("--fed-scenes", type=int, default=8, help="scenes of the built store")
    fed.add_argument("--fed-size", type=int, default=512, help="px per side of each scene")
    fed.add_argument("--fed-steps", type=int, default=20, help="timed trainer steps")
    fed.add_argument("--fed-warmup", type=int, default=5, help="trainer steps not timed")
    fed.add_argument("--fed-workers", type=int, default=None, help="loader workers (cores)")
    return parser.parse_args()


def median_timings(
    steps: dict[str, Callable[[], None]], args: argparse.Namespace, device: torch.device
) -> dict[str, float]:
    """Median seconds of ``--steps`` steps of each step function over ``--repeats`` timings,
    after ``--warmup`` untimed steps of each."""
    for step in steps.values():
        time_steps(step, args.warmup, device)
    # Baseline and treatment alternate, so load from other processes hits both alike.
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            samples[name].append(time_steps(step, args.steps, device))
    return {name: statistics.median(v) for name, v in samples.items()}


def report_mfu(
    preset: str,
    task: DistillationTask,
    batch: dict[str, torch.Tensor],
    seconds: float,
    args: argparse.Namespace,
    device: torch.device,
) -> float | None:
    """Prints the counted and model FLOPs of one HyperKD step and the TFLOP/s achieved in
    ``seconds`` per ``--steps`` steps; returns the MFU (``None`` when the peak is unknown)."""
    counted, blur = step_flops(task, batch, device), ssim_flops(batch)
    flops, peak = counted - blur, peak_flops(args)
    achieved = flops * args.steps / seconds
    print(
        f"  {preset}: {counted / 1e12:.2f} TFLOP counted per step, of which "
        f"{blur / 1e12:.2f} in the SSIM blur; model {flops / 1e12:.2f} TFLOP per step, "
        f"{achieved / 1e12:.1f} TFLOP/s achieved"
    )
    return achieved / peak if peak else None


def bench_preset(
    preset: str,
    batch: dict[str, torch.Tensor],
    batch_size: int,
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[str, float | None, DistillationTask]:
    """Times ``preset``'s HyperKD step against its plain MAE step and prints both rates.

    Returns the preset's fields of the last line, its MFU (``None`` off CUDA or without a
    known peak) and its HyperKD task.
    """
    tasks = {
        name: build(preset, kd, args, device) for name, kd in (("mae", False), ("hyperkd", True))
    }
    steps = {name: step_fn(task, batch, device, args.compile) for name, task in tasks.items()}
    timings = median_timings(steps, args, device)
    mfu = None
    if device.type == "cuda":
        mfu = report_mfu(preset, tasks["hyperkd"], batch, timings["hyperkd"], args, device)
    sps = {k: batch_size * args.steps / v for k, v in timings.items()}
    print(
        f"{preset:>5}: hyperkd step {sps['hyperkd']:.2f} samples/s, plain MAE step {sps['mae']:.2f} "
        f"samples/s, ratio hyperkd/mae = {sps['hyperkd'] / sps['mae']:.2f}"
    )
    fields = f"{preset}/samples_per_s={sps['hyperkd']:.3f} {preset}/ratio_to_mae={sps['hyperkd'] / sps['mae']:.3f}"
    return fields, mfu, tasks["hyperkd"]


def bench_fed(
    task: DistillationTask, batch_size: int, args: argparse.Namespace, device: torch.device
) -> str:
    """Times the trainer fed by the tile loader against it on batches already on ``device``
    and prints both rates; returns the ``fed/in_gpu`` field of the last line."""
    with tempfile.TemporaryDirectory() as work:
        tiles = args.tiles or str(Path(work) / "tiles.zarr")
        if not Path(tiles).exists():  # a --tiles path that does not exist yet is kept
            build_tile_store(Path(tiles), args)
        fed_sps, staged_sps = fed_ratio(task, tiles, batch_size, args, device)
    print(
        f"{args.presets[-1]:>5}: trainer fed by the tile loader {fed_sps * batch_size:.2f} "
        f"samples/s, on batches already on {device.type} {staged_sps * batch_size:.2f} "
        f"samples/s, ratio fed/in_gpu = {fed_sps / staged_sps:.2f}"
    )
    return f"fed/in_gpu={fed_sps / staged_sps:.3f}"


def main() -> None:
    args = parse_args()
    ssim.compiled_blur = args.compiled_blur
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_size = args.batch or (32 if device.type == "cuda" else 4)
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"device: {where}; batch {batch_size}, {args.bands} bands, {args.tile} px tiles, {args.patch} px patches"
    )
    batch = make_batch(batch_size, args.bands, args.tile, args.patch, device)
    results, mfu, fed_task = [], None, None
    for preset in args.presets:
        # fed_task ends as the last preset's: fit() reuses its compiled graphs
        fields, mfu, fed_task = bench_preset(preset, batch, batch_size, args, device)
        results.append(fields)
    last = " ".join(results)
    if device.type == "cuda":
        last += f" mfu={mfu:.4f}" if mfu is not None else " mfu=nan"
    if args.fed if args.fed is not None else device.type == "cuda":
        assert fed_task is not None
        last += " " + bench_fed(fed_task, batch_size, args, device)
    print(last)


if __name__ == "__main__":
    main()
