"""Load one STAC scene lazily onto the cube's grid with odc-stac (docs/cube.md "Grid").

* The grid is the EnMAP product's own 30 m pixel grid, built from the ``image`` asset's
  ``proj:transform``/``proj:shape``/``proj:epsg`` and passed to odc-stac as ``geobox=`` so it is
  never snapped to multiples of 30 m. EnMAP on its own grid is read without resampling.
* The 224-band asset is ONE variable with a ``band`` dim (``stac_cfg`` dims): per-band
  variables are ~50x slower on pixel-interleaved COGs (stack.md §a).
* HLS is resampled onto that grid (bilinear by default); CMR-STAC HLS items carry no
  projection, so the grid is read from the first band file before odc-stac sees the item.
* Reads use :func:`~hyperkd.pipeline.stac.credentials.reading_href` (signed just before reading) and
  :func:`~hyperkd.pipeline.stac.credentials.gdal_env` for the hrefs read (credentials only for
  https hosts the source declares); provenance keeps ``clean_href`` only.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pystac

from hyperkd.pipeline.cube.bandmap import COPY, CUBE_SCALE, INTERPOLATE, BandPlan
from hyperkd.pipeline.cube.layout import ENMAP_NODATA, Grid
from hyperkd.pipeline.ingest.quality import ENMAP_MASKING, enmap_valid, hls_valid
from hyperkd.pipeline.redaction import redacted_logger
from hyperkd.pipeline.sensors import EnmapBands, hls_sensor
from hyperkd.pipeline.stac.sources import SensorProfile, Source

_log = redacted_logger(__name__)

RESAMPLING = ("bilinear", "nearest", "cubic")


@dataclass(frozen=True)
class RasterHeader:
    """What the first read of a raster file says: grid, band count, dtype and band scales."""

    grid: Grid
    count: int
    dtype: str
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    block: tuple[int, int] = (256, 256)
    """Internal tile size ``(rows, cols)`` of the file."""

    def read_chunk(self, tile: int) -> int:
        """Chunk side for reading: whole file blocks, a multiple of the cube ``tile``.

        Reading 128 px chunks from 256 px blocks decodes every block four times (3x slower
        on the factory's COGs); the cube's own chunks are cut from these afterwards.
        """
        block = max(self.block)
        return min(max(tile, -(-block // tile) * tile), 1024)


@dataclass(frozen=True)
class LoadedScene:
    """A scene as lazy dask arrays on the cube grid, ready for ``CubeWriter.append``.

    ``reflectance``: ``(band, y, x)`` int16 (cube band axis); ``valid``: ``(y, x)`` bool.
    """

    reflectance: Any
    valid: Any
    details: Mapping[str, Any]
    """Scene facts for the provenance record (band plan counts, file scale, ...)."""


def read_header(href: str, source: Source) -> RasterHeader:
    """Open ``href`` (signed, with the source's GDAL env) and read its header only.

    Raises ``ValueError`` with a one-line, credential-free message for unreadable files.
    """
    import rasterio

    from hyperkd.pipeline.redaction import clean_href, redact
    from hyperkd.pipeline.stac.credentials import gdal_env, reading_href

    try:
        with (
            rasterio.Env(**gdal_env(source, [href])),
            rasterio.open(reading_href(href, source)) as ds,
        ):
            if ds.crs is None:
                raise ValueError(f"{clean_href(href)} has no CRS")
            t = ds.transform
            grid = Grid(ds.crs.to_string(), (t.a, t.b, t.c, t.d, t.e, t.f), (ds.height, ds.width))
            return RasterHeader(
                grid,
                ds.count,
                ds.dtypes[0],
                tuple(map(float, ds.scales)),
                tuple(ds.offsets),
                tuple(ds.block_shapes[0]),  # type: ignore[arg-type]
            )
    except rasterio.errors.RasterioError as exc:
        raise ValueError(f"cannot read {clean_href(href)}: {redact(exc)}") from None


def enmap_grid(item: pystac.Item, profile: SensorProfile, source: Source) -> Grid:
    """The EnMAP scene's own grid, from the file's header.

    When the image asset's ``proj:*`` fields disagree with the header (CRS, transform or
    shape: a ``proj:shape`` of 200000 x 200000), a warning names the item and the file wins.
    """
    import pyproj

    from hyperkd.pipeline.stac.items import asset_grid

    key = profile.band_assets["reflectance"]
    g = asset_grid(item, key)
    try:
        header = read_header(item.assets[key].get_absolute_href() or "", source).grid
    except ValueError:
        if g is None:
            raise
        # An unreadable file fails its scene when it is loaded, reported like any other.
        return Grid.from_proj(g.epsg, g.transform, g.shape)
    if g is not None:
        stac = Grid.from_proj(g.epsg, g.transform, g.shape)
        same = (
            stac.shape == header.shape
            and all(abs(a - b) < 1e-6 * max(1.0, abs(b)) for a, b in zip(stac.transform, header.transform, strict=True))
            and pyproj.CRS.from_user_input(stac.crs) == pyproj.CRS.from_user_input(header.crs)
        )  # fmt: skip
        if not same:
            _log.warning(
                "item %s: its proj: fields (%s, %s, %s) disagree with the file's header "
                "(%s, %s, %s); trusting the file", item.id, stac.crs, list(stac.transform),
                list(stac.shape), header.crs, list(header.transform), list(header.shape),
            )  # fmt: skip
    return header


def _odc_load(
    item: pystac.Item,
    source: Source,
    bands: list[str],
    grid: Grid,
    tile: int,
    cfg: Mapping[str, Any],
    resampling: str | Mapping[str, str],
) -> Any:
    """``odc.stac.load`` of one item onto ``grid``, lazily, in ``tile`` px chunks."""
    import odc.stac

    from hyperkd.pipeline.stac.credentials import gdal_env, reading_href

    # One item per load, so one scope decision per load: its assets' hosts get credentials only
    # when they are https hosts the source declares (gdal_env refuses a mix).
    hrefs = [item.assets[b].get_absolute_href() or "" for b in bands]
    odc.stac.configure_rio(**gdal_env(source, hrefs))
    with warnings.catch_warnings():
        # odc-geo and affine still call deprecated shapely/affine APIs; those warnings are
        # about the libraries, not about this data, and would otherwise fail our tests.
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, module=r"(odc|affine|shapely)"
        )
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        return odc.stac.load(
            [item],
            bands=bands,
            geobox=grid.geobox(),
            chunks={"y": tile, "x": tile},
            stac_cfg=dict(cfg),
            resampling=resampling,
            patch_url=lambda href: reading_href(href, source),
            groupby="id",
        )


def _with_grid(item: pystac.Item, keys: list[str], grid: Grid) -> pystac.Item:
    """A copy of ``item`` whose ``keys`` assets carry ``proj:*`` for ``grid`` (odc-stac needs it
    to plan reads; CMR-STAC HLS items have none)."""
    import pyproj

    clone = item.clone()
    epsg = pyproj.CRS.from_user_input(grid.crs).to_epsg()
    for key in keys:
        fields = clone.assets[key].extra_fields
        fields.setdefault("proj:epsg", epsg)
        fields.setdefault("proj:shape", list(grid.shape))
        fields.setdefault("proj:transform", [*grid.transform, 0.0, 0.0, 1.0])
    return clone


def load_enmap(
    item: pystac.Item,
    source: Source,
    profile: SensorProfile,
    scene_bands: EnmapBands,
    plan: BandPlan,
    grid: Grid,
    tile: int,
) -> LoadedScene:
    """The EnMAP scene on ``grid`` and the canonical band axis (``plan``), lazily.

    Dask chunks are read-sized (whole file blocks); ``CubeWriter.append`` cuts cube tiles.
    """
    key = profile.band_assets["reflectance"]
    header = _enmap_header(item, source, key, len(scene_bands))
    own = Grid.from_proj(header.grid.crs, header.grid.transform, header.grid.shape)
    resampled = not _same_phase(own, grid)
    quality = [
        k for k, meaning in profile.quality_assets.items()
        if meaning in ENMAP_MASKING and k in item.assets
    ]  # fmt: skip
    cfg = _enmap_stac_cfg(item.collection_id, key, header.dtype, scene_bands, quality)
    chunk = header.read_chunk(tile)
    ds = _odc_load(
        _with_grid(item, [key, *quality], own), source, [key, *quality], grid, chunk, cfg, "nearest"
    )
    reflectance = _on_cube_bands(ds[key].data[0], plan, scene_bands)
    valid = _enmap_valid(reflectance, [ds[q].data[0] for q in quality], plan)
    details = {
        "band_plan": plan.counts | {"exact_copy": plan.is_identity},
        "quality_layers": quality,
        "resampled": resampled,
        "file_dtype": header.dtype,
    }
    return LoadedScene(reflectance, valid, details)


def _enmap_header(item: pystac.Item, source: Source, key: str, n_bands: int) -> RasterHeader:
    """The header of the item's ``key`` (reflectance) file, checked to hold ``n_bands`` bands
    (the item's ``eo:bands``)."""
    if key not in item.assets:
        raise ValueError(f"item {item.id} has no {key!r} asset")
    header = read_header(item.assets[key].get_absolute_href() or "", source)
    if header.count != n_bands:
        raise ValueError(
            f"band-count mismatch: eo:bands lists {n_bands} bands but "
            f"the {key} file has {header.count}"
        )
    return header


def _enmap_stac_cfg(
    collection: str | None, key: str, dtype: str, scene_bands: EnmapBands, quality: list[str]
) -> dict[str, Any]:
    """odc-stac's ``stac_cfg``: the reflectance asset ``key`` as ONE ``(band, y, x)`` variable
    (per-band variables are ~50x slower on pixel-interleaved COGs), the quality layers uint8."""
    return {
        collection: {
            "assets": {
                key: {
                    "data_type": dtype,
                    "nodata": scene_bands.nodata,
                    "dims": ["band", "y", "x"],
                },
                **{q: {"data_type": "uint8", "nodata": None} for q in quality},
            },
            "dims": {"band": len(scene_bands)},
        }
    }


def _on_cube_bands(image: Any, plan: BandPlan, scene_bands: EnmapBands) -> Any:
    """The scene's ``(scene band, y, x)`` file values -> ``(band, y, x)`` int16 on the cube's
    band axis (``plan``: copy, interpolate or nodata per cube band), lazily, chunk by chunk."""
    import dask.array as da

    gain = np.asarray(scene_bands.gain, dtype=np.float64)
    offset = np.asarray(scene_bands.offset, dtype=np.float64)
    n = len(plan)
    return da.map_blocks(
        lambda b: plan.apply(b, nodata=scene_bands.nodata, gain=gain, offset=offset),
        image,
        dtype=np.int16,
        chunks=((n,), *image.chunks[1:]),
    )


def _enmap_valid(reflectance: Any, layers: list[Any], plan: BandPlan) -> Any:
    """``(y, x)`` bool: pixels with a value in every cube band the scene provides and clear
    (0) in every quality layer ``(y, x)``, lazily."""
    import dask.array as da

    provided = [c for c, k in enumerate(plan.kind) if k in (COPY, INTERPOLATE)]
    return da.map_blocks(
        lambda r, *ls: enmap_valid(r, *ls, nodata=ENMAP_NODATA, bands=provided),
        reflectance,
        *layers,
        dtype=bool,
        drop_axis=0,
        chunks=reflectance.chunks[1:],
    )


def load_hls(
    item: pystac.Item,
    source: Source,
    profile: SensorProfile,
    grid: Grid,
    tile: int,
    resampling: str,
) -> LoadedScene:
    """The HLS scene resampled onto ``grid`` (``resampling`` for bands, nearest for Fmask)."""
    import dask.array as da

    if resampling not in RESAMPLING:
        raise ValueError(f"unknown resampling {resampling!r}: choose one of {RESAMPLING}")
    hls = hls_sensor()
    keys = [profile.band_assets[name] for name in hls.band_names]
    missing = [k for k in [*keys, hls.fmask_asset] if k not in item.assets]
    if missing:
        raise ValueError(f"item {item.id} lacks assets {missing}")
    header = read_header(item.assets[keys[0]].get_absolute_href() or "", source)
    # The cube stores reflectance x 10000; a file whose own scale differs is rescaled.
    file_scale = (
        header.scales[0] if header.scales and header.scales[0] not in (0.0, 1.0) else hls.scale
    )
    cfg = {
        item.collection_id: {
            "assets": {
                "*": {"data_type": "int16", "nodata": hls.nodata},
                hls.fmask_asset: {"data_type": "uint8", "nodata": hls.fmask_fill},
            }
        }
    }
    ds = _odc_load(
        _with_grid(item, [*keys, hls.fmask_asset], header.grid),
        source,
        [*keys, hls.fmask_asset],
        grid,
        header.read_chunk(tile),
        cfg,
        {"*": resampling, hls.fmask_asset: "nearest"},
    )
    stack = da.stack([ds[k].data[0] for k in keys], axis=0).rechunk({0: len(keys)})
    if file_scale != CUBE_SCALE:
        factor = file_scale / CUBE_SCALE
        stack = da.where(
            stack == hls.nodata,
            hls.nodata,
            da.clip(da.rint(stack.astype(np.float64) * factor), -32767, 32767),
        ).astype(np.int16)
    fmask = ds[hls.fmask_asset].data[0]
    valid = da.map_blocks(
        lambda r, f: hls_valid(r, f, nodata=hls.nodata),
        stack,
        fmask,
        dtype=bool,
        drop_axis=0,
        chunks=stack.chunks[1:],
    )
    details = {"file_scale": file_scale, "resampling": resampling, "native_grid": header.grid.crs}
    return LoadedScene(stack, valid, details)


def _same_phase(a: Grid, b: Grid) -> bool:
    """True when ``b``'s pixels are whole pixels of ``a`` (no resampling needed)."""
    if a.crs != b.crs or a.resolution != b.resolution:
        return False
    dx = (b.transform[2] - a.transform[2]) / a.transform[0]
    dy = (b.transform[5] - a.transform[5]) / a.transform[4]
    return abs(dx - round(dx)) < 1e-6 and abs(dy - round(dy)) < 1e-6
