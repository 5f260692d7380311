"""``hyperkd preprocess``: store teacher bands and significance maps in a cube (docs/cube.md).

The only command that writes them. They are keyed by their parameters (patch size, filter
bank), so maps for patch 8 and patch 16 live side by side; ``hyperkd tiles`` reads them when
present and otherwise computes them without writing the cube. Defaults are those of
:class:`hyperkd.pipeline.features.preprocess.PreprocessConfig` (an unset option keeps them).
Credentials for object stores come from the environment (``AWS_*``), never from the command
line.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class PreprocessCommand:
    """One ``hyperkd preprocess`` invocation; ``None`` = the pipeline's default."""

    cube: str
    patch_size: int | None = None
    aggregation: str | None = None
    srf_file: str | None = None
    dask_address: str | None = None
    storage_options: str | None = None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preprocess",
        help="store teacher bands and significance maps in a cube",
        description="Aggregate every EnMAP scene of a cube to the teacher's six bands and "
        "compute the Gabor and wavelet significance maps per ViT patch; store them in the "
        "cube's enmap group under names keyed by the parameters (docs/cube.md). Re-running "
        "computes only scenes added since.",
    )
    parser.add_argument("--cube", required=True, metavar="URL", help="cube (path or fsspec URL)")
    parser.add_argument(
        "--patch-size", type=int, default=None, metavar="PX", help="ViT patch edge (default 16)"
    )
    parser.add_argument(
        "--aggregation",
        choices=("mean", "srf"),
        default=None,
        help="band aggregation to the teacher bands (default mean)",
    )
    parser.add_argument(
        "--srf-file",
        default=None,
        metavar="PATH",
        help="tabulated teacher responses (.npz) for --aggregation srf",
    )
    parser.add_argument(
        "--dask-address",
        default=None,
        metavar="ADDR",
        help="dask scheduler tcp://host:port, or 'local' for a LocalCluster",
    )
    parser.add_argument(
        "--storage-options",
        default=None,
        metavar="JSON",
        help="fsspec storage options as JSON (e.g. an S3 endpoint_url); credentials come "
        "from the environment, not from here",
    )
    parser.set_defaults(handler=run_preprocess)


def run_preprocess(args: argparse.Namespace) -> int:
    command = PreprocessCommand(
        cube=args.cube,
        patch_size=args.patch_size,
        aggregation=args.aggregation,
        srf_file=args.srf_file,
        dask_address=args.dask_address,
        storage_options=args.storage_options,
    )
    from dataclasses import replace

    from hyperkd.pipeline.features.preprocess import (
        PreprocessConfig,
        preprocess_cube,
        product_names,
    )
    from hyperkd.pipeline.redaction import clean_href

    cfg = PreprocessConfig()
    if command.patch_size is not None:
        cfg = replace(cfg, significance=replace(cfg.significance, patch_size=command.patch_size))
    if command.aggregation is not None:
        cfg = replace(cfg, aggregation=command.aggregation)  # type: ignore[arg-type]
    if command.srf_file is not None:
        cfg = replace(cfg, srf_file=command.srf_file)
    if command.dask_address == "local":
        cfg = replace(cfg, scheduler="local")
    elif command.dask_address is not None:
        cfg = replace(cfg, dask_address=command.dask_address)
    options = json.loads(command.storage_options) if command.storage_options else None
    if options is not None and not isinstance(options, dict):
        raise ValueError("--storage-options must be a JSON object")
    summary = preprocess_cube(command.cube, cfg, storage_options=options)
    names = product_names(cfg)
    state = (
        "up to date, nothing written"
        if summary.skipped
        else f"{len(summary.teacher_computed)} teacher / {len(summary.significance_computed)} "
        f"significance scenes computed in {summary.seconds:.1f} s"
    )
    print(
        f"cube {clean_href(command.cube)}: {len(summary.scenes)} scenes; "
        f"{names.teacher}, {names.gabor}, {names.wavelet}: {state}"
    )
    return 0
