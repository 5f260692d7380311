"""``hyperkd ingest``: search, then write EnMAP + paired HLS scenes into one Zarr v3 cube.

Same search options as ``hyperkd search`` plus ``--out URL``; ``--workers N`` or
``--dask-address ADDR`` load and write scenes in parallel (pipeline/ingest/parallel.py). Prints
one line per scene and a summary; exit code 0 when nothing failed (also for "no scenes"), 1
when a scene failed, 2 for bad input (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from hyperkd.cli.common import parse_storage_options
from hyperkd.cli.stac import add_search_arguments, search_query_from_args

if TYPE_CHECKING:
    from hyperkd.pipeline.ingest.region import IngestConfig, SceneOutcome


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="ingest EnMAP + HLS scenes into a co-registered Zarr v3 cube",
        description="Search like `hyperkd search`, then load every EnMAP scene and its paired "
        "HLS scenes onto the EnMAP grid and append them to one Zarr v3 cube (docs/cube.md). "
        "Re-running is a no-op for scenes already in the cube.",
    )
    add_search_arguments(parser)
    parser.add_argument(
        "--out", required=True, metavar="URL", help="cube location: a path or fsspec URL"
    )
    parser.add_argument(
        "--storage-options",
        default=None,
        metavar="JSON",
        help="fsspec storage options as JSON (e.g. an S3 endpoint_url); credentials come "
        "from the environment, not from here",
    )
    parser.add_argument(
        "--bands",
        default=None,
        metavar="TABLE",
        help="canonical EnMAP band table: a name in catalogs/sensors or a YAML path "
        "(default: the catalog's 224-band table)",
    )
    parser.add_argument(
        "--resampling",
        default="bilinear",
        choices=("bilinear", "nearest", "cubic"),
        help="HLS onto the EnMAP grid (default bilinear)",
    )
    parser.add_argument(
        "--tile-size", type=int, default=128, metavar="T", help="chunk/tile size in px (128)"
    )
    parser.add_argument(
        "--min-valid-pixels", type=int, default=1, metavar="N",
        help="a scene with fewer valid pixels in the region is reported empty, not written (1)",
    )  # fmt: skip
    parser.add_argument(
        "--lock-timeout", type=float, default=60.0, metavar="S",
        help="seconds to wait for another writer of the same cube (60)",
    )  # fmt: skip
    parser.add_argument(
        "--dask-address", default=None, metavar="ADDR",
        help="load and write the scenes on the dask cluster at tcp://HOST:PORT (the cube's URL "
        "must reach the same storage from its workers), or 'local' for a LocalCluster of "
        "--workers processes (default: this process)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="scenes loaded and written at once, on local threads or on the dask cluster "
        "(default: 1 without --dask-address, one scene after another; with 'local', the "
        "cores here, at most 8; with a running cluster, its worker threads)",
    )  # fmt: skip
    parser.set_defaults(handler=run_ingest)


def config_from_args(args: argparse.Namespace) -> IngestConfig:
    """One frozen :class:`IngestConfig`; ``ValueError`` with one line on bad input."""
    from hyperkd.pipeline.cube.bandmap import load_band_table
    from hyperkd.pipeline.ingest.pool import check_dask_address
    from hyperkd.pipeline.ingest.region import IngestConfig, IngestParams

    check_dask_address(args.dask_address)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers {args.workers}: must be at least 1")
    query = search_query_from_args(args)
    options = parse_storage_options(args.storage_options)
    load_band_table(args.bands)  # an unknown table fails here, before any search
    params = IngestParams(bands=args.bands, resampling=args.resampling, tile_size=args.tile_size)
    return IngestConfig(
        query, args.out, options, params,
        lock_timeout_s=args.lock_timeout, min_valid_pixels=args.min_valid_pixels,
    )  # fmt: skip


def _progress(outcome: SceneOutcome) -> None:
    extra = f" ({outcome.seconds:.1f} s)" if outcome.status == "written" else ""
    reason = f": {outcome.reason}" if outcome.status != "written" else ""
    print(f"{outcome.status:>7}  {outcome.group:<5} {outcome.scene_id}{extra}{reason}", flush=True)


def run_ingest(args: argparse.Namespace) -> int:
    from hyperkd.pipeline.ingest.region import ingest_region
    from hyperkd.pipeline.redaction import install_log_redaction

    install_log_redaction()
    config = config_from_args(args)
    if args.dask_address is None and (args.workers or 1) == 1:
        summary = ingest_region(config, progress=_progress)
    else:
        from hyperkd.pipeline.ingest.parallel import ingest_region_parallel

        summary = ingest_region_parallel(
            config, dask_address=args.dask_address, workers=args.workers, progress=_progress
        )
    if not summary.outcomes:
        print(f"no scenes: {summary.message}" if summary.message else "no scenes")
        return 0
    unpaired = sum(o.status == "skipped" and "EnMAP pair" in o.reason for o in summary.outcomes)
    extra = f", {len(summary.empty)} empty (not written)" if summary.empty else ""
    extra += f", {unpaired} HLS skipped (EnMAP pair not in the cube)" if unpaired else ""
    print(
        f"summary: {len(summary.written)} written, {len(summary.skipped) - unpaired} skipped "
        f"(already present), {len(summary.failed)} failed{extra} -> {config.out}"
    )
    for failed in summary.failed:
        print(f"  failed {failed.scene_id}: {failed.reason}", file=sys.stderr)
    return 0 if summary.ok else 1
