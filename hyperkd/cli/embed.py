"""``hyperkd embed`` (a cube's per-patch student embeddings as a Zarr store) and ``hyperkd card``
(a run's model card and STAC item, with evaluation metrics).

Each turns its arguments into one frozen config at the edge; the work is in
:mod:`hyperkd.model.embed` and :mod:`hyperkd.model.train.card`. Credentials for object stores
come from the environment (``AWS_*``), never from the command line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hyperkd.cli.common import add_device, add_parser, add_storage_options, storage_options
from hyperkd.defaults import EMBED_BATCH_SIZE


def register(subparsers: argparse._SubParsersAction) -> None:
    embed = add_parser(
        subparsers,
        "embed",
        help="per-patch embeddings of a cube's EnMAP scenes from a student run (Zarr v3)",
        description="Run a student's encoder over every EnMAP scene of a cube, window by "
        "window, and write its patch tokens as a Zarr v3 store (time, feature, y, x) on the "
        "patch grid with the cube's CRS, consolidated metadata and a STAC Collection "
        "(docs/embeddings.md). Resumable: a re-run embeds only the scenes not yet committed.",
    )
    embed.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="student run (path or URL)"
    )
    embed.add_argument("--cube", required=True, metavar="URL", help="cube (path or fsspec URL)")
    embed.add_argument("--out", required=True, metavar="URL", help="embeddings store to write")
    embed.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="PX",
        help="window edge in px, a multiple of the patch size (default: the student's tile size)",
    )
    embed.add_argument(
        "--batch-size",
        type=int,
        default=EMBED_BATCH_SIZE,
        metavar="N",
        help="windows per forward pass",
    )
    add_device(embed)
    embed.add_argument(
        "--dask-address",
        default=None,
        metavar="ADDR",
        help="read windows on a dask scheduler tcp://host:port, or 'local' for a LocalCluster",
    )
    add_storage_options(embed)
    embed.set_defaults(handler=run_embed)

    card = add_parser(
        subparsers,
        "card",
        help="rewrite a run's README.md model card and item.json with evaluation metrics",
    )
    card.add_argument("--checkpoint", required=True, metavar="DIR", help="run directory (local)")
    card.add_argument(
        "--metrics", required=True, metavar="FILE", help="metrics.json of hyperkd evaluate"
    )
    card.set_defaults(handler=run_card)


def run_embed(args: argparse.Namespace) -> int:
    from hyperkd.model.embed import EmbedConfig, embed_cube

    config = EmbedConfig(
        checkpoint=args.checkpoint,
        cube=args.cube,
        out=args.out,
        window=args.window,
        batch_size=args.batch_size,
        device=args.device,
        dask_address=args.dask_address,
        storage_options=storage_options(args.storage_options) or None,
    )
    result = embed_cube(config)
    print(
        f"embedded {result['embedded_now']} scene(s) ({result['skipped']} already there), "
        f"{result['patches']} patches x {result['feature_dim']} features on {result['device']}; "
        f"written to {result['out']}"
    )
    return 0


def run_card(args: argparse.Namespace) -> int:
    from hyperkd.model.train.checkpoint import read_run, write_card

    run_dir = Path(args.checkpoint)
    config, weights = read_run(run_dir)
    try:
        evaluation = json.loads(Path(args.metrics).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no metrics file at {args.metrics}") from None
    except ValueError as exc:
        raise ValueError(f"{args.metrics} is not JSON: {exc}") from None
    if not isinstance(evaluation, dict):
        raise ValueError(f"{args.metrics} holds no JSON object")
    write_card(run_dir, weights, config, evaluation)
    print(f"wrote {run_dir / 'README.md'} and {run_dir / 'item.json'}")
    return 0
