"""What chunk integrity costs the tile loader: the strict store, and a crc32c checksum codec.

Builds the loader benchmark's inputs (benchmarks/loader.py: a demo cube, tiled at 128 px),
copies the tile store once more with a crc32c codec after Blosc on every array the loader
reads, then times one shuffled pass over every tile, methods taking turns, medians of
``--repeats``:

* ``strict``: the loader as shipped (0 workers; an absent chunk raises);
* ``lenient``: the same loader reading through the plain zarr store (absent chunk = fill);
* ``strict_crc``: the shipped loader on the crc32c copy;
* ``floor`` / ``floor_crc``: raw zarr chunk reads + decompression, no processing.

Prints medians and the ratios ``strict/lenient`` and ``strict_crc/strict`` (time ratios: above
1 is slower). The issue's rule: add crc32c to new stores only if it costs < 5 %.

    .venv/bin/python benchmarks/integrity.py [--size 512] [--scenes 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

LOADER_ARRAYS = ("student", "teacher", "significance_gabor", "significance_wavelet", "valid")


def crc_copy(tiles: str, out: str) -> str:
    """The tile store at ``tiles`` copied to ``out`` with crc32c after each array's codecs."""
    import shutil

    import zarr
    from zarr.codecs import Crc32cCodec

    shutil.copytree(tiles, out)
    root = zarr.open_group(out, mode="r+")
    for name in LOADER_ARRAYS:
        old = zarr.open_array(tiles, path=name, mode="r")
        del root[name]
        new = root.create_array(
            name,
            shape=old.shape,
            chunks=old.chunks,
            dtype=old.dtype,
            fill_value=old.fill_value,
            compressors=[*old.compressors, Crc32cCodec()],
            config={"write_empty_chunks": True},
        )
        new[...] = old[...]
    zarr.consolidate_metadata(out)
    return out


def strict_loader(tiles: str, strict: bool) -> Callable[[], float]:
    """``loader_pass`` with 0 workers, its reader opened with or without the strict store."""
    from loader import loader_pass

    import hyperkd.model.data.reader as reader

    original = reader.StrictStore
    if not strict:
        reader.StrictStore = lambda store, label="": store  # type: ignore[assignment,misc]
    try:
        run = loader_pass(tiles, 0)
        run()  # warm-up: the reader opens its arrays now, with the store chosen above
    finally:
        reader.StrictStore = original  # type: ignore[misc]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="cube edge in pixels (512)")
    parser.add_argument("--scenes", type=int, default=2, help="EnMAP scenes (2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per method (7)")
    args = parser.parse_args()

    from loader import build_inputs, floor_pass

    with tempfile.TemporaryDirectory() as tmp:
        _, tiles = build_inputs(Path(tmp), args.size, args.scenes)
        crc = crc_copy(tiles, str(Path(tmp) / "tiles-crc.zarr"))
        methods = {
            "strict": strict_loader(tiles, True),
            "lenient": strict_loader(tiles, False),
            "strict_crc": strict_loader(crc, True),
            "floor": floor_pass(tiles),
            "floor_crc": floor_pass(crc),
        }
        times: dict[str, list[float]] = {k: [] for k in methods}
        for _ in range(args.repeats):
            for name, run in methods.items():
                times[name].append(run())
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"{name:>11}: {t * 1000:8.1f} ms per pass (median of {args.repeats})")
    print(
        f"strict/lenient={med['strict'] / med['lenient']:.3f} "
        f"strict_crc/strict={med['strict_crc'] / med['strict']:.3f} "
        f"floor_crc/floor={med['floor_crc'] / med['floor']:.3f}"
    )


if __name__ == "__main__":
    main()
