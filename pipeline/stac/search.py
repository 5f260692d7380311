"""Search STAC sources for EnMAP and HLS scenes over a region and pair them.

APIs are searched with pystac-client (paged, retried, see :mod:`hyperkd.pipeline.stac.http`);
static catalogs are walked with pystac, which is all pystac-client cannot do. Both paths then go
through the same client-side filters (footprint intersects the region, datetime inside the
range, cloud cover at most ``max_cloud``), because servers differ in what they filter: CMR
rejects cloud-cover queries and a static catalog filters nothing.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pystac
from pystac_client import Client
from pystac_client.errors import ClientTypeError
from pystac_client.exceptions import APIError
from pystac_client.warnings import PystacClientWarning
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from hyperkd.pipeline.redaction import clean_href, redact, redacted_logger, strip_credentials
from hyperkd.pipeline.stac.hrefs import HrefPolicy
from hyperkd.pipeline.stac.http import RetryingStacApiIO, RetryingStaticIO, StacApiError
from hyperkd.pipeline.stac.items import cloud_cover, scene_datetime
from hyperkd.pipeline.stac.regions import Region
from hyperkd.pipeline.stac.sources import SensorProfile, Source, resolve_source, scene_collections

log = redacted_logger(__name__)


@dataclass(frozen=True)
class SearchQuery:
    """What to look for: sources, region, inclusive date range, cloud limit, pairing window."""

    sources: tuple[str, ...]
    region: Region
    start: dt.date
    end: dt.date
    """Inclusive: scenes acquired on ``end`` (UTC) are found."""
    max_cloud: float | None = None
    """Maximum cloud cover in percent; scenes that do not state it are kept."""
    pair_window_days: int = 10
    allow_hrefs: tuple[str, ...] = ()
    """``--allow-href`` globs: asset hrefs the user trusts beyond the default href policy
    (:mod:`hyperkd.pipeline.stac.hrefs`)."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("no source given: name at least one --source")
        if self.start > self.end:
            raise ValueError(f"start date {self.start} is after end date {self.end}")
        if self.max_cloud is not None and not 0 <= self.max_cloud <= 100:
            raise ValueError(f"max cloud cover {self.max_cloud:g} is outside 0..100 percent")
        if self.pair_window_days < 0:
            raise ValueError(f"pairing window {self.pair_window_days} days is negative")

    @property
    def time_range(self) -> tuple[dt.datetime, dt.datetime]:
        """``[start 00:00, end 23:59:59.999999]`` in UTC."""
        t0 = dt.datetime.combine(self.start, dt.time.min, tzinfo=dt.UTC)
        t1 = dt.datetime.combine(self.end, dt.time.max, tzinfo=dt.UTC)
        return t0, t1


@dataclass(frozen=True)
class Pairing:
    """An EnMAP scene and the HLS scenes overlapping it within the window, least cloudy first."""

    enmap_id: str
    hls_ids: tuple[str, ...]


@dataclass(frozen=True)
class SearchResult:
    """Matched scenes (sorted by time, then id) and their pairings.

    Items carry no credentials: signed or ``user:pass@`` hrefs are stripped; sign with
    :func:`hyperkd.pipeline.stac.credentials.reading_href` just before reading.
    """

    enmap: tuple[pystac.Item, ...]
    hls: tuple[pystac.Item, ...]
    pairs: tuple[Pairing, ...]
    origin: Mapping[str, str] = field(default_factory=dict)
    """Item id -> name of the source it came from (``Source.name``). Reads are routed by
    this, never by collection id: credentials follow the catalog that named the item."""

    def source_of(self, item: pystac.Item, sources: Sequence[Source]) -> Source:
        """The source ``item`` came from, among ``sources``; ``ValueError`` when unknown."""
        name = self.origin.get(item.id)
        if name is None and len(sources) == 1:
            return sources[0]
        for source in sources:
            if source.name == name:
                return source
        raise ValueError(f"item {item.id}: no record of the source it came from")

    @property
    def items(self) -> tuple[pystac.Item, ...]:
        return self.enmap + self.hls

    def __len__(self) -> int:
        return len(self.enmap) + len(self.hls)


def search(query: SearchQuery, *, sources: Sequence[Source] | None = None) -> SearchResult:
    """Search every source, filter, de-duplicate by item id and pair EnMAP with HLS.

    ``sources`` overrides resolving ``query.sources`` by name (tests point sources at a
    loopback server this way). Raises :class:`StacApiError` when an API stays unreachable.
    """
    resolved = (
        tuple(sources) if sources is not None else tuple(resolve_source(s) for s in query.sources)
    )
    seen: dict[str, tuple[pystac.Item, str]] = {}
    origin: dict[str, str] = {}
    for source in resolved:
        raw = _search_api(source, query) if source.kind == "api" else _walk_static(source, query)
        kept = _filter(raw, source, query)
        log.info("%s: %d scenes match", redact(source.name), len(kept))
        for item, sensor in kept:
            if item.id not in seen:  # the first source to name an item keeps it
                seen[item.id] = (item, sensor)
                origin[item.id] = source.name
    ordered = sorted(seen.values(), key=lambda p: (scene_datetime(p[0]), p[0].id))
    enmap = tuple(item for item, sensor in ordered if sensor == "enmap")
    hls = tuple(item for item, sensor in ordered if sensor != "enmap")
    pairs = pair_scenes(enmap, hls, query.pair_window_days)
    return SearchResult(enmap=enmap, hls=hls, pairs=pairs, origin=origin)


def pair_scenes(
    enmap: Sequence[pystac.Item], hls: Sequence[pystac.Item], window_days: int = 10
) -> tuple[Pairing, ...]:
    """For each EnMAP scene, the HLS scenes whose footprint intersects it within ±window days.

    Order: least cloudy first (unknown cloud cover last), ties by time distance, then id.
    """
    window = dt.timedelta(days=window_days)
    hls_info = [(h, _footprint(h), scene_datetime(h), cloud_cover(h)) for h in hls]
    pairs = []
    for scene in enmap:
        foot, when = _footprint(scene), scene_datetime(scene)
        matches = [
            (math.inf if cc is None else cc, abs(t - when), h.id)
            for h, f, t, cc in hls_info
            if abs(t - when) <= window and f.intersects(foot)
        ]
        pairs.append(Pairing(enmap_id=scene.id, hls_ids=tuple(m[2] for m in sorted(matches))))
    return tuple(pairs)


def _search_api(source: Source, query: SearchQuery) -> list[pystac.Item]:
    try:
        return _search_api_pages(source, query)
    except StacApiError:
        raise
    except (
        APIError,
        ClientTypeError,
        PystacClientWarning,
        pystac.STACError,
        ValueError,
        KeyError,
    ) as exc:
        # Not STAC, not ITEM_SEARCH, broken JSON: still one line, still without secrets.
        detail = " ".join(redact(f"{type(exc).__name__}: {exc}").split())[:200]
        where = redact(clean_href(source.url))
        raise StacApiError(f"STAC API {where} gave an unusable answer: {detail}") from None


def _search_api_pages(source: Source, query: SearchQuery) -> list[pystac.Item]:
    io = RetryingStacApiIO(source.retry, label="STAC API")
    client = Client.open(source.url, stac_io=io, timeout=source.retry.timeout_s)
    t0, t1 = query.time_range
    kwargs: dict[str, object] = {
        "method": source.method,
        "collections": list(source.collections),
        "bbox": list(query.region.bbox),
        "datetime": [t0, t1],
        "limit": source.page_size,
    }
    if source.sends_cloud_query and query.max_cloud is not None:
        kwargs["query"] = {"eo:cloud_cover": {"lte": query.max_cloud}}
    items: list[pystac.Item] = []
    pages = 0
    for page in client.search(**kwargs).pages():  # type: ignore[arg-type]
        pages += 1
        items.extend(page.items)
    log.debug("%s: %d items in %d pages", redact(source.url), len(items), pages)
    return items


def _walk_static(source: Source, query: SearchQuery) -> list[pystac.Item]:
    io = RetryingStaticIO(source.retry)
    try:
        doc = io.read_json(source.url)
    except FileNotFoundError:
        raise ValueError(f"static catalog not found: {redact(source.url)}") from None
    except StacApiError:
        raise
    except ValueError as exc:  # json.JSONDecodeError
        raise ValueError(f"static catalog {redact(source.url)} is not JSON: {exc}") from None
    if doc.get("type") == "FeatureCollection":
        collection = pystac.ItemCollection.from_dict(doc, preserve_dict=False)
        for item in collection.items:  # relative hrefs are relative to the file, not to cwd
            for asset in item.assets.values():
                asset.href = pystac.utils.make_absolute_href(asset.href, source.url)
        return list(collection.items)
    try:
        root = pystac.read_dict(doc, href=source.url, stac_io=io)
    except pystac.STACError as exc:
        raise ValueError(f"static catalog {redact(source.url)} is not STAC: {exc}") from None
    if isinstance(root, pystac.Item):
        items = [root]
    elif isinstance(root, pystac.Catalog):
        root._stac_io = io  # children resolve through the root's IO: retries for HTTP catalogs
        items = list(root.get_items(recursive=True))
    else:
        raise ValueError(f"static catalog {redact(source.url)} holds no catalog or items")
    for item in items:
        item.make_asset_hrefs_absolute()
    return items


def _filter(
    items: Iterable[pystac.Item], source: Source, query: SearchQuery
) -> list[tuple[pystac.Item, str]]:
    """Items that are scenes we read and match the region, dates and cloud limit."""
    region = query.region.shape
    t0, t1 = query.time_range
    policy = HrefPolicy.for_catalog(
        source.url if source.kind == "static" else None, query.allow_hrefs
    )
    kept: list[tuple[pystac.Item, str]] = []
    dropped: dict[str, int] = {}
    for item in items:
        profile = next(filter(None, map(source.profile, scene_collections(item))), None)
        if profile is None:
            reason = "not an EnMAP L2A/HLS collection"
        elif not t0 <= scene_datetime(item) <= t1:
            reason = "outside the date range"
        elif not _footprint(item).intersects(region):
            reason = "outside the region"
        elif query.max_cloud is not None and (cloud_cover(item, profile) or 0.0) > query.max_cloud:
            reason = "too cloudy"
        else:
            policy.check(item.id, _read_hrefs(item, profile))  # refuses the run, one line
            _strip_asset_credentials(item)
            kept.append((item, profile.sensor))
            continue
        dropped[reason] = dropped.get(reason, 0) + 1
    if dropped:
        log.debug("%s: dropped %s", redact(source.name), dropped)
    return kept


def _read_hrefs(item: pystac.Item, profile: SensorProfile) -> list[str]:
    """Absolute hrefs of the assets an ingest reads (bands and quality layers)."""
    keys = [*profile.band_assets.values(), *profile.quality_assets]
    return [
        item.assets[k].get_absolute_href() or item.assets[k].href for k in keys if k in item.assets
    ]


def _footprint(item: pystac.Item) -> BaseGeometry:
    if item.geometry:
        return shape(item.geometry)
    if item.bbox:
        half = len(item.bbox) // 2  # 2-D or 3-D bbox
        return box(item.bbox[0], item.bbox[1], item.bbox[half], item.bbox[half + 1])
    raise ValueError(f"item {item.id} has neither geometry nor bbox")


def _strip_asset_credentials(item: pystac.Item) -> None:
    """Results never hold signed URLs: a SAS token in a stored href expires and leaks."""
    for asset in item.assets.values():
        asset.href = strip_credentials(asset.href)
