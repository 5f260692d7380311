"""Benchmark: bytes read and time of three cube access patterns, layout 1 vs layout 2, one run.

Layout 1 (cube version 1) stored reflectance as one chunk per scene and tile with all bands,
``(1, 224, T, T)``; layout 2 stores 16-band chunks inside full-band shards (``(1, 16, T, T)``
in ``(1, 224, T, T)``, docs/cube.md). Both cubes are written here by the same ``CubeWriter``
from the same scenes (layout 1 by switching the schema's reflectance chunking back), then read
through plain ``xarray.open_zarr`` on a store that counts the bytes it returns:

- ``band map``: one band of one scene, the whole grid;
- ``pixel series``: one pixel's full spectrum in every scene;
- ``spectrum tile``: all bands of one scene in one T x T tile.

"ideal" is the raw int16 size of the values asked for (no compression, nothing extra read).
Time is the median of ``--repeats`` reads (each on a fresh open, so nothing is cached; the
layouts take turns so load on a shared machine hits both alike). Default: lazy indexing
(what ``open_cube`` does); ``--dask stored`` reads through xarray's default dask chunks (one
task per stored chunk), ``--dask spectra`` through whole-spectrum tasks (``chunks={"band":
-1}``, what the tile builder and preprocess use).

Scenes: real EnMAP L2A reflectance (the 32 x 32 px Potsdam windows of the sample data,
mosaicked, rotated per scene) when ``HYPERKD_SAMPLE_DATA`` is set, else the scene factory.

Last line: ``band_map_bytes_new/old=<r> spectrum_tile_time_new/old=<r> ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from zarr.storage import LocalStore, WrapperStore

from hyperkd.pipeline.cube import schema
from hyperkd.pipeline.cube.io import CubeLayout, CubeWriter, Grid, SceneWrite
from hyperkd.pipeline.sensors import enmap_table


class CountingStore(WrapperStore):
    """A read-only store that adds up the bytes every read returns."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.bytes = 0

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        buf = await self._store.get(key, prototype, byte_range)
        self.bytes += len(buf) if buf is not None else 0
        return buf

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
        bufs = await self._store.get_partial_values(prototype, key_ranges)
        self.bytes += sum(len(b) for b in bufs if b is not None)
        return bufs


def real_scene(sample: Path, size: int) -> np.ndarray:
    """``(224, size, size)`` int16 from the real Potsdam windows, tiled with flips."""
    import rasterio

    files = sorted((sample / "enmap_potsdam_l2a" / "images").glob("*.tif"))
    windows = []
    for f in files:
        with rasterio.open(f) as src:
            windows.append(src.read().astype(np.int16))  # (224, 32, 32), x 10000
    w = windows[0].shape[-1]
    out = np.empty((224, size, size), dtype=np.int16)
    for k, (i, j) in enumerate(np.ndindex(size // w, size // w)):
        win = windows[k % len(windows)]
        win = np.rot90(win, k // len(windows), axes=(1, 2))
        out[:, i * w : (i + 1) * w, j * w : (j + 1) * w] = win
    return out


def scenes(n: int, size: int) -> list[np.ndarray]:
    sample = os.environ.get("HYPERKD_SAMPLE_DATA")
    if sample and (Path(sample) / "enmap_potsdam_l2a").is_dir():
        base = real_scene(Path(sample), size)
        print(f"scenes: {n} x real EnMAP L2A (Potsdam windows), {size} x {size} px, 224 bands")
        return [np.rot90(base, t, axes=(1, 2)).copy() for t in range(n)]
    from hyperkd.pipeline.synthetic.factory import RegionSpec, enmap_reflectance, make_surface

    spec = RegionSpec(size_px=size, n_scenes=n, seed=3, cloud_cover=0.0)
    surface = make_surface(spec)
    print(f"scenes: {n} x scene factory, {size} x {size} px, 224 bands")
    return [enmap_reflectance(surface, t, enmap_table().bands) for t in range(n)]


def write_cube(url: str, data: list[np.ndarray], tile: int, layout: int) -> None:
    """A cube of ``data`` in layout 2 (the writer's) or layout 1 (reflectance unsharded)."""
    arrays = schema.CUBE_ARRAYS
    if layout == 1:
        old = tuple(
            dataclasses.replace(a, chunks=("1", "*", "T", "T"), shards=None)
            if a.name == "reflectance"
            else a
            for a in arrays
        )
        schema.CUBE_ARRAYS = old  # type: ignore[misc]
    try:
        bands = enmap_table().bands
        size = data[0].shape[-1]
        grid = Grid("EPSG:32633", (30.0, 0.0, 360000.0, 0.0, -30.0, 5810000.0), (size, size))
        with CubeWriter(url) as writer:
            writer.create(CubeLayout(grid, bands, tile, region="bench"))
            for t, refl in enumerate(data):
                valid = (refl[bands.valid] != bands.nodata).all(axis=0)
                day = np.datetime64("2024-06-01") + np.timedelta64(t, "D")
                writer.append(SceneWrite("enmap", f"scene-{t}", day, refl, valid))
    finally:
        schema.CUBE_ARRAYS = arrays  # type: ignore[misc]


def read_once(url: str, pattern: dict[str, Any], chunks: Any) -> tuple[int, float]:
    """Bytes and seconds of one read of ``pattern`` (an ``isel``) of raw reflectance, on a
    fresh open (so nothing is cached)."""
    store = CountingStore(LocalStore(url, read_only=True))
    ds = xr.open_zarr(store, group="enmap", consolidated=True, mask_and_scale=False, chunks=chunks)
    var = ds["reflectance"]
    store.bytes = 0
    start = time.perf_counter()
    _ = var.isel(pattern).values
    return store.bytes, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="scene edge, px (256)")
    parser.add_argument("--scenes", type=int, default=3, help="scenes per cube (3)")
    parser.add_argument("--tile", type=int, default=128, help="tile size T (128)")
    parser.add_argument("--repeats", type=int, default=7, help="reads per pattern (7)")
    parser.add_argument(
        "--dask",
        choices=("stored", "spectra"),
        default=None,
        help="read through dask: xarray's default chunks (the stored chunks), or whole "
        'spectra per task (chunks={"band": -1}, one shard per task); default: lazy indexing',
    )
    args = parser.parse_args()
    data = scenes(args.scenes, args.size)
    t, s, n_time = args.tile, args.size, args.scenes
    patterns = {
        "band map": ({"time": 0, "band": 100}, s * s * 2),
        "pixel series": ({"y": s // 2 + 3, "x": s // 3}, n_time * 224 * 2),
        "spectrum tile": ({"time": 0, "y": slice(0, t), "x": slice(0, t)}, 224 * t * t * 2),
    }
    results: dict[tuple[str, int], tuple[int, float]] = {}
    chunks = {None: None, "stored": {}, "spectra": {"band": -1}}[args.dask]
    with tempfile.TemporaryDirectory() as tmp:
        urls = {layout: str(Path(tmp) / f"layout{layout}.zarr") for layout in (1, 2)}
        for layout, url in urls.items():
            write_cube(url, data, t, layout)
        # The layouts take turns (order alternating) so the shared machine's load hits both.
        runs: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for r in range(args.repeats):
            for name, (pattern, _) in patterns.items():
                for layout in (1, 2) if r % 2 == 0 else (2, 1):
                    got = read_once(urls[layout], pattern, chunks)
                    runs.setdefault((name, layout), []).append(got)
        for key, got in runs.items():
            results[key] = (got[-1][0], statistics.median(sec for _, sec in got))
    print("\n| pattern | ideal bytes | layout | bytes read | / ideal | time (median) |")
    print("|---|---|---|---|---|---|")
    for name, (_, ideal) in patterns.items():
        for layout in (1, 2):
            nbytes, sec = results[name, layout]
            print(
                f"| {name} | {ideal} | {layout} | {nbytes} | {nbytes / ideal:.2f} | "
                f"{sec * 1e3:.1f} ms |"
            )
    summary = []
    for name in patterns:
        key = name.replace(" ", "_")
        (b1, t1), (b2, t2) = results[name, 1], results[name, 2]
        summary.append(f"{key}_bytes_new/old={b2 / b1:.3f} {key}_time_new/old={t2 / t1:.2f}")
    print("\n" + " ".join(summary))


if __name__ == "__main__":
    main()
