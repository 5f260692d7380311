"""Runs from configs: student distillation and teacher pretraining on a tile store.

Each run directory ends with ``model.safetensors`` + ``config.json``; ``config.json`` says what
the weights are (``kind``: ``student`` or ``teacher``), their architecture, and the tile store
statistics they were trained with, so ``--teacher``/``--checkpoint`` accept a run directory.
A teacher run saves the official flat Prithvi layout, so it loads exactly like Prithvi weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from hyperkd.model.nets.mae import MAEConfig, StudentMAE, student_config
from hyperkd.model.nets.masking import Masking
from hyperkd.model.nets.prithvi import (
    PrithviConfig,
    PrithviMAE,
    Teacher,
    load_prithvi_state_dict,
    teacher_config,
)
from hyperkd.model.train.checkpoint import atomic_write_text, read_run
from hyperkd.model.train.config import (
    DistillConfig,
    TeacherPretrainConfig,
    TrainConfig,
)
from hyperkd.model.train.distributed import DistEnv, LoaderFactory
from hyperkd.model.train.losses import LossConfig
from hyperkd.model.train.split import (
    cache_train_split,
    component_cache,
    open_train_split,
    train_pixels,
)
from hyperkd.model.train.tasks import DistillationTask, TeacherPretrainTask
from hyperkd.model.train.trainer import fit
from hyperkd.pipeline.sensors import prithvi_preset

_logger = logging.getLogger(__name__)

_INFO_FIELDS = (
    "n_bands", "tile_size", "patch_size", "student_mean", "student_std", "band_wavelength",
    "teacher_bands", "teacher_mean", "teacher_std",
)  # fmt: skip


def tile_store_summary(info: Any) -> dict[str, Any]:
    """The tile store facts a model depends on (``TileStoreInfo`` fields), JSON-able."""
    out = {}
    for name in _INFO_FIELDS:
        value = getattr(info, name, None)
        out[name] = (
            list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
        )
    return json.loads(json.dumps(out, default=float))


RANDOM_TEACHER = "random:"
"""Prefix of a ``--teacher`` that names a randomly initialised architecture (a control)."""


def relative_paths(spec: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """A run spec with its local paths (``tiles``, ``teacher``, ``train.out``) made relative
    to the run directory, so ``config.json`` holds no absolute path; URLs stay as they are."""

    def rel(value: Any) -> Any:
        if not isinstance(value, str) or "://" in value or value.startswith(RANDOM_TEACHER):
            return value  # a URL, or a teacher that is no file
        return os.path.relpath(os.path.abspath(value), os.path.abspath(run_dir))

    out = dict(spec, tiles=rel(spec.get("tiles")))
    if spec.get("teacher") is not None:
        out["teacher"] = rel(spec["teacher"])
    if isinstance(spec.get("train"), dict):
        out["train"] = dict(spec["train"], out=rel(spec["train"].get("out")))
    return out


def open_tiles(url: str, split: str, storage_options: dict[str, Any] | None) -> Any:
    """The tile store split as a torch Dataset (:class:`hyperkd.model.data.dataset.TileDataset`)."""
    from hyperkd.model.data.dataset import TileDataset

    return TileDataset(url, split=split, storage_options=storage_options)


def _check_norm(
    name: str, expected: Sequence[float] | None, actual: Sequence[float] | None
) -> None:
    if expected is None or actual is None:
        return
    e, a = (
        torch.tensor(list(expected), dtype=torch.float64),
        torch.tensor(list(actual), dtype=torch.float64),
    )
    if e.shape != a.shape or not torch.allclose(e, a, rtol=1e-3):
        raise ValueError(
            f"the tile store normalises teacher bands with {name} {[round(v, 1) for v in a.tolist()]}, "
            f"but the teacher was trained with {[round(v, 1) for v in e.tolist()]}"
        )


def _patch_of(state: dict[str, torch.Tensor]) -> int:
    for key, value in state.items():
        if key.endswith("patch_embed.proj.weight") and value.dim() == 5:
            return int(value.shape[-1])
    raise ValueError("teacher weights hold no patch_embed.proj.weight (Conv3d)")


def random_teacher(preset: str, *, img_size: int, patch_size: int | None, seed: int) -> Teacher:
    """A frozen teacher of architecture ``preset`` with random weights drawn from ``seed``."""
    config = teacher_config(preset, img_size=img_size, patch_size=patch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PrithviMAE(config)
    return Teacher(model)


def load_teacher(
    spec: str,
    *,
    img_size: int,
    preset: str = "prithvi-eo-1.0-100m",
    teacher_mean: Sequence[float] | None = None,
    teacher_std: Sequence[float] | None = None,
    patch_size: int | None = None,
    seed: int = 0,
) -> Teacher:
    """A frozen teacher from a ``train-teacher`` run directory or an official Prithvi file.

    Official ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` (no
    arbitrary unpickling), ``.safetensors`` with safetensors; their architecture is ``preset``.
    The teacher is rebuilt for ``img_size`` tiles (positional tables adapted), and its input
    normalisation must match the tile store's teacher statistics.

    ``random:<preset>`` is the control teacher: the preset's architecture, randomly initialised
    from ``seed`` (no weights, so it knows nothing), with ``patch_size`` for ``tiny``. Distilling
    from it tells the effect of the teacher's knowledge apart from the KLD acting as a
    regulariser.
    """
    if spec.startswith(RANDOM_TEACHER):
        return random_teacher(
            spec.removeprefix(RANDOM_TEACHER), img_size=img_size, patch_size=patch_size, seed=seed
        )
    path = Path(spec)
    if path.is_dir():
        run, state = read_run(path)
        if run.get("kind") != "teacher":
            raise ValueError(f"{path} holds a {run.get('kind')!r} run, not a teacher")
        config = dataclasses.replace(PrithviConfig(**run["model"]), img_size=img_size)
        frames, mean, std = 1, run["tile_store"]["teacher_mean"], run["tile_store"]["teacher_std"]
    elif path.is_file():
        state = _read_weights(path)
        config, frames, mean, std = _preset_architecture(preset, state, img_size=img_size)
    else:
        raise FileNotFoundError(f"no teacher at {spec}")
    _check_norm("mean", mean, teacher_mean)
    _check_norm("std", std, teacher_std)
    model = PrithviMAE(config)
    load_prithvi_state_dict(model, state, frames=frames)
    return Teacher(model)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an official teacher file: ``.pt``/``.pth``/``.bin``/``.ckpt`` read
    weights only (no arbitrary unpickling; a ``model`` or ``state_dict`` entry unwrapped, other
    entries dropped), ``.safetensors`` with safetensors."""
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"teacher {path} holds more than tensors; it is not unpickled (weights only)"
            ) from exc
        if not isinstance(loaded, dict):
            raise ValueError(f"teacher {path} holds no state dict")
        for key in ("model", "state_dict"):
            if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
                loaded = loaded[key]
        return {k: v for k, v in loaded.items() if torch.is_tensor(v)}
    if path.suffix == ".safetensors":
        return load_file(path)
    raise ValueError(f"teacher {path}: expected a run directory, a .pt or a .safetensors file")


def _preset_architecture(
    preset: str, state: dict[str, torch.Tensor], *, img_size: int
) -> tuple[PrithviConfig, int, list[float] | None, list[float] | None]:
    """``(config, frames, mean, std)`` of official weights ``state`` of architecture ``preset``,
    rebuilt for ``img_size`` tiles: the frames the weights hold and the teacher-band statistics
    they were trained with (None: unknown)."""
    if preset == "tiny":
        # Not a published model: its patch comes from the weights, its statistics are unknown.
        patch = _patch_of(state)
        return teacher_config("tiny", img_size=img_size, patch_size=patch), 1, None, None
    config = teacher_config(preset, img_size=img_size)
    p = prithvi_preset(preset)
    return config, p.num_frames, list(p.mean), list(p.std)


def distill_config(
    tiles: str,
    teacher: str | None,
    train: TrainConfig,
    *,
    preset: str = "tiny",
    masking: str = "gabor",
    loss: str = "mse+ssim+kld",
    mask_ratio: float = 0.75,
    teacher_preset: str = "prithvi-eo-1.0-100m",
    storage_options: dict[str, Any] | None = None,
) -> DistillConfig:
    """A :class:`DistillConfig` from plain names (what the CLI and flows pass)."""
    return DistillConfig(
        tiles=tiles,
        train=train,
        teacher=teacher,
        teacher_preset=teacher_preset,
        preset=preset,
        masking=Masking(masking, mask_ratio),
        loss=LossConfig(loss),
        storage_options=storage_options,
    )


def write_run_manifest(
    run_dir: str | Path, *, tiles: str, student: str | None = None, teacher: str | None = None
) -> Path:
    """``RUN/run.json`` naming the tile store and the student/teacher runs of a report folder.

    Where the student or teacher run lives elsewhere on the local disk, ``RUN/student`` and
    ``RUN/teacher`` become symlinks to it, so the folder has the layout ``hyperkd report`` reads.
    """
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for name, target in (("student", student), ("teacher", teacher)):
        if target is None or "://" in target or not Path(target).is_dir():
            continue
        link = root / name
        if link.resolve() != Path(target).resolve() and not link.exists():
            link.symlink_to(Path(target).resolve(), target_is_directory=True)
    manifest = {"tiles": tiles, "student": student, "teacher": teacher}
    atomic_write_text(root / "run.json", json.dumps(manifest, indent=1))
    return root / "run.json"


def run_distill(
    config: DistillConfig,
    *,
    dataset: Any = None,
    env: DistEnv | None = None,
    loader_factory: LoaderFactory | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """``hyperkd train``: the student MAE on the tile store's train split."""
    env, dataset = open_train_split(config, env, dataset)
    info = dataset.info
    student = StudentMAE(
        student_config(
            config.preset,
            img_size=info.tile_size,
            patch_size=info.patch_size,
            in_chans=info.n_bands,
            spectral_dim=config.spectral_dim,
            spectral_basis=config.spectral_basis,
        )
    )
    if config.spectral_dim:
        student.init_spectral_basis(train_pixels(dataset))
    teacher = None
    if config.loss.use_kd:
        if config.teacher is None:
            raise ValueError(f"loss {config.loss.terms!r} needs --teacher")
        teacher = load_teacher(
            config.teacher,
            img_size=info.tile_size,
            preset=config.teacher_preset,
            teacher_mean=getattr(info, "teacher_mean", None),
            teacher_std=getattr(info, "teacher_std", None),
            patch_size=info.patch_size,
            seed=config.train.seed,
        )
    task = DistillationTask(student, config.masking, config.loss, teacher)
    dataset, loader_factory = cache_train_split(
        config, env, dataset, loader_factory, fields=task.batch_fields, **component_cache(task)
    )
    run_config = {
        "kind": "student",
        "model": student.config.to_dict(),
        "run": relative_paths(config.to_dict(), config.train.out),
        "tile_store": tile_store_summary(info),
        "teacher": None if teacher is None else teacher.config.to_dict(),
    }
    return fit(
        task,
        dataset,
        config.train,
        run_config=run_config,
        export=lambda: dict(task.student.state_dict()),
        env=env,
        loader_factory=loader_factory,
        on_step=on_step,
    )


def run_teacher_pretrain(
    config: TeacherPretrainConfig,
    *,
    dataset: Any = None,
    env: DistEnv | None = None,
    loader_factory: LoaderFactory | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """``hyperkd train-teacher``: MAE pretraining of a Prithvi architecture on teacher tiles."""
    env, dataset = open_train_split(config, env, dataset)
    # Cached first: reading the split draws a loader seed from torch's RNG, and the teacher's
    # weights have always come after that draw.
    dataset, loader_factory = cache_train_split(
        config, env, dataset, loader_factory, fields=TeacherPretrainTask.batch_fields
    )
    info = dataset.info
    model = PrithviMAE(
        teacher_config(config.preset, img_size=info.tile_size, patch_size=info.patch_size)
    )
    task = TeacherPretrainTask(model, Masking("random", config.mask_ratio))
    run_config = {
        "kind": "teacher",
        "model": model.config.to_dict(),
        "run": relative_paths(config.to_dict(), config.train.out),
        "tile_store": tile_store_summary(info),
    }
    return fit(
        task,
        dataset,
        config.train,
        run_config=run_config,
        export=lambda: dict(model.state_dict()),
        env=env,
        loader_factory=loader_factory,
        on_step=on_step,
    )


def load_student(checkpoint: str) -> tuple[StudentMAE, dict[str, Any]]:
    """A student run directory -> (model in eval mode, its config.json)."""
    run, state = read_run(checkpoint)
    if run.get("kind") != "student":
        raise ValueError(f"{checkpoint} holds a {run.get('kind')!r} run, not a student")
    model = StudentMAE(MAEConfig(**run["model"]))
    model.load_state_dict(state, strict=True)
    return model.eval(), run


def check_student_fits(model: StudentMAE, info: Any, tiles: str) -> None:
    """ValueError (one line) unless the tile store ``tiles`` (its ``info``) has the bands, tile
    size and patch size the student was trained on."""
    c = model.config
    if (info.n_bands, info.tile_size, info.patch_size) != (c.in_chans, c.img_size, c.patch_size):
        raise ValueError(
            f"tile store {tiles} has {info.n_bands} bands, {info.tile_size}-px tiles and "
            f"{info.patch_size}-px patches; the student was trained on {c.in_chans}, "
            f"{c.img_size} and {c.patch_size}"
        )
