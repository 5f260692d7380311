"""The ``hyperkd`` command line: one console script, one sub-command module per topic.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``. A sub-command turns its
arguments into one frozen config dataclass at the edge and calls ``pipeline``/``model``/``flows``
with it. Heavy imports happen inside the command, so ``hyperkd --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from hyperkd import __version__

COMMAND_MODULES = (
    "hyperkd.cli.data",
    "hyperkd.cli.stac",
    "hyperkd.cli.preprocess",
    "hyperkd.cli.tiles",
    "hyperkd.cli.ingest",
    "hyperkd.cli.train",
    "hyperkd.cli.evaluation",
    "hyperkd.cli.embed",
    "hyperkd.cli.flows",
)


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperkd",
        description="HyperKD: STAC ingest, Zarr cubes, tile store and Prithvi -> EnMAP distillation.",
    )
    parser.add_argument("--version", action="version", version=f"hyperkd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # HTTP clients log every request at INFO (Prefect's API calls among them): keep them quiet.
    for noisy in ("httpx", "httpcore", "urllib3", "botocore", "s3fs", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.handler(args) or 0)
    except (CliError, ValueError, FileNotFoundError) as exc:
        # One clear line naming the problem; tracebacks only with --verbose.
        if args.verbose:
            raise
        print(f"hyperkd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hyperkd {args.command}: interrupted", file=sys.stderr)
        return 130
