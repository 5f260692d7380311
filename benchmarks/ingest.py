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

    .venv/bin/python benchmarks/ingest.py [--size 1000] [--repeats 3] [--pixel-interleaved]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000, help="scene side in pixels (1000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument(
        "--pixel-interleaved",
        action="store_true",
        help="rewrite the image as GDAL COG (DLR layout)",
    )
    args = parser.parse_args()
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
