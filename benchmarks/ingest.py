"""Ingest throughput: one 224-band EnMAP scene through our ingest vs the floor.

The scene comes from the scene factory (``write_region``: band-interleaved, tiled, DEFLATE COG
of 224 int16 bands in detector order, plus its quality layers and a static STAC item).

* ``ingest``: :func:`hyperkd.pipeline.ingest.region.ingest_scene` into a fresh cube: lock, cube
  creation, odc-stac load on the EnMAP grid, canonical band axis, quality folding into
  ``valid``, zstd chunks ``(1, 224, 128, 128)``, commit.
* ``floor``: plain ``rasterio`` read of the same image file into memory plus a zarr v3 write
  of that array with the same codec (zstd level 3) and chunks. No quality layers, no band
  mapping, no validity, no metadata.

Medians of ``--repeats`` runs (default 3), alternating the two. The last line is
``ingest/floor=<ratio>``; the goal is <= 1.5.

``--scale-out``: scenes per minute of the parallel ingest (:mod:`hyperkd.pipeline.ingest.parallel`:
workers load their scenes and write their chunks into the cube, the client commits) on one
8-scene region (8 EnMAP acquisitions of ``--size`` px) with 1 and with 2 dask workers (a
LocalCluster of single-threaded processes, started and warmed up before the clock runs), with
2 local threads, and, as the baseline, the serial path (``ingest_scene`` per scene),
alternating, into a fresh cube each run. The last line is ``2 workers/1 worker=<speed-up>``.

    .venv/bin/python benchmarks/ingest.py [--size 1000] [--repeats 3] [--pixel-interleaved]
    .venv/bin/python benchmarks/ingest.py --scale-out [--size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def make_scene(work: Path, size: int, pixel_interleaved: bool = False) -> Path:
    """The factory's scene; ``pixel_interleaved`` rewrites its image with GDAL's COG driver
    (pixel-interleaved, 512 px blocks), the layout of real DLR EnMAP products."""
    from hyperkd.pipeline.synthetic.factory import RegionSpec
    from hyperkd.pipeline.synthetic.products import write_region

    manifest = write_region(work / "region", RegionSpec(size_px=size, n_scenes=1))
    item = manifest.enmap_items[0]
    if pixel_interleaved:
        from rasterio.shutil import copy as rio_copy

        image = next(item.parent.glob("*SPECTRAL_IMAGE_COG.TIF"))
        staged = image.with_suffix(".band.tif")
        image.rename(staged)
        rio_copy(staged, image, driver="COG", compress="deflate", predictor=2, blocksize=512)
        staged.unlink()
    return item


def run_ingest(item_path: Path, out: Path, tile: int) -> float:
    import pystac

    from hyperkd.pipeline.ingest.region import IngestParams, ingest_scene, region_grid
    from hyperkd.pipeline.stac.sources import static_source

    item = pystac.Item.from_file(str(item_path))
    item.make_asset_hrefs_absolute()
    source = static_source(str(item_path))
    t0 = time.perf_counter()
    grid = region_grid(item, source, None)
    outcome = ingest_scene(str(out), item, source, grid, IngestParams(tile_size=tile))
    elapsed = time.perf_counter() - t0
    if outcome.status != "written":
        raise SystemExit(f"ingest failed: {outcome.reason}")
    return elapsed


def run_floor(image: Path, out: Path, tile: int) -> float:
    import rasterio
    import zarr

    t0 = time.perf_counter()
    with rasterio.open(image) as ds:
        data = ds.read()
    arr = zarr.create_array(
        store=str(out),
        shape=(1, *data.shape),
        dtype=data.dtype,
        chunks=(1, data.shape[0], tile, tile),
        compressors=zarr.codecs.ZstdCodec(level=3),
        fill_value=-32768,
        zarr_format=3,
    )
    arr[0] = data
    return time.perf_counter() - t0


def run_scale_out(region: Path, out: Path, address: str | None, workers: int, tile: int) -> float:
    """Seconds to ingest the region's EnMAP scenes into a new cube with ``workers`` scenes at
    once on the dask cluster at ``address`` (``threads``: local threads); ``workers=0`` is the
    serial path (``ingest_scene`` per scene, each scene's load on dask threads), the baseline."""
    import pystac

    from hyperkd.pipeline.ingest.parallel import ingest_planned
    from hyperkd.pipeline.ingest.region import IngestParams, PlannedScene, ingest_scene, region_grid
    from hyperkd.pipeline.stac.sources import static_source

    source = static_source(str(region / "catalog.json"))
    items = sorted(
        (pystac.Item.from_file(str(p)) for p in region.rglob("ENMAP*.json")),
        key=lambda i: i.datetime,
    )
    for item in items:
        item.make_asset_hrefs_absolute()
    planned = [PlannedScene(item, source) for item in items]
    t0 = time.perf_counter()
    grid = region_grid(items[0], source, None)
    if not workers:
        outcomes = [ingest_scene(str(out), s.item, s.source, grid, IngestParams(tile_size=tile))
                    for s in planned]  # fmt: skip
    else:
        outcomes = ingest_planned(str(out), planned, grid, IngestParams(tile_size=tile),
                                  dask_address=None if address == "threads" else address,
                                  workers=workers)  # fmt: skip
    elapsed = time.perf_counter() - t0
    if [o.status for o in outcomes] != ["written"] * len(planned):
        raise SystemExit(f"scale-out ingest failed: {outcomes}")
    return elapsed


def scale_out(size: int, repeats: int, tile: int) -> None:
    from distributed import LocalCluster

    from hyperkd.pipeline.synthetic.factory import RegionSpec
    from hyperkd.pipeline.synthetic.products import write_region

    with tempfile.TemporaryDirectory(prefix="hyperkd-bench-scale-") as tmp:
        work = Path(tmp)
        manifest = write_region(work / "region", RegionSpec(size_px=size, n_scenes=8))
        region = manifest.catalog.parent
        n = len(list(region.rglob("ENMAP*.json")))
        print(f"region: {n} EnMAP scenes of 224 x {size} x {size} int16")
        paths = {"serial": 0, "2 threads": 2, "1 dask worker": 1, "2 dask workers": 2}
        times: dict[str, list[float]] = {name: [] for name in paths}
        clusters = {w: LocalCluster(n_workers=w, threads_per_worker=1, dashboard_address=":0")
                    for w in (1, 2)}  # fmt: skip

        def address(name: str) -> str | None:
            if "dask" in name:
                return clusters[paths[name]].scheduler_address
            return "threads" if paths[name] else None

        try:
            for name in paths:  # warm-up, not timed: the workers import hyperkd, odc-stac ...
                run_scale_out(region, work / "warm.zarr", address(name), paths[name], tile)
                shutil.rmtree(work / "warm.zarr")
            for i in range(repeats):
                for name, w in paths.items():
                    out = work / f"cube-{w}-{i}.zarr"
                    times[name].append(run_scale_out(region, out, address(name), w, tile))
                    shutil.rmtree(out)
                    print(f"  {name} run {i + 1}: {times[name][-1]:.2f} s", flush=True)
        finally:
            for cluster in clusters.values():
                cluster.close()
        med = {name: statistics.median(v) for name, v in times.items()}
        for name, v in med.items():
            print(f"{name}: median {v:.2f} s, {60 * n / v:.1f} scenes/minute")
        base = med["serial"]
        print("  ".join(f"{name}/serial={base / v:.2f}" for name, v in med.items() if v != base))
        print(f"2 workers/1 worker={med['1 dask worker'] / med['2 dask workers']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, default=None, help="scene side in px (1000; 256 with --scale-out)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument(
        "--pixel-interleaved",
        action="store_true",
        help="rewrite the image as GDAL COG (DLR layout)",
    )
    parser.add_argument(
        "--scale-out", action="store_true", help="scenes/minute with 1 and 2 dask workers"
    )
    args = parser.parse_args()
    if args.scale_out:
        scale_out(args.size or 256, args.repeats, args.tile)
        return
    args.size = args.size or 1000
    with tempfile.TemporaryDirectory(prefix="hyperkd-bench-ingest-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        item_path = make_scene(work, args.size, args.pixel_interleaved)
        image = next(item_path.parent.glob("*SPECTRAL_IMAGE_COG.TIF"))
        layout = "pixel" if args.pixel_interleaved else "band"
        print(
            f"scene: 224 x {args.size} x {args.size} int16, {layout}-interleaved "
            f"({time.perf_counter() - t0:.0f} s)"
        )
        times: dict[str, list[float]] = {"ingest": [], "floor": []}
        for i in range(args.repeats):
            for name in ("floor", "ingest"):
                out = work / f"{name}-{i}.zarr"
                fn = run_floor if name == "floor" else run_ingest
                times[name].append(fn(image if name == "floor" else item_path, out, args.tile))
                shutil.rmtree(out)
                print(f"  {name:<6} run {i + 1}: {times[name][-1]:.2f} s", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        mb = 224 * args.size**2 * 2 / 1e6
        for k, v in med.items():
            print(f"{k:<6} median {v:.2f} s  ({mb / v:.0f} MB/s uncompressed)")
        print(f"ingest/floor={med['ingest'] / med['floor']:.2f}")


if __name__ == "__main__":
    main()
