"""Small in-memory scenes in the cube's ``enmap`` layout, for tile-store and loader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

CRS = "EPSG:32633"
X0, Y0, RES = 362175.0, 5809965.0, 30.0


def make_scene(
    height: int = 128,
    width: int = 128,
    bands: int = 8,
    patch: int = 16,
    *,
    seed: int = 0,
    scene_id: str = "ENMAP_TEST_0",
    time: str = "2022-07-24T10:45:26",
    invalid_box: tuple[int, int, int, int] | None = None,
    nodata_band: int | None = 3,
) -> xr.Dataset:
    """One time step of a cube's ``enmap`` group, raw int16, with a spatial_ref grid mapping.

    Reflectance is a smooth per-band ramp plus noise (values ~ 300..4000, reflectance x
    10000); band ``nodata_band`` is a bad band (``valid_band`` False, all nodata).
    ``invalid_box = (y0, y1, x0, x1)`` marks pixels not valid (nodata in every band).
    """
    import rioxarray  # noqa: F401

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 300 + 10 * np.arange(bands, dtype=np.float32)[:, None, None] * 30
    refl = base + 3 * yy + 2 * xx + rng.normal(0, 50, (bands, height, width))
    refl = np.clip(refl, 1, 10000).astype(np.int16)
    valid = np.ones((height, width), dtype=bool)
    valid_band = np.ones(bands, dtype=bool)
    if nodata_band is not None:
        refl[nodata_band] = -32768
        valid_band[nodata_band] = False
    if invalid_box is not None:
        a, b, c, d = invalid_box
        valid[a:b, c:d] = False
        refl[:, a:b, c:d] = -32768
    teacher = np.stack([refl[valid_band][i::6][:1].mean(0) for i in range(6)]).astype(np.int16)
    teacher[:, ~valid] = -9999
    gy, gx = height // patch, width // patch
    gabor = rng.random((gy, gx), dtype=np.float32)
    wavelet = rng.random((gy, gx), dtype=np.float32)
    ds = xr.Dataset(
        {
            "reflectance": (("band", "y", "x"), refl),
            "valid": (("y", "x"), valid),
            "teacher_bands": (("teacher_band", "y", "x"), teacher),
            "significance_gabor": (("py", "px"), gabor),
            "significance_wavelet": (("py", "px"), wavelet),
        },
        coords={
            "band": np.arange(bands),
            "y": Y0 - RES / 2 - RES * np.arange(height),
            "x": X0 + RES / 2 + RES * np.arange(width),
            "wavelength": ("band", np.linspace(420.0, 2440.0, bands)),
            "fwhm": ("band", np.full(bands, 8.0)),
            "valid_band": ("band", valid_band),
            "teacher_band": ["blue", "green", "red", "nir_narrow", "swir1", "swir2"],
            "scene_id": scene_id,
            "time": np.datetime64(time, "ns"),
        },
    )
    return ds.rio.write_crs(CRS)


def factory_cube(url: str, spec: object, n_scenes: int = 2, tile_size: int = 32) -> None:
    """A cube from the scene factory, written with the cube writer (clouds masked in valid).

    Stands in for ``hyperkd ingest`` of the factory's products until that path exists.
    """
    from hyperkd.pipeline.cube import CubeLayout, CubeWriter, Grid, SceneWrite
    from hyperkd.pipeline.sensors import enmap_table
    from hyperkd.pipeline.synthetic.factory import (
        cloud_fields,
        enmap_reflectance,
        is_cloudy,
        make_surface,
    )

    surface = make_surface(spec)
    bands = enmap_table().bands
    n = spec.size_px
    grid = Grid(f"EPSG:{spec.crs_epsg}", tuple(spec.enmap_transform)[:6], (n, n))
    with CubeWriter(url) as writer:
        writer.create(CubeLayout(grid, bands, tile_size, region="tiles-test"))
        for t in range(n_scenes):
            dn = enmap_reflectance(surface, t, bands)
            opacity, _, shadow = cloud_fields(
                spec.seed, spec.cloud_cover, (n, n), (1, t), is_cloudy("enmap", t)
            )
            valid = (
                (dn[bands.valid] != bands.nodata).all(axis=0) & (opacity <= 0.08) & (shadow <= 0.2)
            )
            writer.append(SceneWrite("enmap", f"scene-{t}", spec.enmap_dates[t], dn, valid))


def _label_raster(path: Path) -> str:
    import rasterio

    data = (np.arange(160 * 192).reshape(160, 192) % 5).astype(np.uint8)
    transform = rasterio.transform.Affine(RES, 0, X0, 0, -RES, Y0)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=192,
        height=160,
        count=1,
        dtype="uint8",
        crs=CRS,
        transform=transform,
    ) as dst:
        dst.write(data, 1)
    return str(path)


def labelled_store(tmp: Path) -> str:
    """A tile store (32 px tiles, 8 px patches) of two 160 x 192 scenes with invalid boxes
    and a ``landcover`` label, for the loader tests."""
    from hyperkd.pipeline.tiles.build import TileConfig, write_tile_store

    scenes = [
        make_scene(160, 192, patch=8, seed=0, invalid_box=(0, 40, 0, 60)),
        make_scene(
            160,
            192,
            patch=8,
            seed=1,
            scene_id="ENMAP_TEST_1",
            time="2022-08-01",
            invalid_box=(100, 110, 0, 192),
        ),
    ]
    out = str(tmp / "tiles.zarr")
    config = TileConfig(tile_size=32, patch_size=8, split_block_px=64)
    write_tile_store(scenes, out, config, labels={"landcover": _label_raster(tmp / "lc.tif")})
    return out
