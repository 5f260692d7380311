"""Ingest: STAC scenes loaded onto the cube grid, quality-masked and committed to the cube."""

from hyperkd.pipeline.ingest.region import (
    IngestConfig,
    IngestParams,
    SceneOutcome,
    ingest_region,
    ingest_scene,
    plan_scenes,
    region_grid,
)

__all__ = [
    "IngestConfig",
    "IngestParams",
    "SceneOutcome",
    "ingest_region",
    "ingest_scene",
    "plan_scenes",
    "region_grid",
]
