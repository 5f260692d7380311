"""Runs for the evaluation tests, built through the real commands and memoised per session.

Demo tiles: ``hyperkd demo-data`` (the scene factory's region, one EnMAP scene, 256 px) ->
``hyperkd ingest`` -> ``hyperkd tiles --labels landcover=... crop_type=... soc=...`` (the
factory's ground truth rasters), 32-px tiles with 8-px patches. Potsdam tiles: the real EnMAP
L2A tiles through the same path (:mod:`potsdam`). Teachers and students come from ``hyperkd
train-teacher`` and ``hyperkd train`` (tiny presets, a few steps).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from hyperkd.cli import main

_CACHE: dict[str, dict[str, str]] = {}
TRUTH = ("landcover", "crop_type", "soc")


def _run(argv: list[str]) -> None:
    if main(argv) != 0:
        raise RuntimeError(f"hyperkd {' '.join(argv)} failed")


def demo_tiles(root: Path, *, labels: tuple[str, ...] = TRUTH, name: str = "tiles.zarr") -> str:
    """The demo region ingested and cut into 32-px tiles (8-px patches) holding ``labels``."""
    region, cube = root / "region", root / "cube.zarr"
    if not (region / "catalog.json").is_file():
        _run(["demo-data", "--out", str(region), "--size", "small", "--scenes", "1"])
    if not cube.exists():
        _run(["ingest", "--source", str(region / "catalog.json"), "--region", "demo", "--start", "2024-06-01",
              "--end", "2024-06-30", "--out", str(cube), "--tile-size", "32"])  # fmt: skip
    tiles = root / name
    argv = [
        "tiles",
        "--cube",
        str(cube),
        "--out",
        str(tiles),
        "--tile-size",
        "32",
        "--patch-size",
        "8",
    ]
    argv += ["--split-block", "96"]
    for label in labels:
        argv += ["--labels", f"{label}={region / 'truth' / f'{label}.tif'}"]
    _run(argv)
    return str(tiles)


def _budget(steps: int) -> list[str]:
    return ["--preset", "tiny", "--steps", str(steps), "--batch-size", "2", "--lr", "1e-3", "--log-every", "1",
            "--checkpoint-every", str(steps), "--device", "cpu", "--num-workers", "0", "--no-progress"]  # fmt: skip


def train_teacher(tiles: str, out: Path, steps: int = 2) -> str:
    """A tiny ``hyperkd train-teacher`` run on the store's teacher bands; returns its directory."""
    _run(["train-teacher", "--tiles", tiles, "--out", str(out), *_budget(steps)])
    return str(out)


def train_student(
    tiles: str, out: Path, *, teacher: str | None, steps: int = 4, masking: str = "gabor"
) -> str:
    """A tiny ``hyperkd train`` run (``mse+ssim+kld`` with a teacher, else ``mse+ssim``)."""
    argv = ["train", "--tiles", tiles, "--out", str(out), "--masking", masking, *_budget(steps)]
    argv += ["--teacher", teacher, "--loss", "mse+ssim+kld"] if teacher else ["--loss", "mse+ssim"]
    _run(argv)
    return str(out)


def _trained(key: str, root: Path, build_tiles) -> dict[str, str]:  # type: ignore[no-untyped-def]
    if key not in _CACHE:
        tiles = build_tiles()
        teacher = train_teacher(tiles, root / "teacher")
        student = train_student(tiles, root / "student", teacher=teacher)
        _CACHE[key] = {"tiles": tiles, "teacher": teacher, "student": student, "root": str(root)}
    return dict(_CACHE[key])


def demo_run(root: Path) -> dict[str, str]:
    """Demo tiles, a teacher and a distilled student (built once per session)."""
    return _trained("demo", root, lambda: demo_tiles(root))


def potsdam_run(sample_data: Path, root: Path) -> dict[str, str]:
    """The real Potsdam tiles, a teacher and a distilled student (built once per session)."""
    from potsdam import potsdam_tiles

    return _trained("potsdam", root, lambda: potsdam_tiles(sample_data, root))


def ablation(run: dict[str, str], steps: int = 2) -> str:
    """``hyperkd ablate`` on a run's tiles and teacher (tiny, ``steps`` steps of batch 2), once."""
    out = Path(run["root"]) / "ablation"
    if str(out) not in _CACHE:
        argv = ["ablate", "--tiles", run["tiles"], "--teacher", run["teacher"], "--out", str(out)]
        _run([*argv, "--steps", str(steps), "--batch-size", "2", "--device", "cpu"])
        _CACHE[str(out)] = {"out": str(out)}
    return str(out)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` intra-op threads: on the shared 2-core machine one thread is ~10x
    faster than two spin-waiting threads under load, and the results do not change."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
