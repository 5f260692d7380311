"""The training loop: AdamW + MAE schedule, clipping, bf16 on CUDA, DDP, exact resume.

:func:`fit` trains any task module whose ``forward(batch, patch_mask)`` returns a dict with a
``loss`` (see :mod:`hyperkd.model.train.tasks`) and which offers ``make_mask``,
``trainable_state_dict`` and ``load_trainable_state_dict``.

Exact resume: the masking noise comes from a dedicated generator whose state (one per rank) is
checkpointed with the weights, AdamW moments and torch RNG; epoch ``e`` always draws its order
from ``(seed, e)``, and a resumed epoch skips the batches already seen. On the CPU a run killed
and resumed ends with weights bit-identical to an uninterrupted one.

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` > 1) the loop joins a process group, gloo
on the CPU and NCCL on CUDA; each rank reads its own shard of every epoch, gradients are
averaged by ``DistributedDataParallel``, and rank 0 alone writes files.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
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
from hyperkd.model.train.config import TrainConfig

_logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
LoaderFactory = Callable[[int], Iterable[Batch]]
"""epoch -> this rank's batches for that epoch, in a deterministic order."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is left in place."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) before models are built."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_distributed(device: str = "auto") -> DistEnv:
    """Join the ``torchrun`` process group if there is one (gloo on CPU, NCCL on CUDA)."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return DistEnv(rank=rank, world_size=world, device=dev, owns_group=owns)


def default_loader_factory(
    dataset: Any, batch_size: int, *, seed: int, env: DistEnv, num_workers: int | None
) -> LoaderFactory:
    """Epoch loaders from the tile loader (:func:`hyperkd.model.data.loader.make_loader`).

    One loader (its workers persist); each epoch sets the sampler's epoch, so the order of
    epoch ``e`` depends only on ``(seed, e)`` and this rank's shard, as exact resume needs.
    """
    from hyperkd.model.data.loader import make_loader

    loader = make_loader(
        dataset,
        batch_size,
        shuffle=True,
        seed=seed,
        num_workers=num_workers,
        drop_last=True,
        rank=env.rank,
        world_size=env.world_size,
    )

    def factory(epoch: int) -> Iterable[Batch]:
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        return loader

    return factory


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only; biases, norms and tokens are exempt (MAE/timm)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or "token" in name else decay).append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def _gather(t: torch.Tensor, env: DistEnv) -> list[torch.Tensor]:
    if env.world_size == 1:
        return [t]
    x = t.to(env.device)
    out = [torch.empty_like(x) for _ in range(env.world_size)]
    dist.all_gather(out, x)
    return [o.cpu() for o in out]


def _rng_tensors(generator: torch.Generator, env: DistEnv) -> dict[str, torch.Tensor]:
    rng = {"torch_cpu": torch.get_rng_state()}
    if env.device.type == "cuda":
        rng["torch_cuda"] = torch.cuda.get_rng_state(env.device)
    for r, state in enumerate(_gather(generator.get_state(), env)):
        rng[f"mask_generator/{r}"] = state
    return rng


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
    per_rank = len(dataset) // env.world_size
    steps_per_epoch = per_rank // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(dataset)} training tiles make no full batch of {config.batch_size} on each of "
            f"{env.world_size} process(es)"
        )
    total = config.steps if config.steps is not None else config.epochs * steps_per_epoch  # type: ignore[operator]
    effective_batch = config.batch_size * env.world_size
    normalise = None
    if loader_factory is None and env.device.type == "cuda" and hasattr(dataset, "as_raw"):
        # Ship int16 tiles (half the bytes of float32) and normalise them on the GPU.
        dataset = dataset.as_raw()
        normalise = dataset.normalise_batch
    factory = loader_factory or default_loader_factory(
        dataset, config.batch_size, seed=config.seed, env=env, num_workers=config.num_workers
    )

    task.to(env.device)
    params = [p for p in task.parameters() if p.requires_grad]
    opt = config.optim
    # The fused kernel updates every parameter in one pass instead of looping over them:
    # 1.1x the tiny teacher's whole CPU step, 1.05x the demo student's (benchmarks/RESULTS.md);
    # it is also torch's fastest path on CUDA.
    optimizer = torch.optim.AdamW(
        param_groups(task, opt.weight_decay), lr=opt.peak_lr(effective_batch), betas=opt.betas,
        fused=env.device.type in ("cpu", "cuda"),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(config.seed + 1_000_003 * env.rank)
    step, epoch, position = 0, 0, 0
    saved_config = _fingerprint(run_config)  # what a resume must match

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
    if resumed is not None:
        ck = resumed[1]
        if ck["state"]["run_config"] != saved_config:
            raise ValueError(
                f"--resume with different settings than the run in {out} was started with"
            )
        if ck["state"]["world_size"] != env.world_size:
            raise ValueError(
                f"run in {out} used {ck['state']['world_size']} processes, now {env.world_size}"
            )
        task.load_trainable_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"]["torch_cpu"])
        if env.device.type == "cuda" and "torch_cuda" in ck["rng"]:
            torch.cuda.set_rng_state(ck["rng"]["torch_cuda"], env.device)
        generator.set_state(ck["rng"][f"mask_generator/{env.rank}"])
        random.setstate(_as_tuple(ck["state"]["python_rng"]))
        np.random.set_state(_as_tuple(ck["state"]["numpy_rng"]))
        step, epoch, position = ck["state"]["step"], ck["state"]["epoch"], ck["state"]["position"]
        if env.is_main:
            _truncate_log(out / "metrics.jsonl", step)
            _logger.info("resuming %s from step %d", out, step)

    model: nn.Module = task
    if env.world_size > 1:
        model = nn.parallel.DistributedDataParallel(task)
    if config.compile if config.compile is not None else env.device.type == "cuda":
        model = torch.compile(model)  # type: ignore[assignment]
    task.train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=env.device.type == "cuda")

    def save() -> Path:
        rng = _rng_tensors(generator, env)  # collective: every rank takes part
        folder = out / "checkpoints"
        if env.is_main:
            state = {
                "epoch": epoch,
                "position": position,
                "world_size": env.world_size,
                "run_config": saved_config,
                "python_rng": random.getstate(),
                "numpy_rng": [
                    v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()
                ],
            }
            folder = save_checkpoint(
                out,
                step=step,
                model=task.trainable_state_dict(),  # type: ignore[operator]
                optimizer=optimizer.state_dict(),
                rng=rng,
                state=state,
                keep=config.keep_checkpoints,
            )
        return folder

    bar = tqdm(
        total=total, initial=step, disable=not (config.progress and env.is_main), dynamic_ncols=True
    )
    window: dict[str, float] = {}
    last: dict[str, float] = {}
    window_steps, window_start = 0, time.perf_counter()
    log_path = out / "metrics.jsonl"
    try:
        while step < total:
            for batch in to_device(_batches(factory, epoch, position), env.device, normalise):
                patch_mask = task.make_mask(batch, generator)  # type: ignore[operator]
                with autocast:
                    losses = model(batch, patch_mask)
                keys = sorted(losses)
                values = torch.stack([losses[k].detach().float() for k in keys])
                if env.world_size > 1:
                    dist.all_reduce(values)
                    values /= env.world_size
                logged = dict(zip(keys, values.tolist(), strict=True))
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
                lr = opt.lr_at(step, total, effective_batch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                losses["loss"].backward()
                if opt.clip_grad is not None:
                    logged["grad_norm"] = float(
                        torch.nn.utils.clip_grad_norm_(params, opt.clip_grad)
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step, position = step + 1, position + 1
                for k, v in logged.items():
                    window[k] = window.get(k, 0.0) + v
                window_steps += 1
                if step % config.log_every == 0 or step == total:
                    elapsed = time.perf_counter() - window_start
                    last = {k: v / window_steps for k, v in window.items()}
                    last |= {
                        "lr": lr,
                        "samples_per_s": window_steps * effective_batch / max(elapsed, 1e-9),
                    }
                    if env.is_main:
                        out.mkdir(parents=True, exist_ok=True)
                        with log_path.open("a") as f:
                            f.write(json.dumps({"step": step, "epoch": epoch} | last) + "\n")
                    window, window_steps, window_start = {}, 0, time.perf_counter()
                    bar.set_postfix(
                        loss=f"{last['loss']:.4f}", samples_s=f"{last['samples_per_s']:.1f}"
                    )
                bar.update(1)
                if step % config.checkpoint_every == 0 or step == total:
                    save()
                if on_step is not None:
                    on_step(step)
                if step >= total:
                    break
            else:
                epoch, position = epoch + 1, 0
        if env.is_main:
            save_run(out, export(), run_config)
        if env.world_size > 1:
            dist.barrier()
    finally:
        bar.close()
        if env.owns_group and dist.is_initialized():
            dist.destroy_process_group()
    return last


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
