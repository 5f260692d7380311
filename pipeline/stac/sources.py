"""STAC sources: the APIs in ``catalogs/sources/*.yaml`` and static catalogs given by path/URL.

A :class:`Source` says where to search (URL, collections), how (page size, GET/POST, where
cloud cover is filtered, retry policy) and how to read what it finds (per-collection sensor
profile, credentials, URL signing). Every fact lives in the YAML; this module only parses it.

Collections are recognised by their real ids (``ENMAP_HSI_L2A``, ``HLSL30_2.0``, ``hls2-s30``
and the old ``HLSL30.v1.5`` forms), so a static catalog gets the same profiles as the API that
publishes those collections.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pystac
import yaml

from hyperkd.catalogs import resource
from hyperkd.pipeline.sensors import enmap_table, hls_sensor
from hyperkd.pipeline.stac.publish import SOURCE_COLLECTION

SENSORS = ("enmap", "hls-l30", "hls-s30")
AUTH_KINDS = ("earthdata", "dlr", "planetary-computer")
CLOUD_FILTERS = ("client", "query")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try an HTTP request before giving up.

    ``tries`` counts every attempt (1 = no retry). The wait before retry *n* is
    ``min(backoff_max_s, backoff_s * 2**(n-1)) + uniform(0, jitter_s)`` seconds, or the
    server's ``Retry-After`` (capped at ``backoff_max_s``). ``timeout_s`` bounds connect and
    read of each attempt.
    """

    tries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    jitter_s: float = 1.0
    timeout_s: float = 60.0
    statuses: tuple[int, ...] = (429, 500, 502, 503, 504)

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise ValueError(f"retry policy: tries must be at least 1, got {self.tries}")
        if min(self.backoff_s, self.backoff_max_s, self.jitter_s) < 0 or self.timeout_s <= 0:
            raise ValueError("retry policy: delays must be >= 0 and timeout_s > 0")


@dataclass(frozen=True)
class SensorProfile:
    """How to read one collection: its sensor, asset keys and metadata quirks."""

    collection: str
    sensor: str
    """``"enmap"``, ``"hls-l30"`` or ``"hls-s30"``."""
    aliases: tuple[str, ...] = ()
    band_assets: Mapping[str, str] = field(default_factory=dict)
    """Band role -> asset key. EnMAP: ``{"reflectance": "image"}`` (one 224-band asset);
    HLS: the six teacher roles (``blue`` ... ``swir2``) -> ``B02`` ... from ``hls_sensor()``."""
    quality_assets: Mapping[str, str] = field(default_factory=dict)
    """Asset key -> meaning (``quality_cloud`` -> ``cloud``; HLS ``Fmask`` -> ``fmask``)."""
    band_metadata: str | None = None
    """Asset whose ``eo:bands`` describe the bands (EnMAP ``image``)."""
    nodata_property: str | None = None
    """Item property holding the nodata value (``enmap:nodata``)."""
    nodata: int | None = None
    """Fallback nodata from the sensor table."""
    scale: float = 1.0
    offset: float = 0.0
    projection: str = "file"
    """Where the grid comes from: ``asset`` (per-asset ``proj:*``), ``item`` or ``file``."""
    metadata_asset: str | None = None
    cloud_property: str = "eo:cloud_cover"

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.collection, *self.aliases)


@dataclass(frozen=True)
class Source:
    """One place to search: a STAC API from the catalog or a static catalog."""

    name: str
    kind: str
    """``"api"`` (pystac-client search) or ``"static"`` (walk with pystac)."""
    url: str
    collections: tuple[str, ...]
    profiles: tuple[SensorProfile, ...] = ()
    description: str = ""
    method: str = "POST"
    page_size: int = 100
    cloud_filter: str = "client"
    """``client``: never send cloud cover to the server (CMR rejects it), filter the results;
    ``query``: also send the STAC query extension ``eo:cloud_cover <= max``."""
    auth: str | None = None
    """``"earthdata"``, ``"dlr"``, ``"planetary-computer"`` or ``None``."""
    netrc_hosts: tuple[str, ...] = ()
    credential_hosts: tuple[str, ...] = ()
    """Hosts this source's credentials (bearer token, netrc, SAS) may be sent to, over https
    only. ``.example.org`` matches every subdomain of example.org."""
    asset_hosts: tuple[str, ...] = ()
    """Hosts whose assets are read without ``--allow-href`` (same matching)."""
    token_env: str | None = None
    cookies: bool = False
    signing: Mapping[str, Any] | None = None
    """URL signing (Planetary Computer SAS): ``kind``, ``token_url``, ``blob_host_suffix``,
    ``refresh_margin_s``. Applied just before reading, never stored."""
    retry: RetryPolicy = RetryPolicy()
    gdal: Mapping[str, str] = field(default_factory=dict)
    """Extra GDAL config options for reading this source's assets (no secrets)."""
    ignored_collections: tuple[str, ...] = ()
    pitfalls: tuple[str, ...] = ()

    @property
    def sends_cloud_query(self) -> bool:
        return self.cloud_filter == "query"

    def serves(self, host: str | None) -> bool:
        """True when ``host`` is one of :attr:`credential_hosts`."""
        return host_matches(host, self.credential_hosts)

    def profile(self, collection: str | None) -> SensorProfile | None:
        """The profile for a collection id (or alias), ``None`` for anything else."""
        for p in self.profiles:
            if collection in p.ids:
                return p
        return None


def host_matches(host: str | None, patterns: tuple[str, ...]) -> bool:
    """``host`` equals a pattern, or ends with one that starts with ``.`` (case-insensitive)."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    for pattern in patterns:
        p = pattern.lower()
        if host == p or (p.startswith(".") and host.endswith(p)):
            return True
    return False


def source_names() -> tuple[str, ...]:
    """Names of the shipped API sources (``catalogs/sources/*.yaml``)."""
    names = [
        n.name.removesuffix(".yaml")
        for n in resource("sources").iterdir()
        if n.name.endswith(".yaml")
    ]
    return tuple(sorted(names))


@cache
def load_source(name: str) -> Source:
    """A shipped source by name."""
    if name not in source_names():
        raise ValueError(_unknown(name))
    raw = yaml.safe_load(resource("sources", f"{name}.yaml").read_text())
    try:
        return _source_from_dict(raw)
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"catalogs/sources/{name}.yaml is malformed: missing or bad {exc}"
        ) from None


def resolve_source(text: str) -> Source:
    """A source from a catalog name, or a path/URL to a static ``catalog.json`` (or a folder
    holding one, or a hyperkd cube folder with its ``collection.json``).

    A static source may also be a STAC ItemCollection JSON (a saved search page).
    """
    text = text.strip()
    if text in source_names():
        return load_source(text)
    if text.startswith(("http://", "https://")):
        return static_source(text)
    path = Path(text).expanduser()
    for root_doc in ("catalog.json", "collection.json"):  # collection.json: a hyperkd store
        if path.is_dir() and (path / root_doc).is_file():
            return static_source(str((path / root_doc).resolve()))
    if path.is_file() and path.suffix == ".json":
        return static_source(str(path.resolve()))
    if path.suffix == ".json" or "/" in text:
        raise ValueError(f"static catalog not found: {text}")
    raise ValueError(_unknown(text))


def static_source(url: str) -> Source:
    """A static catalog (or ItemCollection) at ``url``, with every known sensor profile."""
    profiles = known_profiles()
    return Source(
        name=url,
        kind="static",
        url=url,
        collections=tuple(p.collection for p in profiles),
        profiles=profiles,
        description="static STAC catalog",
        ignored_collections=tuple(
            c for n in source_names() for c in load_source(n).ignored_collections
        ),
    )


@cache
def known_profiles() -> tuple[SensorProfile, ...]:
    """Every collection profile of every shipped source."""
    return tuple(p for n in source_names() for p in load_source(n).profiles)


def shipped_sources() -> tuple[Source, ...]:
    """Every shipped API source (``catalogs/sources/*.yaml``)."""
    return tuple(load_source(n) for n in source_names())


def declared_asset_hosts() -> tuple[str, ...]:
    """The asset hosts every shipped source declares (href policy: read without ``--allow-href``)."""
    return tuple(h for s in shipped_sources() for h in s.asset_hosts)


def scene_collections(item: pystac.Item) -> tuple[str | None, ...]:
    """The collection ids an item is a scene of: its own, then for a scene of a hyperkd cube
    (``<cube>/items/*.json``) the collection it was ingested from."""
    return (item.collection_id, item.properties.get(SOURCE_COLLECTION))


def profile_of(item: pystac.Item) -> SensorProfile | None:
    """The sensor profile for an item's collection id, ``None`` when it is not a scene we read."""
    for collection in scene_collections(item):
        for p in known_profiles():
            if collection in p.ids:
                return p
    return None


def sensor_of(item: pystac.Item) -> str:
    """``"enmap"``, ``"hls-l30"`` or ``"hls-s30"``, chosen by the item's collection id."""
    profile = profile_of(item)
    if profile is None:
        raise ValueError(
            f"item {item.id}: collection {item.collection_id!r} is not an EnMAP L2A or HLS "
            f"collection (known: {', '.join(i for p in known_profiles() for i in p.ids)})"
        )
    return profile.sensor


def _unknown(name: str) -> str:
    return (
        f"unknown source {name!r}: choose one of {', '.join(source_names())} "
        "or a path/URL to catalog.json"
    )


def _source_from_dict(raw: Mapping[str, Any]) -> Source:
    kind = str(raw["kind"])
    if kind not in ("api", "static"):
        raise ValueError(f"source {raw['name']}: kind must be 'api' or 'static', got {kind!r}")
    cloud_filter = str(raw.get("cloud_filter", "client"))
    if cloud_filter not in CLOUD_FILTERS:
        raise ValueError(f"source {raw['name']}: cloud_filter must be one of {CLOUD_FILTERS}")
    auth = raw.get("auth") or {}
    auth_kind = auth.get("kind")
    if auth_kind is not None and auth_kind not in AUTH_KINDS:
        raise ValueError(f"source {raw['name']}: auth kind {auth_kind!r} not in {AUTH_KINDS}")
    credential_hosts = tuple(str(h) for h in auth.get("hosts") or ())
    netrc_hosts = tuple(str(h) for h in auth.get("netrc_hosts") or ())
    if auth_kind is not None and not credential_hosts:
        raise ValueError(f"source {raw['name']}: auth needs 'hosts', where its credentials go")
    if not set(netrc_hosts) <= set(credential_hosts):
        raise ValueError(f"source {raw['name']}: every auth netrc_hosts entry must be in hosts")
    retry = raw.get("retry") or {}
    profiles = tuple(_profile_from_dict(c) for c in raw["collections"])
    return Source(
        name=str(raw["name"]),
        kind=kind,
        url=str(raw["url"]),
        collections=tuple(p.collection for p in profiles),
        profiles=profiles,
        description=str(raw.get("description", "")),
        method=str(raw.get("method", "POST")).upper(),
        page_size=int(raw.get("page_size", 100)),
        cloud_filter=cloud_filter,
        auth=auth_kind,
        netrc_hosts=netrc_hosts,
        credential_hosts=credential_hosts,
        asset_hosts=tuple(str(h) for h in raw.get("asset_hosts") or ()),
        token_env=auth.get("token_env"),
        cookies=bool(auth.get("cookies", False)),
        signing=dict(raw["signing"]) if raw.get("signing") else None,
        retry=RetryPolicy(
            tries=int(retry.get("tries", 5)),
            backoff_s=float(retry.get("backoff_s", 1.0)),
            backoff_max_s=float(retry.get("backoff_max_s", 30.0)),
            jitter_s=float(retry.get("jitter_s", 1.0)),
            timeout_s=float(retry.get("timeout_s", 60.0)),
            statuses=tuple(int(s) for s in retry.get("statuses", (429, 500, 502, 503, 504))),
        ),
        gdal={str(k): str(v) for k, v in (raw.get("gdal") or {}).items()},
        ignored_collections=tuple(raw.get("ignored_collections") or ()),
        pitfalls=tuple(raw.get("pitfalls") or ()),
    )


def _profile_from_dict(raw: Mapping[str, Any]) -> SensorProfile:
    """A collection's profile: YAML facts plus the sensor table's asset keys and scaling."""
    sensor = str(raw["sensor"])
    if sensor not in SENSORS:
        raise ValueError(f"collection {raw['id']}: sensor {sensor!r} not in {SENSORS}")
    common = {
        "collection": str(raw["id"]),
        "sensor": sensor,
        "aliases": tuple(raw.get("aliases") or ()),
        "projection": str(raw.get("projection", "file")),
        "metadata_asset": raw.get("metadata_asset"),
    }
    if sensor == "enmap":
        table = enmap_table()
        image = str(raw.get("image_asset", table.image_asset))
        return SensorProfile(
            **common,
            band_assets={"reflectance": image},
            quality_assets=dict(raw.get("quality_assets") or table.quality_assets),
            band_metadata=raw.get("band_metadata", image),
            nodata_property=raw.get("nodata_property"),
            nodata=table.bands.nodata,
            scale=table.scale,
            offset=table.offset,
        )
    hls = hls_sensor()
    return SensorProfile(
        **common,
        band_assets=hls.asset_keys(sensor.removeprefix("hls-")),
        quality_assets={hls.fmask_asset: "fmask"},
        nodata=hls.nodata,
        scale=hls.scale,
        offset=hls.offset,
    )
