"""Scene factory speed: EnMAP rendering vs drawing one Gaussian per output value.

Prints medians of several repeats and the ratio to a baseline measured in the same process:
``rng.standard_normal((224, n, n), float32)``, i.e. the cost of a naive per-value noise draw
alone. A ratio < 1 means the whole render (mixing, clouds, noise, DN conversion) is cheaper
than that naive noise step. Run: ``.venv/bin/python benchmarks/synthetic_bench.py [size_px]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hyperkd.pipeline.synthetic.factory import (
    RegionSpec,
    enmap_reflectance,
    make_surface,
)
from hyperkd.pipeline.synthetic.products import write_region


def median_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(size: int = 512) -> None:
    spec = RegionSpec(size_px=size)
    rng = np.random.default_rng(0)
    baseline = median_seconds(lambda: rng.standard_normal((224, size, size), dtype=np.float32))
    surface_s = median_seconds(lambda: make_surface(spec))
    surface = make_surface(spec)
    render_s = median_seconds(lambda: enmap_reflectance(surface, 0))
    with tempfile.TemporaryDirectory() as tmp:
        write_s = median_seconds(lambda: write_region(Path(tmp) / "r", spec), repeats=1)
    print(f"size {size} px, 224 bands")
    print(f"baseline  normal draw per value: {baseline:.2f} s")
    print(f"make_surface:                    {surface_s:.2f} s")
    print(
        f"enmap_reflectance (1 scene):     {render_s:.2f} s  ratio to baseline {render_s / baseline:.2f}"
    )
    print(f"write_region (2 EnMAP + 4 HLS):  {write_s:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 512)
