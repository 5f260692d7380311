"""Benchmark: band aggregation and significance maps against one plain read pass of the cube.

Builds a 224-band cube from the scene factory with the cube writer (1024 x 1024 px, tiles
128), then, in this process, medians of ``--repeats`` runs of:

- read pass (the floor): every reflectance chunk read and decompressed once, nothing else;
- aggregation: ``teacher_bands`` computed from the reflectance and written to the cube;
- significance: both maps computed from the stored teacher bands and written to the cube.

Peak memory: a fresh subprocess per scene size runs the whole ``preprocess_cube`` and reports
its peak RSS (``VmHWM``). The 2048 x 2048 cube tiles the 1024 scene 2 x 2 (mirrored),
so the factory's own memory is not what is measured.

Last line: ``aggregation/readpass=<r> significance/readpass=<r> peak_mb_1024=<mb> peak_mb_2048=<mb>``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np

from hyperkd.pipeline.cube import CubeLayout, CubeWriter, Grid, SceneWrite, write_variables
from hyperkd.pipeline.features.aggregate import teacher_bands
from hyperkd.pipeline.features.preprocess import open_enmap
from hyperkd.pipeline.features.significance import SignificanceConfig, significance_maps
from hyperkd.pipeline.sensors import enmap_table
from hyperkd.pipeline.synthetic.factory import (
    RegionSpec,
    cloud_fields,
    enmap_reflectance,
    is_cloudy,
    make_surface,
)

TILE = 128


def build_cubes(workdir: Path, size: int, big: int) -> tuple[str, str]:
    """A ``size``^2 factory cube and a ``big``^2 one made of mirrored copies of the same scene."""
    spec = RegionSpec(size_px=size, n_scenes=1, seed=3, cloud_cover=0.1)
    bands = enmap_table().bands
    dn = enmap_reflectance(make_surface(spec), 0, bands)
    opacity, _, shadow = cloud_fields(
        spec.seed, spec.cloud_cover, (size, size), (1, 0), is_cloudy("enmap", 0)
    )
    valid = (dn[bands.valid] != bands.nodata).all(axis=0) & (opacity <= 0.08) & (shadow <= 0.2)
    reps = big // size
    urls = []
    for n, scale in ((size, 1), (big, reps)):
        url = str(workdir / f"cube_{n}.zarr")
        grid = Grid(f"EPSG:{spec.crs_epsg}", tuple(spec.enmap_transform)[:6], (n, n))
        refl, ok = da.from_array(dn, chunks=(-1, TILE, TILE)), da.from_array(valid, chunks=TILE)
        if scale > 1:
            rows = [
                da.concatenate(
                    [refl if (i + j) % 2 == 0 else refl[:, :, ::-1] for j in range(scale)], axis=2
                )
                for i in range(scale)
            ]
            refl = da.concatenate(rows, axis=1)
            ok = da.tile(ok, (scale, scale))
        record = {
            "collection": "synthetic-enmap", "hrefs": {}, "processing_version": spec.processor_version,
            "cloud_cover": float(1 - valid.mean()) * 100, "ingested_at": "2024-01-01T00:00:00Z",
            "code_version": "benchmark", "parameters": {"seed": spec.seed},
            "wavelength": bands.wavelengths.tolist(), "fwhm": bands.fwhms.tolist(),
        }  # fmt: skip
        with CubeWriter(url) as writer:
            writer.create(CubeLayout(grid, bands, TILE, region="benchmark"))
            writer.append(
                SceneWrite("enmap", "scene-0", spec.enmap_dates[0], refl, ok, record=record)
            )
        urls.append(url)
    return urls[0], urls[1]


def _touch(block: np.ndarray) -> np.ndarray:
    return np.zeros((1,) * block.ndim, dtype=np.int8)


def read_pass(url: str) -> None:
    """Read and decompress every reflectance chunk once (the floor of any pass over the cube)."""
    data = open_enmap(url)["reflectance"].data
    data.map_blocks(
        _touch, dtype=np.int8, chunks=tuple((1,) * len(c) for c in data.chunks)
    ).compute()


def aggregation(url: str) -> None:
    enmap = open_enmap(url)
    tb = teacher_bands(enmap["reflectance"])
    write_variables(
        url, "enmap", tb.drop_vars([c for c in tb.coords if c not in tb.dims]).to_dataset()
    )


def significance(url: str) -> None:
    enmap = open_enmap(url)
    maps = significance_maps(enmap["teacher_bands"], enmap["valid"], SignificanceConfig())
    write_variables(url, "enmap", maps.compute())  # one fused pass for both (tiny) maps


def peak_rss_mb(url: str) -> float:
    """Peak RSS of a fresh interpreter running the whole preprocess on ``url``."""
    # VmHWM, not getrusage: Linux carries ru_maxrss across fork+exec, so a child would report
    # this (cube-building, hence large) process's peak. VmHWM belongs to the new image.
    code = (
        "import json, re, sys\n"
        "from hyperkd.pipeline.features.preprocess import preprocess_cube\n"
        "s = preprocess_cube(sys.argv[1])\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())\n"
        "print(json.dumps({'peak_mb': int(hwm.group(1)) / 1024, 'seconds': s.seconds}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, url], check=True, capture_output=True, text=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"  preprocess_cube({Path(url).name}): {result['seconds']:.1f} s, peak RSS {result['peak_mb']:.0f} MB"
    )
    return float(result["peak_mb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--big", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        t0 = time.perf_counter()
        small, big = build_cubes(Path(tmp), args.size, args.big)
        print(
            f"cubes built in {time.perf_counter() - t0:.0f} s: 224 bands, {args.size}^2 and {args.big}^2, tiles {TILE}"
        )
        peaks = {n: peak_rss_mb(u) for n, u in ((args.size, small), (args.big, big))}
        times: dict[str, list[float]] = {"read": [], "aggregation": [], "significance": []}
        for _ in range(args.repeats):
            for name, fn in (
                ("read", read_pass),
                ("aggregation", aggregation),
                ("significance", significance),
            ):
                t = time.perf_counter()
                fn(small)
                times[name].append(time.perf_counter() - t)
        med = {k: float(np.median(v)) for k, v in times.items()}
        for k, v in times.items():
            print(f"  {k}: median {med[k]:.2f} s of {[round(x, 2) for x in v]}")
        print(
            f"aggregation/readpass={med['aggregation'] / med['read']:.2f} "
            f"significance/readpass={med['significance'] / med['read']:.2f} "
            f"peak_mb_{args.size}={peaks[args.size]:.0f} peak_mb_{args.big}={peaks[args.big]:.0f}"
        )


if __name__ == "__main__":
    main()
