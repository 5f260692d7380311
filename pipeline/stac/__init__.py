"""STAC in: sources from ``catalogs/sources``, regions, search and pairing, item quirks,
credentials scoped to their hosts, and HTTP with retries.
"""

from hyperkd.pipeline.stac.credentials import gdal_env, reading_href
from hyperkd.pipeline.stac.http import StacApiError
from hyperkd.pipeline.stac.regions import named_regions, parse_region
from hyperkd.pipeline.stac.search import SearchQuery, SearchResult, pair_scenes, search
from hyperkd.pipeline.stac.sources import (
    SensorProfile,
    Source,
    profile_of,
    resolve_source,
    sensor_of,
    static_source,
)

__all__ = [
    "SearchQuery",
    "SearchResult",
    "SensorProfile",
    "Source",
    "StacApiError",
    "gdal_env",
    "named_regions",
    "pair_scenes",
    "parse_region",
    "profile_of",
    "reading_href",
    "resolve_source",
    "search",
    "sensor_of",
    "static_source",
]
