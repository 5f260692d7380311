"""The demo's teacher and student training steps: AdamW's update, and the student's decoder.

Every step is the trainer's: a batch drawn from the in-memory train split
(:meth:`MemoryTiles.batch`, a flip/rot90 per tile), random masking at 0.75, the MSE forward,
backward and an AdamW update. Two levers, each timed against its baseline in the same process
on the same tiles, alternating, medians of ``--repeats`` timings of ``--steps`` steps:

- ``fused``: ``AdamW(fused=True)``, one kernel over every parameter, against torch's default
  on the CPU (a loop over the parameter tensors). For the tiny teacher (six bands) and for the
  demo student (16 fixed spectral components).
- ``decoder``: the demo student's decoder 64 x 2, what the ``tiny`` preset now builds over
  spectral components, against the 128 x 2 it built before (both with the fused update).
- ``fields``: drawing the student's batch from a cache of its task's ``batch_fields``
  (components, residual, valid mask) against one of every field a tile store holds (also the
  teacher's bands, both significance maps, three label rasters and the tile ids), as the
  trainer cached it before. This times the batch alone, not the step around it.

The last line is ``teacher/fused=<speed-up> student/fused=<speed-up>
student/decoder=<speed-up> student/both=<speed-up> batch/fields=<speed-up>`` (both: the new
student step against the old one, loop update and 128 x 2 decoder).

    .venv/bin/python benchmarks/demo_steps.py --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from spectral_basis import add_step_args, cache_of, samples_per_s, scene_of

from hyperkd.model.nets.mae import StudentMAE, student_config
from hyperkd.model.nets.masking import Masking
from hyperkd.model.nets.prithvi import PrithviMAE, teacher_config
from hyperkd.model.train.losses import LossConfig
from hyperkd.model.train.tasks import DistillationTask, TeacherPretrainTask

Step = Callable[[], None]


def task_step(task: torch.nn.Module, cache: Any, batch: int, opt: Any) -> Step:
    """One trainer-like step of ``task`` on a batch drawn from ``cache``, updated by ``opt``."""
    n = len(cache)
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)

    def step() -> None:
        data = cache.batch(rng.integers(0, n, batch), rng.integers(0, 8, batch))
        task(data, task.make_mask(data, generator))["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _adamw(task: torch.nn.Module, fused: bool) -> torch.optim.AdamW:
    params = [p for p in task.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-4, fused=fused)


def step_setup(doc: str) -> tuple[argparse.Namespace, torch.Tensor]:
    """The demo-step benchmarks' arguments (``--batch`` and :func:`add_step_args`) and scene
    tiles; prints the header line that names them."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    add_step_args(p)
    args = p.parse_args()
    tiles = scene_of(args)
    print(f"batch {args.batch}, {args.tiles} tiles of {args.bands} bands x {args.tile}^2 px, "
          f"rank {args.rank}, {torch.get_num_threads()} threads; "
          f"medians of {args.repeats} x {args.steps} steps")  # fmt: skip
    return args, tiles


def teacher_task(tiles: torch.Tensor, patch: int) -> tuple[TeacherPretrainTask, Any]:
    """The tiny teacher's pretraining task on six of the tiles' bands (its input width), and
    its in-memory cache."""
    torch.manual_seed(0)
    n, _, tile, _ = tiles.shape
    model = PrithviMAE(teacher_config("tiny", img_size=tile, patch_size=patch))
    task = TeacherPretrainTask(model, Masking("random", 0.75))
    valid = torch.ones(n, tile, tile, dtype=torch.bool)
    return task, cache_of({"teacher": tiles[:, :6].contiguous(), "valid": valid})


def student_task(tiles: torch.Tensor, args: argparse.Namespace,
                 decoder: tuple[int, int] | None = None) -> tuple[DistillationTask, Any]:  # fmt: skip
    """The demo student's task (fixed basis, loss on the cached components) and its cache;
    ``decoder`` (width, depth) replaces the preset's."""
    torch.manual_seed(0)
    n, bands, tile, _ = tiles.shape
    config = student_config("tiny", img_size=tile, patch_size=args.patch, in_chans=bands,
                            spectral_dim=args.rank, spectral_basis="fixed")  # fmt: skip
    if decoder is not None:
        width, depth = decoder
        config = dataclasses.replace(config, decoder_embed_dim=width, decoder_depth=depth)
    student = StudentMAE(config)
    student.init_spectral_basis(tiles.permute(0, 2, 3, 1).reshape(-1, bands)[::7])
    components, residual = student.project_bands(tiles)
    valid = torch.ones(n, tile, tile, dtype=torch.bool)
    cache = cache_of({"student_components": components, "student_residual": residual,
                      "valid": valid})  # fmt: skip
    return DistillationTask(student, Masking("random"), LossConfig("mse")), cache


def teacher_step(tiles: torch.Tensor, batch: int, patch: int, fused: bool) -> Step:
    """The tiny teacher's pretraining step."""
    task, cache = teacher_task(tiles, patch)
    return task_step(task, cache, batch, _adamw(task, fused))


def student_step(tiles: torch.Tensor, batch: int, args: argparse.Namespace, *, fused: bool,
                 decoder: tuple[int, int]) -> Step:  # fmt: skip
    """The demo student's step with decoder ``decoder`` (width, depth)."""
    task, cache = student_task(tiles, args, decoder)
    return task_step(task, cache, batch, _adamw(task, fused))


def batch_draw(tiles: torch.Tensor, batch: int, args: argparse.Namespace, *,
               every_field: bool) -> Step:  # fmt: skip
    """Drawing one augmented student batch from the in-memory cache; ``every_field``: the
    cache also holds what the task never reads, each field as the tile store decodes it."""
    n, bands, tile, _ = tiles.shape
    config = student_config("tiny", img_size=tile, patch_size=args.patch, in_chans=bands,
                            spectral_dim=args.rank, spectral_basis="fixed")  # fmt: skip
    student = StudentMAE(config)
    student.init_spectral_basis(tiles.permute(0, 2, 3, 1).reshape(-1, bands)[::7])
    task = DistillationTask(student, Masking("random"), LossConfig("mse"))
    components, residual = student.project_bands(tiles)
    grid = tile // args.patch
    fields = {"student_components": components, "student_residual": residual,
              "valid": torch.ones(n, tile, tile, dtype=torch.bool)}  # fmt: skip
    assert set(fields) == set(task.batch_fields)
    if every_field:
        fields |= {
            "teacher": tiles[:, :6].contiguous(),
            "significance_gabor": torch.rand(n, grid, grid),
            "significance_wavelet": torch.rand(n, grid, grid),
            "label_landcover": torch.zeros(n, tile, tile, dtype=torch.int64),
            "label_crop_type": torch.zeros(n, tile, tile, dtype=torch.int64),
            "label_soc": torch.zeros(n, tile, tile),
            "tile_id": torch.arange(n),
        }
    cache, rng = cache_of(fields), np.random.default_rng(0)
    return lambda: cache.batch(rng.integers(0, n, batch), rng.integers(0, 8, batch))  # type: ignore[func-returns-value]


def main() -> None:
    args, tiles = step_setup(__doc__)
    steps = {
        "teacher, loop update": teacher_step(tiles, args.batch, args.patch, fused=False),
        "teacher, fused update": teacher_step(tiles, args.batch, args.patch, fused=True),
        "student, loop, decoder 128x2": student_step(tiles, args.batch, args, fused=False,
                                                     decoder=(128, 2)),
        "student, fused, decoder 128x2": student_step(tiles, args.batch, args, fused=True,
                                                      decoder=(128, 2)),
        "student, fused, decoder 64x2": student_step(tiles, args.batch, args, fused=True,
                                                     decoder=(64, 2)),
        "batch, all fields": batch_draw(tiles, args.batch, args, every_field=True),
        "batch, task fields": batch_draw(tiles, args.batch, args, every_field=False),
    }  # fmt: skip
    rate = samples_per_s(steps, args.batch, args)
    for name, r in rate.items():
        print(f"{name:32s} {r:8.1f} samples/s")
    old, fused, new = (rate[f"student, {k}"] for k in
                       ("loop, decoder 128x2", "fused, decoder 128x2", "fused, decoder 64x2"))  # fmt: skip
    print(
        f"teacher/fused={rate['teacher, fused update'] / rate['teacher, loop update']:.2f} "
        f"student/fused={fused / old:.2f} student/decoder={new / fused:.2f} "
        f"student/both={new / old:.2f} "
        f"batch/fields={rate['batch, task fields'] / rate['batch, all fields']:.2f}"
    )


if __name__ == "__main__":
    main()
