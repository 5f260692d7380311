"""``hyperkd tiles``: cut a cube into the training-ready tile store (docs/tiles.md).

Only reads the cube: when it lacks teacher bands or significance maps for the patch size, they
are computed on the fly into the tile store (``hyperkd preprocess`` stores them in the cube).
Credentials for object stores come from the environment (``AWS_*``), never from the command
line.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hyperkd.cli.common import add_storage_options, storage_options

if TYPE_CHECKING:  # the pipeline is imported when a command runs, not for ``--help``
    from hyperkd.pipeline.tiles.build import TileSummary
    from hyperkd.pipeline.tiles.config import TileConfig


@dataclass(frozen=True)
class TilesCommand:
    """One ``hyperkd tiles`` invocation."""

    cube: str
    out: str
    tile_size: int = 128
    patch_size: int = 16
    stride: int | None = None
    train_stride: int | None = None
    labels: tuple[tuple[str, str], ...] = ()
    min_valid: float = 0.5
    split_block_px: int | None = None
    allow_empty_splits: bool = False
    shard: int | None = None
    seed: int = 0
    dask_address: str | None = None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tiles",
        help="cut a cube into the training-ready Zarr tile store",
        description="Cut every EnMAP scene of a cube into tiles (student bands, teacher bands, "
        "significance maps, valid mask, labels), split train/val/test by spatial blocks with "
        "no touching tiles across splits, and write a streamable Zarr v3 store.",
    )
    parser.add_argument("--cube", required=True, metavar="URL", help="cube (path or fsspec URL)")
    parser.add_argument("--out", required=True, metavar="URL", help="tile store to write")
    _add_grid_args(parser)
    _add_store_args(parser)
    add_storage_options(parser)
    parser.set_defaults(handler=run_tiles)


def _add_grid_args(parser: argparse.ArgumentParser) -> None:
    """Where the tiles lie: their edge, the patch grid inside them and the step between them."""
    parser.add_argument(
        "--tile-size", type=int, default=128, metavar="PX", help="tile edge (default 128)"
    )
    parser.add_argument(
        "--patch-size", type=int, default=16, metavar="PX", help="ViT patch edge (default 16)"
    )
    parser.add_argument(
        "--stride", type=int, default=None, metavar="PX", help="tile step (default: tile size)"
    )
    parser.add_argument(
        "--train-stride",
        type=int,
        default=None,
        metavar="PX",
        help="step of train tiles, a divisor of the stride: overlapping train tiles, val and "
        "test unchanged (default: the stride)",
    )


def _add_store_args(parser: argparse.ArgumentParser) -> None:
    """What the store holds and how it is made: labels, kept tiles, splits, shards, workers."""
    parser.add_argument(
        "--labels",
        action="append",
        default=[],
        metavar="NAME=RASTER",
        help="a label raster in any CRS, resampled nearest-neighbour onto the cube (repeatable)",
    )
    parser.add_argument(
        "--min-valid",
        type=float,
        default=0.5,
        metavar="F",
        help="drop tiles below this valid fraction (default 0.5)",
    )
    parser.add_argument(
        "--split-block",
        type=int,
        default=None,
        metavar="PX",
        help="spatial split block edge (default 4 tiles)",
    )
    parser.add_argument(
        "--allow-empty-splits",
        action="store_true",
        help="write the store even when the val or test split comes out empty",
    )
    parser.add_argument(
        "--shard",
        type=int,
        default=None,
        metavar="N",
        help="tiles per Zarr shard (default: unsharded)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the block-to-split deal (default 0)",
    )
    parser.add_argument(
        "--dask-address",
        default=None,
        metavar="ADDR",
        help="dask scheduler tcp://host:port, or 'local' for a LocalCluster",
    )


def run_tiles(args: argparse.Namespace) -> int:
    command = _tiles_command(args)

    from hyperkd.pipeline.tiles.build import build_tiles

    cfg = _tile_config(command)
    with _tile_progress() as progress:
        summary = build_tiles(
            command.cube,
            command.out,
            cfg,
            labels=dict(command.labels),
            dask_address=command.dask_address,
            storage_options=storage_options(args.storage_options),
            progress=progress,
        )
    print(_summary_line(summary))
    return 0


def _tiles_command(args: argparse.Namespace) -> TilesCommand:
    """The arguments as a :class:`TilesCommand`; ``ValueError`` for a bad or repeated label."""
    from hyperkd.pipeline.tiles.labels import parse_label_arg

    command = TilesCommand(
        cube=args.cube,
        out=args.out,
        tile_size=args.tile_size,
        patch_size=args.patch_size,
        stride=args.stride,
        train_stride=args.train_stride,
        labels=tuple(parse_label_arg(text) for text in args.labels),
        min_valid=args.min_valid,
        split_block_px=args.split_block,
        allow_empty_splits=args.allow_empty_splits,
        shard=args.shard,
        seed=args.seed,
        dask_address=args.dask_address,
    )
    names = [name for name, _ in command.labels]
    if len(set(names)) != len(names):
        raise ValueError(f"label names repeat: {names}")
    return command


def _tile_config(command: TilesCommand) -> TileConfig:
    from hyperkd.pipeline.tiles.build import TileConfig

    return TileConfig(
        tile_size=command.tile_size,
        patch_size=command.patch_size,
        stride=command.stride,
        train_stride=command.train_stride,
        min_valid=command.min_valid,
        split_block_px=command.split_block_px,
        allow_empty_splits=command.allow_empty_splits,
        seed=command.seed,
        shard=command.shard,
    )


@contextlib.contextmanager
def _tile_progress() -> Iterator[Callable[[int, int], None]]:
    """``progress(done, total)`` for :func:`build_tiles`, behind a bar closed on the way out."""
    from tqdm import tqdm

    bars: list[Any] = []

    def progress(done: int, total: int) -> None:
        # The bar starts with the first tile, after build_tiles has checked its input.
        if not bars:
            bars.append(tqdm(total=total, unit="tile", desc="tiles", leave=False))
        bars[0].total = total
        bars[0].update(done - bars[0].n)

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def _summary_line(summary: TileSummary) -> str:
    """One line on the store written (or found up to date), its splits and dropped tiles."""
    from hyperkd.pipeline.redaction import clean_href

    splits = ", ".join(f"{k} {v}" for k, v in summary.splits.items())
    dropped = ", ".join(f"{k} {v}" for k, v in summary.dropped.items())
    state = (
        "up to date, nothing written" if summary.skipped else f"written in {summary.seconds:.1f} s"
    )
    return f"tile store {clean_href(summary.out_url)}: {summary.n_tiles} tiles ({splits}); dropped: {dropped}; {state}"
