"""Labelled tile stores from the scene factory, for the evaluation tests (downstream, report).

The store is cut by the real tile-store writer (:func:`hyperkd.pipeline.tiles.write_tile_store`)
from a factory scene whose teacher bands and significance maps come from the real preprocess
functions; the factory's ground truth (land cover, crop type, SOC) enters as GeoTIFF label
rasters, the way ``hyperkd tiles --labels NAME=RASTER`` brings them in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr


def factory_scene(
    size_px: int = 128, *, patch: int = 8, seed: int = 0
) -> tuple[xr.Dataset, dict[str, np.ndarray]]:
    """One EnMAP scene in the cube's ``enmap`` layout, plus its truth rasters ``(y, x)``."""
    import rioxarray  # noqa: F401

    from hyperkd.pipeline import synthetic
    from hyperkd.pipeline.aggregate import teacher_bands
    from hyperkd.pipeline.significance import SignificanceConfig, significance_maps

    spec = synthetic.RegionSpec(size_px=size_px, seed=seed, n_scenes=1, cloud_cover=0.0)
    surface = synthetic.make_surface(spec)
    bands = spec.enmap_bands
    dn = synthetic.enmap_reflectance(surface, 0)  # (band, y, x) int16
    valid_band = np.ones(len(bands), dtype=bool)
    valid_band[sorted(bands.nodata_bands)] = False
    valid = np.all(dn[valid_band] != bands.nodata, axis=0)
    transform = spec.enmap_transform
    coords = {
        "band": np.arange(len(bands)),
        "y": transform.f + transform.e * (np.arange(size_px) + 0.5),
        "x": transform.c + transform.a * (np.arange(size_px) + 0.5),
        "wavelength": ("band", np.asarray(bands.wavelengths, dtype=np.float64)),
        "fwhm": ("band", np.asarray(bands.fwhms, dtype=np.float64)),
        "valid_band": ("band", valid_band),
    }
    refl = xr.DataArray(dn[None], dims=("time", "band", "y", "x"), coords=coords)
    refl = refl.assign_coords(time=[np.datetime64(spec.enmap_dates[0], "ns")])
    teacher = teacher_bands(refl, nodata=bands.nodata).compute()
    valid_t = xr.DataArray(
        valid[None], dims=("time", "y", "x"), coords={"time": refl.time, "y": refl.y, "x": refl.x}
    )
    sig = significance_maps(teacher, valid_t, SignificanceConfig(patch_size=patch)).compute()
    scene = xr.Dataset(
        {
            "reflectance": refl[0],
            "valid": valid_t[0],
            "teacher_bands": teacher[0],
            "significance_gabor": sig["significance_gabor"][0],
            "significance_wavelet": sig["significance_wavelet"][0],
        }
    )
    scene = scene.assign_coords(scene_id=f"ENMAP_FACTORY_{seed}").rio.write_crs(
        f"EPSG:{spec.crs_epsg}"
    )
    scene = scene.rio.write_transform(transform)
    truth = {"landcover": surface.landcover, "crop_type": surface.crop_type, "soc": surface.soc}
    return scene, truth


def write_label_raster(path: Path, data: np.ndarray, scene: xr.Dataset) -> Path:
    """A single-band GeoTIFF of ``data`` ``(y, x)`` on ``scene``'s grid."""
    import rasterio

    nodata = float("nan") if np.issubdtype(data.dtype, np.floating) else None
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=data.shape[0],
        width=data.shape[1],
        count=1,
        dtype=data.dtype,
        crs=scene.rio.crs,
        transform=scene.rio.transform(recalc=False),
        nodata=nodata,
    ) as dst:
        dst.write(data, 1)
    return path


def factory_tile_store(
    out_dir: Path,
    *,
    size_px: int = 128,
    tile: int = 32,
    patch: int = 8,
    seed: int = 0,
    block: int | None = None,
    labels: tuple[str, ...] = ("landcover", "crop_type", "soc"),
) -> str:
    """A tile store (``out_dir/tiles.zarr``) with the factory's truth as labels; returns its path."""
    from hyperkd.pipeline.tiles import TileConfig, write_tile_store

    out_dir.mkdir(parents=True, exist_ok=True)
    scene, truth = factory_scene(size_px, patch=patch, seed=seed)
    paths = {
        name: str(write_label_raster(out_dir / f"{name}.tif", truth[name], scene))
        for name in labels
    }
    cfg = TileConfig(
        tile_size=tile,
        patch_size=patch,
        split_block_px=block or 2 * tile,
        split_fractions=(0.6, 0.2, 0.2),
        seed=seed,
    )
    url = str(out_dir / "tiles.zarr")
    write_tile_store([scene], url, cfg, labels=paths)
    return url


# --- trained runs, built once per test session (each test file asks; the first one builds) ---

_CACHE: dict[str, object] = {}


def _train(out: Path, steps: int, batch: int) -> object:
    from hyperkd.model.config import OptimConfig, TrainConfig

    return TrainConfig(
        out=str(out), steps=steps, batch_size=batch, optim=OptimConfig(lr=1e-3), log_every=1,
        checkpoint_every=steps, device="cpu", num_workers=0, progress=False,
    )  # fmt: skip


def train_teacher(tiles: str, out: Path, steps: int = 2) -> str:
    """A tiny ``train-teacher`` run on the store's teacher bands; returns its directory."""
    from hyperkd.model.config import TeacherPretrainConfig
    from hyperkd.model.runs import run_teacher_pretrain

    run_teacher_pretrain(
        TeacherPretrainConfig(tiles=tiles, train=_train(out, steps, 2), preset="tiny")
    )  # type: ignore[arg-type]
    return str(out)


def train_student(
    tiles: str, out: Path, *, teacher: str | None, steps: int = 4, masking: str = "gabor"
) -> str:
    """A tiny ``hyperkd train`` run (``mse+ssim+kld`` with a teacher, else ``mse+ssim``)."""
    from hyperkd.model.config import DistillConfig
    from hyperkd.model.losses import LossConfig
    from hyperkd.model.masking import Masking
    from hyperkd.model.runs import run_distill

    loss = LossConfig("mse+ssim+kld" if teacher else "mse+ssim")
    cfg = DistillConfig(
        tiles=tiles,
        train=_train(out, steps, 2),
        teacher=teacher,
        preset="tiny",
        masking=Masking(masking),
        loss=loss,
    )  # type: ignore[arg-type]
    run_distill(cfg)
    return str(out)


def factory_run(root: Path) -> dict[str, str]:
    """A labelled factory tile store, a teacher and a distilled student (memoised per session)."""
    if "factory" not in _CACHE:
        tiles = factory_tile_store(root / "store")
        teacher = train_teacher(tiles, root / "teacher")
        student = train_student(tiles, root / "student", teacher=teacher)
        _CACHE["factory"] = {
            "tiles": tiles,
            "teacher": teacher,
            "student": student,
            "root": str(root),
        }
    return dict(_CACHE["factory"])  # type: ignore[arg-type]


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


def factory_ablation(root: Path, steps: int = 2) -> str:
    """``hyperkd ablate`` on the factory store (tiny preset, ``steps`` steps of batch 2), memoised."""
    if "ablation" not in _CACHE:
        from hyperkd.cli import main

        run = factory_run(root)
        out = Path(run["root"]) / "ablation"
        argv = ["ablate", "--tiles", run["tiles"], "--teacher", run["teacher"], "--out", str(out)]
        argv += ["--steps", str(steps), "--batch-size", "2", "--device", "cpu"]
        if main(argv) != 0:
            raise RuntimeError("hyperkd ablate failed on the factory store")
        _CACHE["ablation"] = str(out)
    return str(_CACHE["ablation"])
