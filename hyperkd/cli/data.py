"""``hyperkd demo-data``: write the synthetic demo region (EnMAP L2A + HLS + STAC + truth).

Sizes: ``small`` 256, ``medium`` 512 (the default, as in ``hyperkd demo``), ``large`` 1024 EnMAP
pixels per side (30 m), plus ``tiny`` (64 px, for tests). The output is written beside ``--out`` and renamed into place.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from hyperkd import defaults

SIZE_CHOICES = ("small", "medium", "large")
HIDDEN_SIZES = ("tiny",)


@dataclass(frozen=True)
class DemoDataConfig:
    """What ``demo-data`` writes."""

    out: Path
    size: str = defaults.DEMO_SIZE
    seed: int = defaults.SEED
    n_scenes: int = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo-data",
        help="write the synthetic demo region (EnMAP L2A + HLS L30/S30 + STAC + truth)",
        description="Generate a deterministic synthetic region that looks and is packaged like "
        "real EnMAP L2A and HLS v2.0 products (COGs, quality masks, Fmask, a static STAC "
        "catalog) plus ground truth (land cover, crop type, soil organic carbon).",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="output folder (new, empty, or an earlier demo-data output)",
    )
    parser.add_argument(
        "--size",
        default=defaults.DEMO_SIZE,
        choices=SIZE_CHOICES + HIDDEN_SIZES,
        metavar="{small,medium,large}",
        help=f"square region of 256 / 512 / 1024 EnMAP pixels at 30 m (default "
        f"{defaults.DEMO_SIZE}, the demo's)",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.SEED, metavar="N", help="random seed (default 0)"
    )
    parser.add_argument(
        "--scenes", type=int, default=2, metavar="N", help="EnMAP acquisitions (default 2)"
    )
    parser.set_defaults(handler=run_demo_data)


def run_demo_data(args: argparse.Namespace) -> int:
    config = DemoDataConfig(out=args.out, size=args.size, seed=args.seed, n_scenes=args.scenes)
    from hyperkd.pipeline.synthetic.factory import SIZES, RegionSpec
    from hyperkd.pipeline.synthetic.products import write_region

    spec = RegionSpec(size_px=SIZES[config.size], seed=config.seed, n_scenes=config.n_scenes)
    manifest = write_region(config.out, spec)
    print(manifest.summary())
    return 0
