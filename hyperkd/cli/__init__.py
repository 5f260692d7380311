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
from hyperkd.cli.extras import missing_extra

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
    "hyperkd.cli.verify",
)


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def user_error(exc: BaseException) -> str | None:
    """The one-line message of an error the user can act on; None for a bug (a traceback).

    Errors of libraries imported only inside commands are matched by class name, so that
    this module imports none of them.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    if missing_extra(exc):
        return missing_extra(exc)
    if isinstance(exc, (CliError, ValueError, FileNotFoundError)):
        return str(exc)
    if isinstance(exc, (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError)):
        if exc.filename is None:
            return str(exc)
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    if "CubeLockedError" in names:
        return f"{exc} (or wait longer with --lock-timeout SECONDS)"
    if "SafetensorError" in names:
        return f"not a readable safetensors file ({exc})"
    if "STACError" in names:
        cause = exc.__cause__ or exc.__context__
        why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        return f"invalid STAC metadata: {exc}{why}"
    if isinstance(exc, RecursionError):
        return "links nest too deep or form a loop (a STAC catalog linking to itself?)"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperkd",
        description="HyperKD: STAC ingest, Zarr cubes, tile store and Prithvi -> EnMAP distillation.",
    )
    parser.add_argument("--version", action="version", version=f"hyperkd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # Every sub-command shows its options' defaults (hyperkd.cli.common.HelpFormatter).
    from functools import partial

    from hyperkd.cli.common import HelpFormatter

    sub = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        required=True,
        parser_class=partial(argparse.ArgumentParser, formatter_class=HelpFormatter),
    )
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
    except Exception as exc:
        # One clear line naming the problem; tracebacks only with --verbose, and for bugs.
        message = user_error(exc)
        if args.verbose or message is None:
            raise
        print(f"hyperkd {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hyperkd {args.command}: interrupted", file=sys.stderr)
        return 130
