"""Ingest: STAC scenes -> one co-registered, crash-safe Zarr v3 cube per region.

Library entry points (the Prefect flows call these; results are small records, no arrays):

* :func:`ingest_region` (``IngestConfig`` -> ``IngestSummary``): search, fix the grid, then
  write every EnMAP scene and every paired HLS scene, one commit per scene, under one lock.
* :func:`ingest_scene` (one item -> ``SceneOutcome``): the same for a single scene.

A scene already in the cube (keyed by item id) is skipped; a failing scene (unreadable file,
404, band-count mismatch, missing band metadata) is reported with its reason and leaves nothing
behind. A cube created by a run that then wrote no scene is removed again.
"""

from __future__ import annotations

import datetime as dt
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pystac
from rasterio.errors import NotGeoreferencedWarning

from hyperkd.pipeline.cube import CubeLayout, CubeWriter, EmptySceneError, SceneWrite
from hyperkd.pipeline.cube.bandmap import load_band_table, plan_bands
from hyperkd.pipeline.cube.layout import Grid
from hyperkd.pipeline.ingest.loading import RESAMPLING, enmap_grid, load_enmap, load_hls
from hyperkd.pipeline.redaction import clean_href, redact, redacted_logger
from hyperkd.pipeline.stac.items import (
    cloud_cover,
    datatake_of,
    enmap_bands_of,
    newness,
    processor_version,
    scene_datetime,
)
from hyperkd.pipeline.stac.search import SearchQuery, SearchResult, search
from hyperkd.pipeline.stac.sources import Source, profile_of, resolve_source
from hyperkd.pipeline.store.guard import check_output

log = redacted_logger(__name__)


@dataclass(frozen=True)
class IngestParams:
    """How scenes are loaded; recorded in every scene's provenance."""

    bands: str | None = None
    """Canonical band table: ``None`` (catalog EnMAP table), a catalogs/sensors name or a path."""
    resampling: str = "bilinear"
    """HLS onto the EnMAP grid: ``bilinear``, ``nearest`` or ``cubic``."""
    tile_size: int = 128

    def __post_init__(self) -> None:
        if self.resampling not in RESAMPLING:
            raise ValueError(f"unknown resampling {self.resampling!r}: choose one of {RESAMPLING}")
        if not 8 <= self.tile_size <= 4096:
            raise ValueError(f"tile size {self.tile_size} must be between 8 and 4096")

    def as_record(self) -> dict[str, Any]:
        return {"bands": self.bands or "enmap_hsi", "resampling": self.resampling,
                "tile_size": self.tile_size}  # fmt: skip


@dataclass(frozen=True)
class IngestConfig:
    """One ingest run: what to search, where the cube goes, how to load."""

    query: SearchQuery
    out: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    params: IngestParams = IngestParams()
    lock_timeout_s: float = 60.0
    min_valid_pixels: int = 1
    """A scene adding fewer valid pixels to the region is reported ``empty``, not written."""


@dataclass(frozen=True)
class SceneOutcome:
    """What happened to one scene: ``written``, ``skipped`` (already present, or an HLS
    scene whose EnMAP pair is not in the cube), ``empty`` (too few valid pixels in the
    region; not written) or ``failed``."""

    scene_id: str
    group: str
    status: str
    reason: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class IngestSummary:
    """The run's result: every scene's outcome plus the cube it went to."""

    cube: str
    outcomes: tuple[SceneOutcome, ...] = ()
    message: str = ""

    def _ids(self, status: str) -> tuple[str, ...]:
        return tuple(o.scene_id for o in self.outcomes if o.status == status)

    @property
    def written(self) -> tuple[str, ...]:
        return self._ids("written")

    @property
    def skipped(self) -> tuple[str, ...]:
        return self._ids("skipped")

    @property
    def empty(self) -> tuple[str, ...]:
        return self._ids("empty")

    @property
    def failed(self) -> tuple[SceneOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")

    @property
    def ok(self) -> bool:
        return not self.failed


def _group_of(item: pystac.Item) -> str:
    profile = profile_of(item)
    if profile is None:
        raise ValueError(f"item {item.id}: collection {item.collection_id!r} is not EnMAP or HLS")
    return "enmap" if profile.sensor == "enmap" else "hls"


def _record(item: pystac.Item, keys: Sequence[str], params: IngestParams) -> dict[str, Any]:
    import hyperkd

    return {
        "collection": item.collection_id,
        "hrefs": {k: clean_href(item.assets[k].get_absolute_href() or "") for k in keys},
        "processing_version": processor_version(item),
        "datatake": datatake_of(item.id),
        "cloud_cover": cloud_cover(item),
        "footprint": item.geometry,  # lon/lat GeoJSON; the scene's STAC item clips it to the cube
        "ingested_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code_version": hyperkd.__version__,
        "parameters": params.as_record(),
    }


def _scene_write(
    item: pystac.Item, source: Source, grid: Grid, params: IngestParams, paired_enmap: str
) -> SceneWrite:
    """Load ``item`` lazily onto ``grid``; raises ``ValueError`` with a one-line reason."""
    profile = profile_of(item)
    group = _group_of(item)
    assert profile is not None
    if group == "enmap":
        scene_bands = enmap_bands_of(item, profile)
        plan = plan_bands(scene_bands, load_band_table(params.bands))
        loaded = load_enmap(item, source, profile, scene_bands, plan, grid, params.tile_size)
        keys = [profile.band_assets["reflectance"], *loaded.details["quality_layers"]]
        record = _record(item, keys, params) | {
            "wavelength": scene_bands.wavelengths.tolist(),
            "fwhm": scene_bands.fwhms.tolist(),
            "details": dict(loaded.details),
        }
        labels: dict[str, str] = {}
    else:
        loaded = load_hls(item, source, profile, grid, params.tile_size, params.resampling)
        keys = [*profile.band_assets.values(), *profile.quality_assets]
        sensor = "L30" if profile.sensor == "hls-l30" else "S30"
        labels = {"sensor": sensor, "paired_enmap": paired_enmap}
        record = _record(item, keys, params) | labels | {"details": dict(loaded.details)}
    return SceneWrite(
        group, item.id, scene_datetime(item), loaded.reflectance, loaded.valid, labels, record
    )


def _write_one(
    writer: CubeWriter,
    item: pystac.Item,
    source: Source,
    params: IngestParams,
    paired_enmap: str = "",
    load: Callable[..., SceneWrite] | None = None,
) -> SceneOutcome:
    """``load`` (default: :func:`_scene_write`) gives the scene's arrays; the parallel ingest
    passes one that waits for a scene loaded ahead of time (pipeline/ingest/parallel.py)."""
    t0 = time.monotonic()
    group = "?"
    try:
        group = _group_of(item)
        if item.id in writer.scene_ids(group):
            return SceneOutcome(item.id, group, "skipped", "already in the cube")
        prior = _same_datatake(writer, group, item)
        if prior is not None and _newness(prior) >= newness(item.id, processor_version(item)):
            why = f"{prior['id']} (the same datatake, processed the same or later) is in the cube"
            return SceneOutcome(item.id, group, "skipped", why)
        if paired_enmap and paired_enmap not in writer.scene_ids("enmap"):
            # Its EnMAP pair failed or was empty: never point paired_enmap outside the cube.
            why = f"its EnMAP pair {paired_enmap} is not in the cube"
            return SceneOutcome(item.id, group, "skipped", why)
        with warnings.catch_warnings():
            # odc-stac warps empty HLS chunks through an identity transform and rasterio warns
            # NotGeoreferencedWarning (stack.md §a, harmless); only that warning is silenced.
            warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
            # odc-geo multiplies affines with `*`, which affine 3 marks as pending deprecation.
            warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module=r"odc\.")
            scene = (load or _scene_write)(item, source, writer.grid, params, paired_enmap)
            # A reprocessed product takes its predecessor's place; the old id stays in provenance.
            writer.append(scene, replaces=prior["id"] if prior is not None else None)
    except EmptySceneError as exc:  # nothing was committed
        return SceneOutcome(item.id, group, "empty", str(exc), time.monotonic() - t0)
    except Exception as exc:  # a scene's failure is reported, never fatal to the run
        return SceneOutcome(item.id, group, "failed", failure_reason(exc), time.monotonic() - t0)
    return SceneOutcome(item.id, group, "written", "", time.monotonic() - t0)


def failure_reason(exc: BaseException) -> str:
    """A failed scene's one-line reason, without credentials: a ``ValueError``'s message, or
    the error's class and message."""
    return redact(f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else exc)


def _same_datatake(writer: CubeWriter, group: str, item: pystac.Item) -> dict[str, Any] | None:
    """The committed scene of ``item``'s datatake/granule, another processing of it."""
    key = datatake_of(item.id)
    return next((r for r in writer.records(group) if datatake_of(r["id"]) == key), None)


def _newness(record: dict[str, Any]) -> tuple[tuple[int, ...], str]:
    return newness(record["id"], record.get("processing_version"))


def ingest_scene(
    cube_url: str,
    item: pystac.Item,
    source: Source,
    grid: Grid,
    params: IngestParams = IngestParams(),
    *,
    paired_enmap: str = "",
    region: str = "",
    storage_options: Mapping[str, Any] | None = None,
    lock_timeout_s: float = 60.0,
    min_valid_pixels: int = 1,
) -> SceneOutcome:
    """Write one scene into the cube at ``cube_url`` (created on ``grid`` if absent).

    An existing cube keeps its own grid; ``grid`` is only used to create one.
    """
    check_output(cube_url, "cube", _source_roots([source]), storage_options)
    with CubeWriter(
        cube_url, storage_options, lock_timeout_s=lock_timeout_s, min_valid_pixels=min_valid_pixels
    ) as writer:
        created = not writer.exists
        if created:
            bands = load_band_table(params.bands)
            writer.create(CubeLayout(grid, bands, params.tile_size, region))
        outcome = _write_one(writer, item, source, params, paired_enmap)
        if created and outcome.status != "written":
            writer.remove()
        return outcome


def region_grid(item: pystac.Item, source: Source, bbox_lonlat: Sequence[float] | None) -> Grid:
    """The cube grid: the EnMAP scene's own grid, cropped to the region (pixel phase kept)."""
    profile = profile_of(item)
    assert profile is not None
    grid = enmap_grid(item, profile, source)
    if bbox_lonlat is None:
        return grid
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    x0, y0, x1, y1 = tr.transform_bounds(*bbox_lonlat)
    a, e = abs(grid.transform[0]), abs(grid.transform[4])
    if x1 - x0 < a or y1 - y0 < e:
        raise ValueError(
            f"the region's bbox is {x1 - x0:.3g} x {y1 - y0:.3g} m, smaller than one "
            f"{a:g} x {e:g} m pixel: give a larger region"
        )
    return grid.crop((x0, y0, x1, y1))


def _source_roots(sources: Sequence[Source]) -> list[str]:
    """The folders (or URL prefixes) holding the static catalogs among ``sources``."""
    return [s.url.rsplit("/", 1)[0] for s in sources if s.kind == "static" and "/" in s.url]


@dataclass(frozen=True)
class PlannedScene:
    """One scene to ingest, with the source it came from and its EnMAP pair (HLS only)."""

    item: pystac.Item
    source: Source
    paired_enmap: str = ""

    @property
    def group(self) -> str:
        return _group_of(self.item)


def plan_scenes(result: SearchResult, sources: Sequence[Source]) -> list[PlannedScene]:
    """The ingest order: every EnMAP scene, then every paired HLS scene, each by time.

    Each scene goes to its place on its group's time axis, so any order gives the same cube;
    time order keeps every write an append (no slot moves). An HLS
    scene paired with two EnMAP scenes keeps its first (earliest) pair; unpaired HLS scenes
    are not ingested.
    """
    pairs: dict[str, str] = {}
    for pairing in result.pairs:
        for h in pairing.hls_ids:
            pairs.setdefault(h, pairing.enmap_id)

    def source_of(item: pystac.Item) -> Source:
        return result.source_of(item, sources)  # where it came from, never its collection id

    enmap = [PlannedScene(item, source_of(item)) for item in result.enmap]
    hls = [PlannedScene(h, source_of(h), pairs[h.id]) for h in result.hls if h.id in pairs]
    return [*enmap, *hls]


def ingest_region(
    config: IngestConfig,
    *,
    result: SearchResult | None = None,
    sources: Sequence[Source] | None = None,
    progress: Callable[[SceneOutcome], None] | None = None,
) -> IngestSummary:
    """Search (unless ``result`` is given) and ingest every EnMAP and paired HLS scene.

    ``sources`` overrides resolving ``config.query.sources`` by name (as in ``search``).

    EnMAP scenes go first, then HLS, each by time. Nothing is created when there are no
    scenes; a cube this run created stays only if at least one scene was written.
    """
    query = config.query
    resolved = tuple(sources) if sources is not None else tuple(map(resolve_source, query.sources))
    # Never write a cube over, inside or around what is not a cube (a static catalog's folder).
    check_output(config.out, "cube", _source_roots(resolved), config.storage_options)
    result = result if result is not None else search(query, sources=resolved)
    planned = plan_scenes(result, resolved)
    if not planned:
        return IngestSummary(config.out, (), f"no scenes in region {query.region.name}")
    outcomes: list[SceneOutcome] = []
    load_band_table(config.params.bands)  # bad --bands fails before anything is written

    def report(outcome: SceneOutcome) -> None:
        outcomes.append(outcome)
        log.debug("%s %s %s %s", outcome.status, outcome.group, outcome.scene_id, outcome.reason)
        if progress is not None:
            progress(outcome)

    writer = CubeWriter(
        config.out,
        config.storage_options,
        lock_timeout_s=config.lock_timeout_s,
        min_valid_pixels=config.min_valid_pixels,
    )
    with writer as w:
        created = False
        if not w.exists:
            if not result.enmap:
                return IngestSummary(config.out, (), "no EnMAP scene to define the cube grid")
            first = planned[0]
            grid = region_grid(first.item, first.source, query.region.bbox)
            bands = load_band_table(config.params.bands)
            w.create(CubeLayout(grid, bands, config.params.tile_size, query.region.name))
            created = True
        for scene in planned:
            report(_write_one(w, scene.item, scene.source, config.params, scene.paired_enmap))
        if created and not any(o.status == "written" for o in outcomes):
            w.remove()
    return IngestSummary(config.out, tuple(outcomes))
