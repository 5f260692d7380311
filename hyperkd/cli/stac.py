"""``hyperkd search``: find EnMAP and HLS scenes over a region and show how they pair.

The search options (``--source``, ``--region``, ``--start``, ``--end``, ``--max-cloud``,
``--pair-window``) are shared with ``hyperkd ingest`` through :func:`add_search_arguments` and
:func:`search_query_from_args`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from hyperkd.pipeline.stac.search import SearchQuery, SearchResult


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="search STAC sources for EnMAP + HLS scenes and pair them",
        description="Search STAC APIs or static catalogs for EnMAP L2A and HLS scenes over a "
        "region and date range; print the matches and the EnMAP/HLS pairs as a table.",
    )
    add_search_arguments(parser)
    parser.set_defaults(handler=run_search)


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """The search options shared by ``search`` and ``ingest``."""
    # US study areas have negative longitudes: let "--region -120,36,-119,37" parse as a value
    # rather than an unknown option (argparse only treats plain numbers like "-1" that way).
    # ``--region=-120,36,-119,37`` works on any Python.
    parser._negative_number_matcher = re.compile(r"^-\d[\d.,eE+-]*$")
    parser.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="S",
        help="catalog source (enmap-dlr, hls-lpdaac, hls-planetary-computer) or a path/URL to a "
        "static catalog.json; repeat for several",
    )
    parser.add_argument(
        "--region",
        required=True,
        metavar="R",
        help="minlon,minlat,maxlon,maxlat, a GeoJSON file, or a name from catalogs/regions "
        "(demo, california, colorado, kansas)",
    )
    parser.add_argument("--start", required=True, metavar="YYYY-MM-DD", help="first day (UTC)")
    parser.add_argument(
        "--end", required=True, metavar="YYYY-MM-DD", help="last day (UTC), inclusive"
    )
    parser.add_argument(
        "--max-cloud", type=float, default=None, metavar="P", help="maximum cloud cover, percent"
    )
    parser.add_argument(
        "--pair-window",
        type=int,
        default=10,
        metavar="DAYS",
        help="pair HLS scenes within +-DAYS of each EnMAP scene (default 10)",
    )
    add_allow_href_argument(parser)


def add_allow_href_argument(parser: argparse.ArgumentParser) -> None:
    """``--allow-href``, shared by search, ingest and pipeline."""
    parser.add_argument(
        "--allow-href",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also read catalog assets whose href matches this glob, e.g. 'http://127.0.0.1:*' "
        "(default: only under the catalog's own folder or on hosts a source declares; "
        "/vsi*, loopback and private addresses need this); repeat for several",
    )


def search_query_from_args(args: argparse.Namespace) -> SearchQuery:
    """One frozen :class:`SearchQuery` from the shared options; ``ValueError`` on bad input."""
    from hyperkd.pipeline.stac.regions import parse_region
    from hyperkd.pipeline.stac.search import SearchQuery
    from hyperkd.pipeline.stac.sources import resolve_source

    sources = tuple(args.source)
    for name in sources:
        resolve_source(name)  # fail on an unknown source before anything else happens
    return SearchQuery(
        sources=sources,
        region=parse_region(args.region),
        start=_date(args.start, "--start"),
        end=_date(args.end, "--end"),
        max_cloud=args.max_cloud,
        pair_window_days=args.pair_window,
        allow_hrefs=tuple(getattr(args, "allow_href", None) or ()),
    )


def run_search(args: argparse.Namespace) -> int:
    import sys

    from hyperkd.pipeline.stac.search import search

    query = search_query_from_args(args)
    result = search(query)
    print_result(result, query, sys.stdout)
    return 0


def print_result(result: SearchResult, query: SearchQuery, out: TextIO) -> None:
    """The matches as a table: id, sensor, collection, time, cloud %, paired scenes."""
    from hyperkd.pipeline.stac.items import cloud_cover, scene_datetime
    from hyperkd.pipeline.stac.sources import sensor_of

    if not result.enmap and not result.hls:
        print(
            f"no scenes in region {query.region.name} from {query.start} to {query.end}",
            file=out,
        )
        return
    partners: dict[str, list[str]] = {}
    for pair in result.pairs:
        partners[pair.enmap_id] = list(pair.hls_ids)
        for hls_id in pair.hls_ids:
            partners.setdefault(hls_id, []).append(pair.enmap_id)
    rows = [("id", "sensor", "collection", "datetime (UTC)", "cloud %", "paired")]
    for item in result.enmap + result.hls:
        cc = cloud_cover(item)
        rows.append(
            (
                item.id,
                sensor_of(item),
                item.collection_id or "",
                scene_datetime(item).strftime("%Y-%m-%d %H:%M:%S"),
                "-" if cc is None else f"{cc:.1f}",
                ", ".join(partners.get(item.id, [])) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        cells = [row[i].rjust(widths[i]) if i == 4 else row[i].ljust(widths[i]) for i in range(5)]
        print("  ".join([*cells, row[5]]), file=out)
    paired = sum(1 for p in result.pairs if p.hls_ids)
    print(
        f"{len(result.enmap)} EnMAP scenes, {len(result.hls)} HLS scenes; {paired} of "
        f"{len(result.enmap)} EnMAP scenes paired within +-{query.pair_window_days} days",
        file=out,
    )


def _date(text: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid {option} {text!r}: expected a date YYYY-MM-DD") from None
