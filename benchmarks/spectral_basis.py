"""The demo student's training step with a learned against a fixed spectral basis.

Both steps are the trainer's: a batch drawn from the in-memory train split
(:meth:`MemoryTiles.batch`, a flip/rot90 per tile) and the :class:`DistillationTask` MSE step
(random masking, backward, AdamW). The baseline caches and augments the C bands and computes
the loss over them (``spectral_basis="learned"``, the default); the treatment caches each
tile's K components and residual and computes the same loss on them (``"fixed"``:
:func:`masked_component_mse`). Both run in the same process on the same tiles (scene-factory
spectra, so the residuals are real), alternating; medians of ``--repeats`` timings of
``--steps`` steps at each batch size.

The last line is ``b<batch>/fixed_vs_learned=<speed-up>`` for each batch size, plus
``b<big>_fixed_per_sample_vs_b<small>_learned=<speed-up>`` (samples/s against samples/s).

    .venv/bin/python benchmarks/spectral_basis.py --batches 8 32 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

from hyperkd.model.data.memory import MemoryTiles
from hyperkd.model.nets.mae import StudentMAE, student_config
from hyperkd.model.nets.masking import Masking
from hyperkd.model.train.losses import LossConfig
from hyperkd.model.train.tasks import DistillationTask
from hyperkd.pipeline.synthetic.factory import RegionSpec, enmap_reflectance, make_surface


def scene_tiles(n: int, tile: int, bands: int) -> torch.Tensor:
    """(n, C, T, T) tiles of one scene-factory EnMAP scene (realistic spectra), each band
    normalised over the scene, the no-data bands dropped."""
    side = tile * int(np.ceil(np.sqrt(n)))
    spec = RegionSpec(size_px=side)
    dn = enmap_reflectance(make_surface(spec), 0).astype(np.float32)  # (224, side, side)
    keep = [i for i in range(dn.shape[0]) if i not in set(spec.enmap_bands.nodata_bands)]
    x = torch.from_numpy(dn[keep[:bands]])  # (C, side, side)
    x = (x - x.mean(dim=(1, 2), keepdim=True)) / x.std(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    g = side // tile
    parts = x.reshape(len(x), g, tile, g, tile).permute(1, 3, 0, 2, 4)  # (g, g, C, T, T)
    return parts.reshape(g * g, len(x), tile, tile)[:n].contiguous()


def cache_of(tensors: dict[str, torch.Tensor]) -> MemoryTiles:
    """A :class:`MemoryTiles` over tensors already decoded (what the trainer caches)."""
    return MemoryTiles.from_tensors(tensors)


def stepper(basis: str, tiles: torch.Tensor, batch: int, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    _, bands, tile, _ = tiles.shape
    student = StudentMAE(
        student_config("tiny", img_size=tile, patch_size=args.patch, in_chans=bands,
                       spectral_dim=args.rank, spectral_basis=basis)
    )  # fmt: skip
    student.init_spectral_basis(tiles.permute(0, 2, 3, 1).reshape(-1, bands)[::7])
    task = DistillationTask(student, Masking("random"), LossConfig("mse"))
    valid = torch.ones(len(tiles), tile, tile, dtype=torch.bool)
    if task.component_loss:
        components, residual = student.project_bands(tiles)
        cache = cache_of(
            {"student_components": components, "student_residual": residual, "valid": valid}
        )
    else:
        cache = cache_of({"student": tiles, "valid": valid})
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)

    def step() -> None:
        positions = rng.integers(0, len(tiles), batch)
        data = cache.batch(positions, rng.integers(0, 8, batch))
        loss = task(data, task.make_mask(data, generator))["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def seconds(step, n: int) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t


def add_step_args(p: argparse.ArgumentParser) -> None:
    """The scene and timing arguments of the demo-step benchmarks (this one, demo_steps.py)."""
    p.add_argument("--tiles", type=int, default=64, help="tiles in the cache")
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--bands", type=int, default=218)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)


def scene_of(args: argparse.Namespace) -> torch.Tensor:
    """Sets ``--threads`` and returns the ``--tiles`` scene-factory tiles (:func:`scene_tiles`)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return scene_tiles(args.tiles, args.tile, args.bands)


def samples_per_s(steps: dict[str, Any], batch: int, args: argparse.Namespace) -> dict[str, float]:
    """Each step's samples/s: one warm-up call, then ``--repeats`` timings of ``--steps`` calls,
    the steps alternating so that load hits them alike; medians."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(seconds(step, args.steps))
    return {k: args.steps * batch / statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    add_step_args(p)
    args = p.parse_args()
    tiles = scene_of(args)
    print(f"{args.tiles} tiles of {args.bands} bands x {args.tile}^2 px, rank {args.rank}, "
          f"{torch.get_num_threads()} threads; medians of {args.repeats} x {args.steps} steps")  # fmt: skip
    rates: dict[tuple[str, int], float] = {}
    for batch in args.batches:
        steps = {b: stepper(b, tiles, batch, args) for b in ("learned", "fixed")}
        for basis, rate in samples_per_s(steps, batch, args).items():
            rates[basis, batch] = rate
            print(f"batch {batch:3d} {basis:8s} {rate:8.1f} samples/s")
    last = [
        f"b{b}/fixed_vs_learned={rates['fixed', b] / rates['learned', b]:.2f}" for b in args.batches
    ]
    small, big = min(args.batches), max(args.batches)
    if big != small:
        ratio = rates["fixed", big] / rates["learned", small]
        last.append(f"b{big}_fixed_per_sample_vs_b{small}_learned={ratio:.2f}")
    print(" ".join(last))


if __name__ == "__main__":
    main()
