"""Muon's cost: our batched update against torch's, and the demo's steps with Muon against AdamW.

- ``update``: one Muon update of the demo student's hidden matrices (the 2-D weights of its
  encoder and decoder blocks and its decoder projection, random gradients):
  :class:`hyperkd.model.train.optim.Muon`, one batched Newton-Schulz per matrix shape in
  float32, against ``torch.optim.Muon`` (``adjust_lr_fn="match_rms_adamw"``, one bfloat16
  iteration per matrix), the same update to about 1 % (``tests/test_optim.py``).
- ``teacher`` and ``student``: the demo's whole training steps (the trainer's batch from the
  in-memory cache, random masking at 0.75, MSE, backward, update) with the trainer's Muon
  + AdamW against its fused AdamW. Ratios below 1 are Muon's cost per step.

Timed in the same process, alternating, medians of ``--repeats`` timings of ``--steps`` steps.
The last line is ``update/batched=<speed-up> teacher/muon=<ratio> student/muon=<ratio>``.

    .venv/bin/python benchmarks/optimizers.py --repeats 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from demo_steps import step_setup, student_task, task_step, teacher_task
from spectral_basis import samples_per_s

from hyperkd.model.train.config import OptimConfig
from hyperkd.model.train.optim import Muon, build_optimizer, hidden_matrices

Step = Callable[[], None]


def _optimizer(task: torch.nn.Module, optimizer: str) -> Any:
    return build_optimizer(task, OptimConfig(optimizer=optimizer), 1e-4, torch.device("cpu"))


def student_step(tiles: torch.Tensor, batch: int, args: argparse.Namespace, optimizer: str) -> Step:
    """The demo student's step (fixed basis, loss on the cached components)."""
    task, cache = student_task(tiles, args)
    return task_step(task, cache, batch, _optimizer(task, optimizer))


def teacher_step(tiles: torch.Tensor, batch: int, patch: int, optimizer: str) -> Step:
    """The tiny teacher's pretraining step on six of the tiles' bands."""
    task, cache = teacher_task(tiles, patch)
    return task_step(task, cache, batch, _optimizer(task, optimizer))


def update_seconds(tiles: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per Muon update of the student's hidden matrices, ours and torch's; medians."""
    task, _ = student_task(tiles, args)
    named = dict(task.named_parameters())
    matrices = [named[n] for n in hidden_matrices(task)]
    for p in matrices:
        p.grad = torch.randn_like(p) * 1e-3
    opts = {
        "torch.optim.Muon": torch.optim.Muon(matrices, lr=1e-4, adjust_lr_fn="match_rms_adamw"),
        "batched Muon": Muon(matrices, lr=1e-4),
    }
    times: dict[str, list[float]] = {name: [] for name in opts}
    for opt in opts.values():
        opt.step()
    for _ in range(args.repeats):
        for name, opt in opts.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                opt.step()
            times[name].append((time.perf_counter() - t) / args.steps)
    print(f"{len(matrices)} matrices of {len({p.shape for p in matrices})} shapes")
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    args, tiles = step_setup(__doc__)
    update = update_seconds(tiles, args)
    for name, s in update.items():
        print(f"{name:32s} {s * 1e3:8.2f} ms per update")
    steps = {
        f"{who}, {opt}": make(opt)
        for who, make in (
            ("teacher", lambda o: teacher_step(tiles, args.batch, args.patch, o)),
            ("student", lambda o: student_step(tiles, args.batch, args, o)),
        )
        for opt in ("adamw", "muon")
    }
    rate = samples_per_s(steps, args.batch, args)
    for name, r in rate.items():
        print(f"{name:32s} {r:8.1f} samples/s")
    print(
        f"update/batched={update['torch.optim.Muon'] / update['batched Muon']:.2f} "
        f"teacher/muon={rate['teacher, muon'] / rate['teacher, adamw']:.2f} "
        f"student/muon={rate['student, muon'] / rate['student, adamw']:.2f}"
    )


if __name__ == "__main__":
    main()
