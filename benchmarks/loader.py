"""Tile loader throughput: our loader vs a naive xarray loader vs the raw zarr floor.

Builds a demo cube with the scene factory (218 valid of 224 bands, tiles 128 px), tiles it
with ``build_tiles``, then times one pass over every tile, several times (medians):

* ``loader_w{0,1,2}``: ``make_loader(TileDataset(...))`` with 0, 1 and 2 workers, batch 4,
  shuffled, steady state (after a warm-up epoch that starts the persistent workers);
  the methods take turns, one pass each per repeat;
* ``naive``: the xbatcher way: the cube opened with xarray (CF decoding, dask), one
  ``isel(...).load()`` per sample in one process, then the sample the loader returns
  (normalised student and teacher, significance maps, valid mask; checked equal to the
  loader's on the first tile), as tensors;
* ``naive_reads``: the same reads without building the sample (the baseline before
  2026-11-26, session 3);
* ``w0_step`` / ``w0_step_no_ahead``: the 0-worker loader with and without its read-ahead
  while the "trainer" waits ``--step-ms`` per batch (a GPU-bound step), which is where
  reading the next batch ahead pays; printed as a ratio, not part of the last line;
* ``floor``: raw chunk reads + decompression with zarr into numpy, one process, no
  processing, of the same arrays the loader reads.

Sizes are counted as the stored (uncompressed) bytes of a tile's arrays, the same for all.
Prints tiles/s, MB/s and ratios; the last line is
``loader/floor=<r> loader/naive=<r>`` for the loader's best worker count; the line before it
gives ``loader/naive_reads``.

    .venv/bin/python benchmarks/loader.py [--size 512] [--scenes 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    import xarray as xr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def build_inputs(work: Path, size: int, scenes: int) -> tuple[str, str]:
    from tile_helpers import factory_cube

    from hyperkd.pipeline.features.preprocess import preprocess_cube
    from hyperkd.pipeline.synthetic.factory import RegionSpec
    from hyperkd.pipeline.tiles.build import TileConfig, build_tiles

    cube, tiles = str(work / "cube.zarr"), str(work / "tiles.zarr")
    spec = RegionSpec(size_px=size, n_scenes=scenes, seed=3, cloud_cover=0.0)
    t = time.perf_counter()
    if not Path(cube).exists():  # a kept --workdir is reused
        factory_cube(cube, spec, n_scenes=scenes, tile_size=128)
    # The naive baseline reads teacher bands and maps from the cube: store them there
    # (`hyperkd tiles` only reads the cube).
    preprocess_cube(cube)
    # Every tile in train and none dropped: the benchmark wants all tiles of the cube.
    cfg = TileConfig(
        tile_size=128,
        patch_size=16,
        min_valid=0.0,
        split_fractions=(1.0, 0.0, 0.0),
        allow_empty_splits=True,
    )
    summary = build_tiles(cube, tiles, cfg)
    print(
        f"inputs: cube {size}x{size}x224 x {scenes} scenes, {summary.n_tiles} tiles, built in {time.perf_counter() - t:.1f} s"
    )
    return cube, tiles


def loader_pass(
    tiles: str, workers: int, step_s: float = 0.0, read_ahead: bool = True
) -> Callable[[], float]:
    """One timed epoch of ``make_loader`` per call; the loader (and its persistent workers)
    is built once and warmed up by one untimed epoch.

    ``step_s``: after each batch, wait this long, as a trainer waiting on its GPU would.
    ``read_ahead=False`` turns off the read-ahead of the 0-worker loader.
    """
    from hyperkd.model.data.dataset import TileDataset
    from hyperkd.model.data.loader import make_loader

    ds = TileDataset(tiles, split=None)
    loader = make_loader(ds, batch_size=4, num_workers=workers, shuffle=True, drop_last=False)
    if not read_ahead:
        loader.sampler.on_epoch = None
    epoch = [0]

    def run() -> float:
        loader.sampler.set_epoch(epoch[0])
        epoch[0] += 1
        t = time.perf_counter()
        n = 0
        for batch in loader:
            n += len(batch["tile_id"])
            if step_s:
                time.sleep(step_s)
        assert n == len(ds)
        return time.perf_counter() - t

    run()
    return run


def naive_stats(
    ds: xr.Dataset, attrs: dict[str, Any], bands: np.ndarray
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray, xr.DataArray]:
    """The tile store's student mean and std and teacher mean and std, on the cube's band
    coordinates, in reflectance."""
    import xarray as xr

    # The tile store's statistics are in reflectance x 10000; the CF-decoded cube is reflectance.
    band = ds["band"].values[bands]
    s_mean = xr.DataArray(np.asarray(attrs["student_mean"]) / 1e4, coords={"band": band})
    s_std = xr.DataArray(np.asarray(attrs["student_std"]) / 1e4, coords={"band": band})
    names = ds["teacher_band"].values
    t_mean = xr.DataArray(np.asarray(attrs["teacher_mean"]) / 1e4, coords={"teacher_band": names})
    t_std = xr.DataArray(np.asarray(attrs["teacher_std"]) / 1e4, coords={"teacher_band": names})
    return s_mean, s_std, t_mean, t_std


def naive_windows(ds: xr.Dataset, index: Any) -> list[tuple[int, int, int]]:
    """``(time index, y0, x0)`` in the cube of every tile in the tile store's ``index``."""
    from hyperkd.pipeline.tiles.verify import as_str

    time_of = {sid: i for i, sid in enumerate(as_str(ds["scene_id"].values))}
    return [
        (time_of[sid], int(y), int(x))
        for sid, y, x in zip(as_str(index["scene"][:]), index["y0"][:], index["x0"][:], strict=True)
    ]


def naive_sampler(
    ds: xr.Dataset, attrs: dict[str, Any], bands: np.ndarray, full: bool
) -> Callable[[int, int, int], dict[str, torch.Tensor]]:
    """The sample at ``(time index, y0, x0)`` by ``isel(...).load()`` on ``ds``, as tensors:
    the loader's sample when ``full``, else only the reads."""
    import torch

    size, patch = int(attrs["tile_size"]), int(attrs["patch_size"])
    s_mean, s_std, t_mean, t_std = naive_stats(ds, attrs, bands)

    def sample(t: int, y: int, x: int) -> dict[str, torch.Tensor]:
        window = {"time": t, "y": slice(y, y + size), "x": slice(x, x + size)}
        s = ds[["reflectance", "teacher_bands", "valid"]].isel(window).isel(band=bands).load()
        if not full:
            return {k: torch.from_numpy(np.asarray(s[k].values)) for k in s.data_vars}
        grid = {"time": t, f"y_p{patch}": slice(y // patch, (y + size) // patch)}
        grid[f"x_p{patch}"] = slice(x // patch, (x + size) // patch)
        names = [f"significance_{kind}_p{patch}" for kind in ("gabor", "wavelet")]
        maps = ds[names].isel(grid).load()
        student = ((s["reflectance"] - s_mean) / s_std).where(s["valid"], 0)
        teacher = ((s["teacher_bands"] - t_mean) / t_std).where(s["valid"], 0)
        out = {
            "student": student.astype("float32"),
            "teacher": teacher.astype("float32"),
            "significance_gabor": maps[names[0]],
            "significance_wavelet": maps[names[1]],
            "valid": s["valid"],
        }
        return {k: torch.from_numpy(np.asarray(v.values)) for k, v in out.items()}

    return sample


def naive_pass(cube: str, tiles: str, full: bool = True) -> Callable[[], float]:
    """The xbatcher way: the cube opened once with xarray (CF decoding, dask), then one
    ``isel(...).load()`` per sample in this process, then tensors.

    ``full``: build the same sample the loader returns (student and teacher normalised with
    the tile store's statistics in float32, 0 where not valid; both significance maps; the
    valid mask), checked against :class:`TileDataset` on the first tile. Without it, only the
    reads (CF-decoded reflectance, teacher bands and valid mask) are timed.
    """
    import torch
    import xarray as xr
    import zarr

    from hyperkd.model.data.dataset import TileDataset
    from hyperkd.pipeline.store.location import CubeStore

    ds = xr.open_zarr(
        CubeStore(cube).zarr_store(read_only=True), group="enmap", decode_coords="all"
    )
    bands = np.flatnonzero(ds["valid_band"].values)
    store = zarr.open_group(tiles, mode="r")
    sample = naive_sampler(ds, dict(store.attrs), bands, full)
    samples = naive_windows(ds, store["index"])
    if full:  # the same work as the loader, so check it gives the same sample
        reference = TileDataset(tiles, split=None)[0]
        for key, value in sample(*samples[0]).items():
            torch.testing.assert_close(value, reference[key], rtol=1e-5, atol=1e-4, msg=key)
    rng = np.random.default_rng(0)

    def run() -> float:
        t0 = time.perf_counter()
        for i in rng.permutation(len(samples)):
            sample(*samples[i])
        return time.perf_counter() - t0

    return run


def floor_pass(tiles: str) -> Callable[[], float]:
    """Raw chunk reads + decompression with zarr into numpy, one process, no processing."""
    import zarr

    root = zarr.open_group(tiles, mode="r")
    names = ["student", "teacher", "significance_gabor", "significance_wavelet", "valid"]
    arrays = [root[k] for k in names]
    n = arrays[0].shape[0]
    rng = np.random.default_rng(0)

    def run() -> float:
        t0 = time.perf_counter()
        for j in rng.permutation(n):
            for a in arrays:
                _ = a[int(j)]
        return time.perf_counter() - t0

    return run


def tile_bytes(tiles: str) -> int:
    import zarr

    root = zarr.open_group(tiles, mode="r")
    names = ["student", "teacher", "significance_gabor", "significance_wavelet", "valid"]
    return sum(int(np.prod(root[k].shape[1:])) * np.dtype(root[k].dtype).itemsize for k in names)


def parse_args() -> argparse.Namespace:
    """The command line: cube size and scenes, repeats, work directory and trainer step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="cube edge in pixels (default 512)")
    parser.add_argument(
        "--scenes", type=int, default=2, help="EnMAP scenes in the cube (default 2)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed passes per method (default 5)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep inputs here (default: temp)"
    )
    parser.add_argument(
        "--step-ms",
        type=float,
        default=20.0,
        help="also time the 0-worker loader with and without read-ahead when the trainer "
        "waits this long per batch, as on a GPU (default 20; 0 skips it)",
    )
    return parser.parse_args()


def make_passes(cube: str, tiles: str, step_ms: float) -> dict[str, Callable[[], float]]:
    """Every method's timed pass by name (built, and where they warm up warmed up, in this
    order); the read-ahead pair only when ``step_ms`` > 0."""
    runs: dict[str, Callable[[], float]] = {
        "floor": floor_pass(tiles),
        "naive": naive_pass(cube, tiles),
        "naive_reads": naive_pass(cube, tiles, full=False),
        **{f"loader_w{w}": loader_pass(tiles, w) for w in (0, 1, 2)},
    }
    if step_ms > 0:
        step = step_ms / 1000
        runs["w0_step"] = loader_pass(tiles, 0, step)
        runs["w0_step_no_ahead"] = loader_pass(tiles, 0, step, read_ahead=False)
    return runs


def round_robin(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Seconds of ``repeats`` passes of each method."""
    # Round-robin: every repeat times each method once, so the load other processes put
    # on this shared machine hits all methods alike.
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return times


def print_rates(times: dict[str, list[float]], n: int, mb: float, repeats: int) -> dict[str, float]:
    """Prints and returns each method's tiles/s (median pass over ``n`` tiles of ``mb`` MB)."""
    rate = {}
    for name in times:
        rate[name] = n / statistics.median(times[name])
        print(
            f"{name:10s} {rate[name]:8.1f} tiles/s {rate[name] * mb:8.1f} MB/s  "
            f"(median of {repeats}, {n} tiles of {mb:.2f} MB)"
        )
    return rate


def print_ratios(rate: dict[str, float], step_ms: float) -> None:
    """Prints the read-ahead ratio (when timed), each worker count's ratios to the floor and
    the naive loader, and those of the best worker count, the last line."""
    if step_ms > 0:
        print(
            f"with a {step_ms:g} ms step per batch: read-ahead/none="
            f"{rate['w0_step'] / rate['w0_step_no_ahead']:.2f}"
        )
    best = max((k for k in rate if k.startswith("loader")), key=rate.__getitem__)
    print(f"best loader: {best}")
    for k in ("loader_w0", "loader_w1", "loader_w2"):
        print(f"{k}/floor={rate[k] / rate['floor']:.2f} {k}/naive={rate[k] / rate['naive']:.1f}")
    print(f"loader/naive_reads={rate[best] / rate['naive_reads']:.1f}")
    print(
        f"loader/floor={rate[best] / rate['floor']:.2f} loader/naive={rate[best] / rate['naive']:.1f}"
    )


def main() -> None:
    args = parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hyperkd-loader-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        cube, tiles = build_inputs(work, args.size, args.scenes)
        import zarr

        n = zarr.open_group(tiles, mode="r")["student"].shape[0]
        mb = tile_bytes(tiles) / 1e6
        runs = make_passes(cube, tiles, args.step_ms)
        rate = print_rates(round_robin(runs, args.repeats), n, mb, args.repeats)
        print_ratios(rate, args.step_ms)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
