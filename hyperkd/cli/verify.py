"""``hyperkd verify URL [--deep]``: check a cube or a tile store against its contract.

The kind of store comes from its root attributes. Prints every problem, one a line, and
exits 1 when there is any (0 when the store is sound, 2 when ``URL`` is no store of ours).
``--deep`` also reads every chunk and names the absent and undecodable ones by key.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from hyperkd.cli.common import parse_storage_options


@dataclass(frozen=True)
class VerifyCommand:
    """One ``hyperkd verify`` invocation."""

    url: str
    deep: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check a cube or tile store (--deep: read every chunk)",
        description="Check a cube (docs/cube.md) or a tile store (docs/tiles.md) against its "
        "contract. With --deep, read every chunk of every array and report the missing and "
        "undecodable ones by key. Exit code 1 when a problem is found.",
    )
    parser.add_argument("url", metavar="URL", help="cube or tile store (path or fsspec URL)")
    parser.add_argument("--deep", action="store_true", help="read and decode every chunk")
    parser.add_argument(
        "--storage-options",
        default=None,
        metavar="JSON",
        help="fsspec storage options as JSON (credentials come from the environment)",
    )
    parser.set_defaults(handler=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    options = parse_storage_options(args.storage_options)
    command = VerifyCommand(args.url, args.deep, options)

    from hyperkd.pipeline.cube.verify import verify_cube
    from hyperkd.pipeline.redaction import clean_href
    from hyperkd.pipeline.store.guard import store_kind
    from hyperkd.pipeline.store.location import CubeStore
    from hyperkd.pipeline.tiles.verify import verify_tiles

    store = CubeStore(command.url, command.storage_options)
    name = clean_href(command.url)
    if not store.exists():
        raise FileNotFoundError(f"nothing at {name}")
    kind = store_kind(store)
    if kind == "cube":
        problems = verify_cube(command.url, command.storage_options, deep=command.deep)
    elif kind == "tiles":
        problems = verify_tiles(command.url, command.storage_options, deep=command.deep)
    else:
        raise ValueError(f"{name} is neither a hyperkd cube nor a tile store")
    for problem in problems:
        print(f"{name}: {problem}")
    depth = "every chunk read" if command.deep else "metadata and samples"
    state = f"{len(problems)} problem(s)" if problems else "sound"
    print(f"{kind} {name}: {state} ({depth})")
    return 1 if problems else 0
