"""Validate STAC documents offline: the core STAC 1.1 schemas that pystac ships, plus the
extension schemas copied into ``tests/fixtures/stac-schemas/`` (each named by its ``$id``),
resolved through a local ``referencing`` registry. Nothing is fetched: a document naming an
extension without a fixture fails."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

FIXTURES = Path(__file__).parent / "fixtures" / "stac-schemas"


@cache
def registry() -> Registry:
    from pystac.validation.local_validator import get_local_schema_cache

    schemas: dict[str, dict[str, Any]] = dict(get_local_schema_cache())
    for path in sorted(FIXTURES.glob("*.json")):
        doc = json.loads(path.read_text())
        schemas[doc["$id"]] = doc
    resources = []
    for uri, doc in schemas.items():
        resource = Resource.from_contents(doc, default_specification=DRAFT7)
        for key in {uri, uri.rstrip("#"), uri.rstrip("#") + "#"}:
            resources.append((key, resource))
    return Registry().with_resources(resources)


def schema_uris(doc: dict[str, Any]) -> list[str]:
    """The core schema for the document's type, then every extension it declares."""
    kind = {"Feature": "item", "Collection": "collection", "Catalog": "catalog"}[doc["type"]]
    core = (
        f"https://schemas.stacspec.org/v{doc['stac_version']}/{kind}-spec/json-schema/{kind}.json"
    )
    return [core, *doc.get("stac_extensions", [])]


def validate(doc: dict[str, Any]) -> list[str]:
    """Every schema URI the document was validated against; raises on the first failure."""
    reg = registry()
    checked = []
    for uri in schema_uris(doc):
        try:
            schema = reg.contents(uri)
        except Exception as exc:
            raise AssertionError(f"no offline schema for {uri}: add it to {FIXTURES}") from exc
        jsonschema.Draft7Validator(schema, registry=reg).validate(doc)
        checked.append(uri)
    return checked
