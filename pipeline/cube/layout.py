"""The cube's static layout: the common grid, the array schema and its georeferencing.

Everything here is pure (no I/O): it turns a :class:`Grid` and a canonical band table into the
zarr v3 metadata documents of docs/cube.md, which :mod:`hyperkd.pipeline.cube.io` writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hyperkd.pipeline.cube.schema import (
    ENMAP_NODATA,
    HLS_NODATA,
    REFLECTANCE_SCALE,
    TIME_UNITS,
    group_arrays,
)
from hyperkd.pipeline.sensors import EnmapBands, hls_sensor

ZSTD_LEVEL = 3
CORE_VARIABLES = frozenset(
    {"reflectance", "valid", "time", "band", "y", "x", "scene_id", "spatial_ref", "wavelength"}
    | {"fwhm", "valid_band", "sensor", "paired_enmap"}
)
"""Variables the ingest owns; :func:`~hyperkd.pipeline.cube.io.write_variables` may not touch them."""


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: ``crs`` (``"EPSG:32633"`` or WKT), affine ``transform``
    ``(a, b, c, d, e, f)`` (rasterio order, metres) and ``shape`` ``(ny, nx)``."""

    crs: str
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        a, b, _, d, e, _ = self.transform
        if b != 0 or d != 0 or a <= 0 or e >= 0:
            raise ValueError(f"grid must be north-up with square-ish pixels, got {self.transform}")
        if self.shape[0] <= 0 or self.shape[1] <= 0:
            raise ValueError(f"grid shape must be positive, got {self.shape}")

    @classmethod
    def from_proj(cls, epsg: int | str, transform: Sequence[float], shape: Sequence[int]) -> Grid:
        """From STAC ``proj:epsg``/``proj:code``, ``proj:transform`` and ``proj:shape``."""
        code = str(epsg)
        crs = code if ":" in code else f"EPSG:{int(code)}"
        t = tuple(float(v) for v in list(transform)[:6])
        return cls(crs, t, (int(shape[0]), int(shape[1])))  # type: ignore[arg-type]

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in CRS units; y is negative (north-up)."""
        return self.transform[0], self.transform[4]

    @property
    def x(self) -> np.ndarray:
        """Pixel-centre x coordinates, shape ``(nx,)``."""
        a, _, c = self.transform[:3]
        return c + a * (np.arange(self.shape[1]) + 0.5)

    @property
    def y(self) -> np.ndarray:
        """Pixel-centre y coordinates, shape ``(ny,)``."""
        e, f = self.transform[4], self.transform[5]
        return f + e * (np.arange(self.shape[0]) + 0.5)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of the pixel edges, CRS units."""
        a, _, c, _, e, f = self.transform
        return (c, f + e * self.shape[0], c + a * self.shape[1], f)

    def crop(self, bbox: Sequence[float]) -> Grid:
        """The sub-grid covering ``bbox`` (CRS units), snapped outward to this grid's pixels
        (so the pixel phase is kept and nothing is resampled)."""
        a, _, c, _, e, f = self.transform
        col0 = max(0, math.floor((bbox[0] - c) / a))
        col1 = min(self.shape[1], math.ceil((bbox[2] - c) / a))
        row0 = max(0, math.floor((bbox[3] - f) / e))
        row1 = min(self.shape[0], math.ceil((bbox[1] - f) / e))
        if col1 <= col0 or row1 <= row0:
            raise ValueError("the region does not overlap the EnMAP scene's grid")
        return Grid(
            self.crs,
            (a, 0.0, c + col0 * a, 0.0, e, f + row0 * e),
            (row1 - row0, col1 - col0),
        )

    def patch_grid(self, patch: int) -> Grid:
        """The grid of ``patch x patch`` pixel cells with the same origin (edge cells partial).

        Cell ``(i, j)`` covers pixels ``[patch i, patch i + patch) x [patch j, patch j +
        patch)``; its shape is ``ceil(shape / patch)``.
        """
        a, _, c, _, e, f = self.transform
        shape = (-(-self.shape[0] // patch), -(-self.shape[1] // patch))
        return Grid(self.crs, (a * patch, 0.0, c, 0.0, e * patch, f), shape)

    def geobox(self) -> Any:
        """This grid as an ``odc.geo`` GeoBox (for ``odc.stac.load(geobox=...)``)."""
        from affine import Affine
        from odc.geo.geobox import GeoBox

        return GeoBox(self.shape, Affine(*self.transform), self.crs)

    @property
    def wkt(self) -> str:
        import pyproj

        return pyproj.CRS.from_user_input(self.crs).to_wkt()

    @property
    def code(self) -> str | None:
        """``"EPSG:<n>"`` when the CRS has an EPSG code."""
        import pyproj

        epsg = pyproj.CRS.from_user_input(self.crs).to_epsg()
        return f"EPSG:{epsg}" if epsg else None

    def geotransform(self) -> str:
        """GDAL GeoTransform string ``"c a b f d e"``."""
        a, b, c, d, e, f = self.transform
        return " ".join(repr(float(v)) for v in (c, a, b, f, d, e))

    def geozarr_attrs(self) -> dict[str, Any]:
        """GeoZarr ``proj:`` and ``spatial:`` convention attributes for a group."""
        attrs: dict[str, Any] = {
            "proj:wkt2": self.wkt,
            "spatial:dimensions": ["y", "x"],
            "spatial:transform": [float(v) for v in self.transform],
            "spatial:shape": [int(v) for v in self.shape],
            "spatial:bbox": [float(v) for v in self.bbox],
            "spatial:registration": "pixel",
        }
        if self.code:
            attrs["proj:code"] = self.code
        return attrs

    def spatial_ref_attrs(self) -> dict[str, Any]:
        """CF grid-mapping attributes for the scalar ``spatial_ref`` (GDAL, rioxarray)."""
        import pyproj

        attrs = {k: v for k, v in pyproj.CRS.from_user_input(self.crs).to_cf().items()}
        attrs["crs_wkt"] = self.wkt
        attrs["spatial_ref"] = self.wkt
        attrs["GeoTransform"] = self.geotransform()
        return json.loads(json.dumps(attrs))  # plain JSON types only

    @classmethod
    def from_geozarr(cls, attrs: Mapping[str, Any]) -> Grid:
        crs = attrs.get("proj:code") or attrs["proj:wkt2"]
        t = attrs["spatial:transform"]
        return cls(str(crs), tuple(float(v) for v in t[:6]), tuple(attrs["spatial:shape"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ArraySpec:
    """One zarr array of the layout: dims, dtype, chunk shape, fill value and attributes."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    fill_value: Any
    attrs: Mapping[str, Any]
    shards: tuple[int, ...] | None = None
    """Shard shape (chunks grouped into one object), or None for one object per chunk."""


def array_doc(spec: ArraySpec) -> dict[str, Any]:
    """The zarr v3 ``zarr.json`` document for ``spec`` (zstd, ``/`` chunk keys; sharded when
    ``spec.shards``)."""
    import zarr
    import zarr.storage
    from zarr.core.buffer import default_buffer_prototype

    arr = zarr.create_array(
        store=zarr.storage.MemoryStore(),
        name=spec.name,
        shape=spec.shape,
        dtype=str if spec.dtype == "str" else spec.dtype,
        chunks=spec.chunks,
        shards=spec.shards,
        fill_value=spec.fill_value,
        dimension_names=spec.dims,
        attributes=dict(spec.attrs),
        compressors=_compressor(spec),
        zarr_format=3,
    )
    raw = arr.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
    return dict(json.loads(raw))


def _compressor(spec: ArraySpec) -> Any:
    """Blosc LZ4 with byte shuffle inside shards (band-group chunks of reflectance): on real
    EnMAP it decodes faster than zstd-3 and compresses better (as in the tile store), which
    pays for decoding 14 chunks where layout 1 decoded one (benchmarks/cube_reads.py);
    zstd level 3 elsewhere."""
    import zarr

    if spec.shards is not None:
        return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    return zarr.codecs.ZstdCodec(level=ZSTD_LEVEL)


def cf_data_attrs(fill: int, coordinates: Sequence[str]) -> dict[str, Any]:
    """CF attributes of a ``reflectance`` array: int16 x 10000, fill, grid mapping."""
    return {
        "scale_factor": REFLECTANCE_SCALE,
        "add_offset": 0.0,
        "_FillValue": int(fill),
        "units": "1",
        "long_name": "surface reflectance",
        "grid_mapping": "spatial_ref",
        "coordinates": " ".join(coordinates),
    }


def group_specs(group: str, grid: Grid, bands: EnmapBands | None, tile: int) -> list[ArraySpec]:
    """The arrays of a fresh ``group`` (``time`` length 0), from the schema
    (:data:`hyperkd.pipeline.cube.schema.CUBE_ARRAYS`) plus their CF attributes."""
    ny, nx = grid.shape
    if group == "enmap":
        assert bands is not None
        nb, fill = len(bands), ENMAP_NODATA
        per_time = ["scene_id"]
        band_coords = ["wavelength", "fwhm", "valid_band"]
    else:
        nb, fill = len(hls_sensor().band_names), HLS_NODATA
        per_time = ["scene_id", "sensor", "paired_enmap"]
        band_coords = []
    sizes = {"time": 0, "band": nb, "y": ny, "x": nx}
    coords = [*per_time, *band_coords, "spatial_ref"]
    attrs: dict[str, dict[str, Any]] = {
        "reflectance": cf_data_attrs(fill, coords),
        "valid": {
            "long_name": "pixel usable (not nodata, not cloud/shadow/haze/cirrus/snow)",
            "grid_mapping": "spatial_ref",
            "coordinates": " ".join([*per_time, "spatial_ref"]),
        },
        "time": {"units": TIME_UNITS, "calendar": "proleptic_gregorian", "standard_name": "time"},
        "y": _axis_attrs("y", grid),
        "x": _axis_attrs("x", grid),
        "spatial_ref": grid.spatial_ref_attrs(),
        "wavelength": {"units": "nm"},
        "fwhm": {"units": "nm"},
        "band": {"long_name": "band number"} if group == "enmap" else {},
    }
    specs = []
    for a in group_arrays(group):
        fill_value = fill if a.name == "reflectance" else _zero(a.dtype)
        specs.append(
            ArraySpec(
                a.name,
                a.dims,
                "str" if a.dtype == "string" else a.dtype,
                tuple(sizes[d] for d in a.dims),
                a.chunk_shape(sizes, tile),
                fill_value,
                attrs.get(a.name, {}),
                a.shard_shape(sizes, tile),
            )
        )
    return specs


def _zero(dtype: str) -> Any:
    return {"string": "", "bool": False, "float64": 0.0}.get(dtype, 0)


def static_values(group: str, grid: Grid, bands: EnmapBands | None) -> dict[str, np.ndarray]:
    """Values of the arrays that do not grow with time."""
    values: dict[str, np.ndarray] = {
        "y": grid.y,
        "x": grid.x,
        "spatial_ref": np.array(0, dtype=np.int64),
    }
    if group == "enmap":
        assert bands is not None
        values |= {
            "band": np.arange(1, len(bands) + 1, dtype=np.int32),
            "wavelength": bands.wavelengths,
            "fwhm": bands.fwhms,
            "valid_band": bands.valid,
        }
    else:
        values["band"] = np.array(hls_sensor().band_names, dtype=object)
    return values


def _axis_attrs(axis: str, grid: Grid) -> dict[str, Any]:
    name = "projection_x_coordinate" if axis == "x" else "projection_y_coordinate"
    return {"standard_name": name, "units": "metre", "axis": axis.upper()}


def encode_time(value: Any) -> int:
    """A datetime (aware UTC, naive UTC, or numpy) -> int64 microseconds since the epoch."""
    import pandas as pd

    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return int(np.datetime64(ts.to_datetime64(), "us").astype(np.int64))


def group_doc(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A zarr v3 group ``zarr.json`` document."""
    return {"attributes": dict(attrs), "zarr_format": 3, "node_type": "group"}


@dataclass(frozen=True)
class CubeLayout:
    """What a fresh cube is built from: the common grid, the canonical bands, the tile size."""

    grid: Grid
    bands: EnmapBands
    tile_size: int = 128
    region: str = ""


@dataclass(frozen=True)
class SceneWrite:
    """One scene ready to append to ``group``.

    ``reflectance``: ``(band, y, x)`` int16 on the cube grid and band axis (numpy or dask).
    ``valid``: ``(y, x)`` bool. ``labels``: per-time string coordinates (``sensor``,
    ``paired_enmap`` for HLS). ``record``: the provenance record for ``hyperkd:scenes``.
    """

    group: str
    scene_id: str
    time: Any
    reflectance: Any
    valid: Any
    labels: Mapping[str, str] = field(default_factory=dict)
    record: Mapping[str, Any] = field(default_factory=dict)
