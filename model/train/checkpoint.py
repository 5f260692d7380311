"""Safe, atomic checkpoints and run directories: safetensors + JSON, never pickle.

A run directory ``DIR`` holds:

- ``model.safetensors`` + ``config.json``: the final weights and what they are (written last);
- ``checkpoints/step-NNNNNNNN/`` with ``model.safetensors`` (trainable weights),
  ``optimizer.safetensors`` (AdamW moments; with Muon also its momentum buffers), ``rng.safetensors`` (torch and masking generator
  states) and ``trainer_state.json`` (step, epoch, param groups, python/numpy RNG);
- ``checkpoints/latest.json``: which checkpoint is complete.

A checkpoint is written into a temporary folder and renamed into place, then ``latest.json`` is
replaced atomically (temp file + ``os.replace``), so a kill at any moment leaves the previous
checkpoint intact and referenced.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest.json"

_log = logging.getLogger(__name__)
FILE_MODE, DIR_MODE = 0o644, 0o755
"""Run outputs are readable by the group and others (``mkstemp``/``mkdtemp`` give 0600/0700):
a model a scheduled flow trained is read by other users of the shared storage."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """``safetensors`` file written to a temporary name and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata
        )
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- optimizer state <-> (tensors, JSON) ---


def optimizer_to_tensors(
    state: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``state/<param>/<name>``) and JSON."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{index}/{name}"] = value
            else:
                plain.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain}


def optimizer_from_tensors(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split("/", 2)
        state.setdefault(int(index), {})[name] = value
    for index, entry in meta["plain_state"].items():
        state.setdefault(int(index), {}).update(entry)
    groups = [
        dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


# --- training checkpoints ---


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model: Mapping[str, torch.Tensor],
    optimizer: Mapping[str, Any],
    rng: Mapping[str, torch.Tensor],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest.json`` at it; returns its folder."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:08d}.", dir=root))
    try:
        opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.items()}, tmp / "model.safetensors"
        )
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in opt_tensors.items()},
            tmp / "optimizer.safetensors",
        )
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in rng.items()}, tmp / "rng.safetensors"
        )
        (tmp / "trainer_state.json").write_text(
            json.dumps(dict(state, step=step, optimizer=opt_meta), indent=1)
        )
        for f in tmp.iterdir():
            os.chmod(f, FILE_MODE)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, DIR_MODE)
        if final.exists():
            # Left over from a run killed between the rename and latest.json: never referenced.
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, json.dumps({"step": step, "path": final.name}))
    _prune(root, keep, final.name)
    return final


def _prune(root: Path, keep: int, current: str) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[: max(0, len(done) - keep)]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*"):  # temporary folders of killed writers
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The last complete checkpoint folder of a run, or None."""
    pointer = run_dir / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    folder = pointer.parent / json.loads(pointer.read_text())["path"]
    if not (folder / "trainer_state.json").is_file():
        raise ValueError(f"checkpoint {folder} named by {pointer} is incomplete")
    return folder


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """``model``, ``optimizer`` (a loadable state dict), ``rng`` tensors and ``state`` JSON."""
    state = json.loads((folder / "trainer_state.json").read_text())
    return {
        "model": load_file(folder / "model.safetensors"),
        "optimizer": optimizer_from_tensors(
            load_file(folder / "optimizer.safetensors"), state.pop("optimizer")
        ),
        "rng": load_file(folder / "rng.safetensors"),
        "state": state,
    }


def resume_point(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a run that loads, with its contents; None without any.

    ``latest.json``'s checkpoint comes first. When it does not load (a truncated or
    corrupted file, a missing one, bad JSON), the older checkpoints follow, newest first, and
    the one taken instead is logged as a warning. ``ValueError`` when none loads.
    """
    root = run_dir / "checkpoints"
    named = None
    try:
        named = root / json.loads((root / LATEST).read_text())["path"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _log.warning("%s is unreadable (%s); looking for an older checkpoint", root / LATEST, exc)
    older = sorted((p for p in root.glob("step-*") if p.is_dir() and p != named), reverse=True)
    failures = []
    for folder in [named, *older] if named is not None else older:
        try:
            loaded = load_checkpoint(folder)
        except Exception as exc:  # any unreadable part: safetensors, JSON, missing files
            failures.append(f"{folder.name}: {type(exc).__name__}: {exc}")
            continue
        if failures:
            _log.warning(
                "checkpoint %s does not load (%s); resuming from the previous good one, %s",
                failures[0].split(":", 1)[0], failures[0].split(": ", 1)[1], folder.name,
            )  # fmt: skip
        return folder, loaded
    raise ValueError(f"no checkpoint in {root} loads: {'; '.join(failures) or 'none complete'}")


# --- run directories: final weights + config.json ---


def save_run(run_dir: Path, weights: Mapping[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Final ``model.safetensors``, the model card ``README.md`` and STAC ``item.json``, then
    ``config.json`` (its presence marks a finished run)."""
    atomic_save_tensors(run_dir / "model.safetensors", weights, metadata={"format": "pt"})
    write_card(run_dir, weights, config)
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=1, sort_keys=True))


def write_card(
    run_dir: Path,
    weights: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None = None,
) -> None:
    """``README.md`` (model card) and ``item.json`` (STAC MLM item) of a run directory, with
    the last logged training metrics and, when given, an evaluation's ``metrics.json``."""
    from hyperkd.model.train.card import last_logged, mlm_item, model_card

    log = run_dir / "metrics.jsonl"
    training = last_logged(log.read_text().splitlines()) if log.is_file() else None
    if training is not None:
        training.pop("step", None)
    scores = {k: v for k, v in (evaluation or {}).items() if isinstance(v, (int, float))}
    atomic_write_text(run_dir / "README.md", model_card(config, weights, training, evaluation))
    item = mlm_item(config, weights, scores or training)
    atomic_write_text(run_dir / "item.json", json.dumps(item, indent=1))


def read_run(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A run directory's ``config.json`` and weights; a clear error if it is not a run."""
    run_dir = Path(path)
    config_path, weights_path = run_dir / "config.json", run_dir / "model.safetensors"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {run_dir}")
    if not config_path.is_file() or not weights_path.is_file():
        raise ValueError(
            f"{run_dir} is not a finished run: it needs config.json and model.safetensors"
        )
    try:
        return json.loads(config_path.read_text()), load_file(weights_path)
    except Exception as exc:  # SafetensorError (no stable import path), bad JSON
        raise ValueError(f"{run_dir} holds an unreadable run: {type(exc).__name__}: {exc}") from exc
