"""Benchmark: bytes read and time of three cube access patterns, layout 1 vs layout 2, one run.

Layout 1 (cube version 1) stored reflectance as one chunk per scene and tile with all bands,
``(1, 224, T, T)``, and the 1-D per-scene coordinates one scene per chunk; layout 2 stores
band-group chunks inside full-band shards (``(1, G, T, T)`` in ``(1, 224, T, T)``) and each
per-scene coordinate in one chunk (docs/cube.md). Both cubes are written here by the same
``CubeWriter`` from the same scenes (layout 1 by switching the schema back), then read through
the library's two readers, each on a store that counts the requests and bytes it returns:

- ``open_cube``: the public reader (lazy indexing, reflectance decoded to float32);
- ``tiles``: the tile builder's and preprocess's reader
  (:func:`hyperkd.pipeline.features.preprocess.open_enmap`: raw int16 through dask, whole
  spectra per task, ``chunks={"band": -1}``).

Patterns:

- ``band map``: one band of one scene, the whole grid;
- ``pixel series``: one pixel's full spectrum in every scene;
- ``spectrum tile``: all bands of one scene in one T x T tile.

"ideal" is the raw int16 size of the values asked for (no compression, nothing extra read).
Time is the median of ``--repeats`` reads (each on a fresh open, so nothing is cached; the
layouts take turns so load on a shared machine hits both alike). ``open`` is the open itself
(root document plus the coordinates xarray loads eagerly): requests and time.

Scenes: real EnMAP L2A reflectance (the 32 x 32 px Potsdam windows of the sample data,
mosaicked, rotated per scene) when ``HYPERKD_SAMPLE_DATA`` is set, else the scene factory.

Last lines, one per reader: ``<reader>: band_map_bytes_new/old=<r> ...
spectrum_tile_time_new/old=<r> ...``.
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
from zarr.storage import WrapperStore

from hyperkd.pipeline.cube import CubeLayout, CubeWriter, Grid, SceneWrite, open_cube, schema
from hyperkd.pipeline.features.preprocess import open_enmap
from hyperkd.pipeline.sensors import enmap_table
from hyperkd.pipeline.store.location import CubeStore

READERS = ("open_cube", "tiles")
Pattern = dict[str, Any] | None
"""An ``isel`` of reflectance; ``None``: the open itself."""
Patterns = dict[str, tuple[Pattern, int]]
"""The patterns by name, each with its ideal bytes."""
Reads = dict[tuple[str, str, int], list[tuple[int, int, float]]]
"""Requests, bytes and seconds of every read, by reader, pattern name and layout."""
Results = dict[tuple[str, str, int], tuple[int, int, float]]
"""Requests and bytes of the last read and the median seconds, by the keys of :data:`Reads`."""


class CountingStore(WrapperStore):
    """A read-only store that adds up the requests and the bytes every read returns."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.bytes = 0
        self.requests = 0

    def _with_store(self, store: Any) -> CountingStore:
        return self  # xarray re-roots the store per group: keep counting in one place

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        buf = await self._store.get(key, prototype, byte_range)
        self.requests += 1
        self.bytes += len(buf) if buf is not None else 0
        return buf

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
        bufs = await self._store.get_partial_values(prototype, key_ranges)
        self.requests += len(bufs)
        self.bytes += sum(len(b) for b in bufs if b is not None)
        return bufs


_counting: list[CountingStore] = []
_zarr_store = CubeStore.zarr_store


def _counted_zarr_store(self: CubeStore, read_only: bool = False) -> Any:
    """``CubeStore.zarr_store`` wrapped in a :class:`CountingStore`: both readers get their
    store here, so what is measured is their own code path."""
    store = CountingStore(_zarr_store(self, read_only=read_only))
    _counting.append(store)
    return store


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
    """A cube of ``data`` in layout 2 (the writer's) or layout 1 (reflectance unsharded, all
    bands per chunk; per-scene coordinates one scene per chunk)."""
    arrays, coord_chunk = schema.CUBE_ARRAYS, schema.COORD_CHUNK
    if layout == 1:
        old = tuple(
            dataclasses.replace(a, chunks=("1", "*", "T", "T"), shards=None)
            if a.name == "reflectance"
            else a
            for a in arrays
        )
        schema.CUBE_ARRAYS, schema.COORD_CHUNK = old, 1  # type: ignore[misc]
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
        schema.CUBE_ARRAYS, schema.COORD_CHUNK = arrays, coord_chunk  # type: ignore[misc]


def use_zarrs() -> None:
    """Decode through the ``zarrs`` Rust codec pipeline from here on (process-wide)."""
    import zarr
    import zarrs  # type: ignore[import-not-found]
    from zarr.registry import register_pipeline

    register_pipeline(zarrs.ZarrsCodecPipeline)
    zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    print(f"reads through the zarrs codec pipeline {zarrs.__version__}")


def open_reader(url: str, reader: str) -> tuple[Any, CountingStore]:
    """The ``enmap`` group as ``reader`` opens it, and the store that counted the open (a
    stand-in counting nothing when the store is not wrapped)."""
    _counting.clear()
    ds = open_cube(url)["enmap"].ds if reader == "open_cube" else open_enmap(url)
    return ds, (_counting[0] if _counting else CountingStore(None))


def read_once(url: str, pattern: dict[str, Any] | None, reader: str) -> tuple[int, int, float]:
    """Requests, bytes and seconds of one read of ``pattern`` (an ``isel`` of reflectance) on
    a fresh open (so nothing is cached); ``None``: of the open itself."""
    start = time.perf_counter()
    ds, store = open_reader(url, reader)
    if pattern is None:
        return store.requests, store.bytes, time.perf_counter() - start
    var = ds["reflectance"]
    store.bytes = store.requests = 0
    start = time.perf_counter()
    _ = var.isel(pattern).values
    return store.requests, store.bytes, time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    """The command line: cube sizes, repeats, readers and the codec pipeline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="scene edge, px (256)")
    parser.add_argument("--scenes", type=int, default=3, help="scenes per cube (3)")
    parser.add_argument("--tile", type=int, default=128, help="tile size T (128)")
    parser.add_argument("--repeats", type=int, default=7, help="reads per pattern (7)")
    parser.add_argument(
        "--reader", choices=READERS, action="append", help="reader(s) to run (default: both)"
    )
    parser.add_argument(
        "--codec-pipeline",
        choices=("zarr", "zarrs"),
        default="zarr",
        help="zarr-python's own codec pipeline (default, what the library uses), or the Rust "
        "one of the `zarrs` package (pip install zarrs; a process-wide zarr setting) for reads",
    )
    return parser.parse_args()


def access_patterns(size: int, tile: int, n_time: int) -> Patterns:
    """The patterns by name, each with its ideal bytes (raw int16 of the values asked for)."""
    s, t = size, tile
    return {
        "open": (None, 0),
        "band map": ({"time": 0, "band": 100}, s * s * 2),
        "pixel series": ({"y": s // 2 + 3, "x": s // 3}, n_time * 224 * 2),
        "spectrum tile": ({"time": 0, "y": slice(0, t), "x": slice(0, t)}, 224 * t * t * 2),
    }


def warm_up(urls: dict[int, str], patterns: Patterns, readers: tuple[str, ...]) -> None:
    """One untimed spectrum-tile read per reader and layout, checked equal across layouts."""
    for reader in readers:
        tiles = [open_reader(url, reader)[0]["reflectance"] for url in urls.values()]
        tile = patterns["spectrum tile"][0]
        np.testing.assert_array_equal(tiles[0].isel(tile).values, tiles[1].isel(tile).values)


def timed_reads(
    urls: dict[int, str],
    patterns: Patterns,
    readers: tuple[str, ...],
    repeats: int,
) -> Reads:
    """``repeats`` reads of every pattern by every reader on both layouts."""
    runs: Reads = {}
    # The layouts take turns (order alternating) so the shared machine's load hits both.
    for r in range(repeats):
        for reader in readers:
            for name, (pattern, _) in patterns.items():
                for layout in (1, 2) if r % 2 == 0 else (2, 1):
                    got = read_once(urls[layout], pattern, reader)
                    runs.setdefault((reader, name, layout), []).append(got)
    return runs


def measure(
    data: list[np.ndarray],
    patterns: Patterns,
    readers: tuple[str, ...],
    args: argparse.Namespace,
) -> Reads:
    """Writes ``data`` as a layout 1 and a layout 2 cube in a temporary directory and times
    the reads of both there."""
    if args.codec_pipeline == "zarr":
        # zarrs reads a plain local store itself; behind the wrapper it would not be used.
        CubeStore.zarr_store = _counted_zarr_store  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        urls = {layout: str(Path(tmp) / f"layout{layout}.zarr") for layout in (1, 2)}
        for layout, url in urls.items():
            write_cube(url, data, args.tile, layout)
        if args.codec_pipeline == "zarrs":
            use_zarrs()  # after writing: only the reads go through it
        warm_up(urls, patterns, readers)
        runs = timed_reads(urls, patterns, readers, args.repeats)
    CubeStore.zarr_store = _zarr_store  # type: ignore[method-assign]
    return runs


def print_table(
    results: Results,
    patterns: Patterns,
    readers: tuple[str, ...],
) -> None:
    """The markdown table: requests, bytes and median time per reader, pattern and layout."""
    print("\n| reader | pattern | ideal bytes | layout | requests | bytes read | / ideal | "
          "time (median) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for reader in readers:
        for name, (_, ideal) in patterns.items():
            for layout in (1, 2):
                req, nbytes, sec = results[reader, name, layout]
                over = f"{nbytes / ideal:.2f}" if ideal and nbytes else ""
                counts = f"{req} | {nbytes}" if nbytes else "n/a | n/a"
                print(
                    f"| {reader} | {name} | {ideal or ''} | {layout} | {counts} | {over} | "
                    f"{sec * 1e3:.1f} ms |"
                )


def print_ratios(
    results: Results,
    patterns: Patterns,
    readers: tuple[str, ...],
) -> None:
    """The last lines, one per reader: layout 2 over layout 1, bytes and time per pattern."""
    for reader in readers:
        summary = []
        for name in patterns:
            key = name.replace(" ", "_")
            (_, b1, t1), (_, b2, t2) = results[reader, name, 1], results[reader, name, 2]
            if b1:
                summary.append(f"{key}_bytes_new/old={b2 / b1:.3f}")
            summary.append(f"{key}_time_new/old={t2 / t1:.2f}")
        print(f"{reader}: " + " ".join(summary))


def main() -> None:
    args = parse_args()
    readers = tuple(args.reader or READERS)
    data = scenes(args.scenes, args.size)
    patterns = access_patterns(args.size, args.tile, args.scenes)
    runs = measure(data, patterns, readers, args)
    results: Results = {
        k: (g[-1][0], g[-1][1], statistics.median(x[2] for x in g)) for k, g in runs.items()
    }
    print_table(results, patterns, readers)
    print()
    print_ratios(results, patterns, readers)


if __name__ == "__main__":
    main()
