"""The training loop: AdamW (or Muon) + MAE schedule, clipping, bf16 on CUDA, DDP, exact resume.

:func:`fit` trains any task module whose ``forward(batch, patch_mask)`` returns a dict with a
``loss`` (see :mod:`hyperkd.model.train.tasks`) and which offers ``make_mask``,
``trainable_state_dict`` and ``load_trainable_state_dict``.

Exact resume: the masking noise comes from a dedicated generator whose state (one per rank) is
checkpointed with the weights, optimizer moments and torch RNG; epoch ``e`` always draws its order
from ``(seed, e)``, and a resumed epoch skips the batches already seen. On the CPU a run killed
and resumed ends with weights bit-identical to an uninterrupted one.

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` > 1) the loop joins a process group, gloo
on the CPU and NCCL on CUDA; each rank reads its own shard of every epoch, gradients are
averaged by ``DistributedDataParallel``, and rank 0 alone writes files.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from hyperkd.model.data.loader import to_device
from hyperkd.model.train.checkpoint import (
    LATEST,
    latest_checkpoint,
    resume_point,
    save_checkpoint,
    save_run,
)
from hyperkd.model.train.config import OptimConfig, TrainConfig
from hyperkd.model.train.distributed import (
    Batch,
    DistEnv,
    LoaderFactory,
    default_loader_factory,
    gather,
    mean_over_ranks,
    setup_distributed,
)
from hyperkd.model.train.optim import build_optimizer

_logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is left in place."""


@dataclass
class _Cursor:
    """Where the loop stands: optimizer steps taken, the epoch, and its batches consumed."""

    step: int = 0
    epoch: int = 0
    position: int = 0


def _loader(
    dataset: Any, config: TrainConfig, env: DistEnv, loader_factory: LoaderFactory | None
) -> tuple[LoaderFactory, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None]:
    """The run's batches (``loader_factory``, or the tile loader over ``dataset``) and how the
    device normalises them (None: they arrive normalised)."""
    if loader_factory is not None:
        return loader_factory, None
    normalise = None
    if env.device.type == "cuda" and hasattr(dataset, "as_raw"):
        # Ship int16 tiles (half the bytes of float32) and normalise them on the GPU.
        dataset = dataset.as_raw()
        normalise = dataset.normalise_batch
    factory = default_loader_factory(
        dataset, config.batch_size, seed=config.seed, env=env, num_workers=config.num_workers
    )
    return factory, normalise


def fit(
    task: nn.Module,
    dataset: Any,
    config: TrainConfig,
    *,
    run_config: dict[str, Any],
    export: Callable[[], dict[str, torch.Tensor]],
    env: DistEnv | None = None,
    loader_factory: LoaderFactory | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Train ``task`` on ``dataset`` and write the run directory ``config.out``.

    Args:
        run_config: JSON-able description of the run, written to ``config.json`` and checked
            on ``--resume`` so a run continues only with the settings it started with.
        export: returns the final weights for ``model.safetensors``.
        env: from :func:`setup_distributed` (called here when None).
        loader_factory: epoch -> batches; defaults to the tile loader.
        on_step: called with the step number after each optimizer step (and its checkpoint).

    Returns:
        The last logged metrics (global means over ranks).

    Raises:
        NonFiniteLossError: a loss was NaN/inf; nothing is written for that step.
    """
    env = env or setup_distributed(config.device)
    out = Path(config.out)
    total = _total_steps(len(dataset), config, env)
    factory, normalise = _loader(dataset, config, env, loader_factory)
    task.to(env.device)
    step_once = _Stepper(task, config, env)
    task.train()
    saved_config = _fingerprint(run_config)  # what a resume must match
    cursor = _start(out, config, env, step_once, saved_config)
    window = _Window(out / "metrics.jsonl", step_once.effective_batch, env.is_main)
    bar = tqdm(
        total=total,
        initial=cursor.step,
        disable=not (config.progress and env.is_main),
        dynamic_ncols=True,
    )
    try:
        while cursor.step < total:
            batches = _batches(factory, cursor.epoch, cursor.position)
            for batch in to_device(batches, env.device, normalise):
                lr = config.optim.lr_at(cursor.step, total, step_once.effective_batch)
                window.add(step_once(batch, lr, out, cursor.step))
                cursor.step, cursor.position = cursor.step + 1, cursor.position + 1
                if cursor.step % config.log_every == 0 or cursor.step == total:
                    last = window.flush(cursor, lr)
                    bar.set_postfix(
                        loss=f"{last['loss']:.4f}", samples_s=f"{last['samples_per_s']:.1f}"
                    )
                bar.update(1)
                if cursor.step % config.checkpoint_every == 0 or cursor.step == total:
                    _save(out, cursor, step_once, saved_config, config.keep_checkpoints)
                if on_step is not None:
                    on_step(cursor.step)
                if cursor.step >= total:
                    break
            else:
                cursor.epoch, cursor.position = cursor.epoch + 1, 0
        if env.is_main:
            save_run(out, export(), run_config)
        if env.world_size > 1:
            dist.barrier()
    finally:
        bar.close()
        if env.owns_group and dist.is_initialized():
            dist.destroy_process_group()
    return window.last


def _total_steps(tiles: int, config: TrainConfig, env: DistEnv) -> int:
    steps_per_epoch = tiles // env.world_size // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{tiles} training tiles make no full batch of {config.batch_size} on each of "
            f"{env.world_size} process(es)"
        )
    if config.steps is not None:
        return config.steps
    return config.epochs * steps_per_epoch  # type: ignore[operator]


class _Stepper:
    """One optimizer step of ``task``: mask, forward (bf16 on CUDA), backward, clip, update.

    It holds what a step and a checkpoint need: the task, the model that runs it (wrapped in
    DDP and compiled where asked), the optimizer and the masking generator.
    """

    def __init__(self, task: nn.Module, config: TrainConfig, env: DistEnv) -> None:
        opt: OptimConfig = config.optim
        self.task, self.env, self.clip_grad = task, env, opt.clip_grad
        self.effective_batch = config.batch_size * env.world_size
        self.params = [p for p in task.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(task, opt, opt.peak_lr(self.effective_batch), env.device)
        self.generator = torch.Generator().manual_seed(config.seed + 1_000_003 * env.rank)
        model: nn.Module = task
        if env.world_size > 1:
            model = nn.parallel.DistributedDataParallel(task)
        if config.compile if config.compile is not None else env.device.type == "cuda":
            model = torch.compile(model)  # type: ignore[assignment]
        self.model = model
        self.autocast = torch.autocast(
            "cuda", dtype=torch.bfloat16, enabled=env.device.type == "cuda"
        )

    def __call__(self, batch: Batch, lr: float, out: Path, step: int) -> dict[str, float]:
        """Step ``step + 1`` at learning rate ``lr``; returns its losses (means over ranks)."""
        patch_mask = self.task.make_mask(batch, self.generator)  # type: ignore[operator]
        with self.autocast:
            losses = self.model(batch, patch_mask)
        logged = mean_over_ranks(losses, self.env)
        if not all(np.isfinite(v) for v in logged.values()):
            kept = latest_checkpoint(out)
            raise NonFiniteLossError(
                f"non-finite loss at step {step + 1}: "
                + ", ".join(f"{k}={v}" for k, v in logged.items())
                + (
                    f"; last good checkpoint kept at {kept}"
                    if kept
                    else "; no checkpoint written yet"
                )
            )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        losses["loss"].backward()
        if self.clip_grad is not None:
            logged["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return logged


def _start(
    out: Path, config: TrainConfig, env: DistEnv, step_once: _Stepper, saved_config: dict[str, Any]
) -> _Cursor:
    """Check that ``out`` may take this run, and restore its last checkpoint on ``--resume``."""
    started = (out / "checkpoints" / LATEST).is_file()
    if started and not config.resume:
        raise ValueError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    if not started and (out / "config.json").exists() and not config.resume:
        raise ValueError(f"{out} already holds a finished run; choose another --out")
    if not started and not (out / "config.json").exists() and env.is_main:
        # A start killed before its first checkpoint left only its log; this run replaces it.
        (out / "metrics.jsonl").unlink(missing_ok=True)
    resumed = resume_point(out) if started else None  # falls back past a corrupt checkpoint
    if resumed is None:
        return _Cursor()
    ck = resumed[1]
    if ck["state"]["run_config"] != saved_config:
        raise ValueError(f"--resume with different settings than the run in {out} was started with")
    if ck["state"]["world_size"] != env.world_size:
        raise ValueError(
            f"run in {out} used {ck['state']['world_size']} processes, now {env.world_size}"
        )
    step_once.task.load_trainable_state_dict(ck["model"])  # type: ignore[operator]
    step_once.optimizer.load_state_dict(ck["optimizer"])
    torch.set_rng_state(ck["rng"]["torch_cpu"])
    if env.device.type == "cuda" and "torch_cuda" in ck["rng"]:
        torch.cuda.set_rng_state(ck["rng"]["torch_cuda"], env.device)
    step_once.generator.set_state(ck["rng"][f"mask_generator/{env.rank}"])
    random.setstate(_as_tuple(ck["state"]["python_rng"]))
    np.random.set_state(_as_tuple(ck["state"]["numpy_rng"]))
    state = ck["state"]
    cursor = _Cursor(state["step"], state["epoch"], state["position"])
    if env.is_main:
        _truncate_log(out / "metrics.jsonl", cursor.step)
        _logger.info("resuming %s from step %d", out, cursor.step)
    return cursor


def _save(
    out: Path, cursor: _Cursor, step_once: _Stepper, saved_config: dict[str, Any], keep: int
) -> None:
    """Checkpoint the weights, optimizer moments and every RNG (a collective: all ranks call it)."""
    env = step_once.env
    rng = {"torch_cpu": torch.get_rng_state()}
    if env.device.type == "cuda":
        rng["torch_cuda"] = torch.cuda.get_rng_state(env.device)
    for r, state in enumerate(gather(step_once.generator.get_state(), env)):
        rng[f"mask_generator/{r}"] = state
    if not env.is_main:
        return
    state = {
        "epoch": cursor.epoch,
        "position": cursor.position,
        "world_size": env.world_size,
        "run_config": saved_config,
        "python_rng": random.getstate(),
        "numpy_rng": [
            v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()
        ],
    }
    save_checkpoint(
        out,
        step=cursor.step,
        model=step_once.task.trainable_state_dict(),  # type: ignore[operator]
        optimizer=step_once.optimizer.state_dict(),
        rng=rng,
        state=state,
        keep=keep,
    )


class _Window:
    """Means of the logged values since the last ``metrics.jsonl`` line, and that line."""

    def __init__(self, path: Path, effective_batch: int, is_main: bool) -> None:
        self.path, self.effective_batch, self.is_main = path, effective_batch, is_main
        self.last: dict[str, float] = {}
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps, self.start = 0, time.perf_counter()

    def add(self, logged: dict[str, float]) -> None:
        for k, v in logged.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1

    def flush(self, cursor: _Cursor, lr: float) -> dict[str, float]:
        """Append the window's means (and lr, samples/s) as the line of ``cursor.step``."""
        elapsed = time.perf_counter() - self.start
        self.last = {k: v / self.steps for k, v in self.sums.items()} | {
            "lr": lr,
            "samples_per_s": self.steps * self.effective_batch / max(elapsed, 1e-9),
        }
        if self.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"step": cursor.step, "epoch": cursor.epoch} | self.last) + "\n")
        self._reset()
        return self.last


def _batches(factory: LoaderFactory, epoch: int, skip: int) -> Iterator[Batch]:
    for i, batch in enumerate(factory(epoch)):
        if i >= skip:
            yield batch


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (a killed run's tail)."""
    if not path.is_file():
        return
    lines = [
        ln
        for ln in path.read_text().splitlines()
        if ln.strip() and json.loads(ln).get("step", 0) <= step
    ]
    path.write_text("".join(ln + "\n" for ln in lines))


def _as_tuple(value: Any) -> Any:
    """JSON lists back into the nested tuples ``random.setstate``/``np.random.set_state`` take."""
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


_VOLATILE = (
    "resume",
    "progress",
    "num_workers",
    "device",
    "compile",
    "log_every",
    "checkpoint_every",
)


def _fingerprint(run_config: dict[str, Any]) -> dict[str, Any]:
    """The run description minus switches that may change between a run and its resume."""
    fp = json.loads(json.dumps(run_config))
    for section in fp.values():
        if isinstance(section, dict) and isinstance(section.get("train"), dict):
            for key in _VOLATILE:
                section["train"].pop(key, None)
    return fp


def config_dict(config: Any) -> dict[str, Any]:
    """A frozen config as JSON-able dict."""
    return json.loads(json.dumps(asdict(config)))
