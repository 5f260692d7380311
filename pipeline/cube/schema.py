"""The cube's schema, declared once: every array of each group with its dims, dtype, units,
nodata and chunking, plus the constants other modules share (nodata values, teacher bands).

The writer (:func:`hyperkd.pipeline.cube.layout.group_specs`), the verifier
(:mod:`hyperkd.pipeline.cube.verify`) and the tables of docs/cube.md derive from
:data:`CUBE_ARRAYS`. ``python -m hyperkd.pipeline.cube.schema`` prints the docs table (a test
keeps docs/cube.md equal to it).

Chunk tokens: ``1``, ``T`` (the tile size, root attribute ``hyperkd:tile_size``), ``G`` (a
band group of :data:`BAND_GROUP` bands), ``B`` (all bands, rounded up to whole groups: the
shard), ``*`` (the whole axis), ``K`` (:data:`COORD_CHUNK` elements).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hyperkd.pipeline.sensors import hls_sensor

CUBE_VERSION = 2
"""2: reflectance in band-group chunks inside full-band shards, float32 decoding, keyed
preprocess products on their own patch grids. Version 1 cubes stay readable and appendable."""
READABLE_VERSIONS = (1, 2)
GROUPS = ("enmap", "hls")
ENMAP_NODATA = -32768
"""Nodata of EnMAP reflectance in the cube (and of the tile store's ``student``)."""
HLS_NODATA = -9999
TEACHER_NODATA = -9999
"""Nodata of the stored teacher bands (and of the tile store's ``teacher``)."""
TEACHER_BANDS: tuple[str, ...] = hls_sensor().band_names
"""The teacher's bands, in Prithvi order (the catalog's HLS roles)."""
REFLECTANCE_SCALE = 1e-4
"""CF ``scale_factor`` of every int16 reflectance array: stored values are reflectance x 10000."""
BAND_GROUP = 16
"""Bands per reflectance chunk: a one-band map reads 1/14 of a 224-band tile's bytes."""
TIME_UNITS = "microseconds since 1970-01-01T00:00:00"


@dataclass(frozen=True)
class ArraySchema:
    """One array of a cube group. ``chunks``/``shards``: tokens per dim (module docstring)."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    units: str
    nodata: Any
    chunks: tuple[str, ...]
    meaning: str
    shards: tuple[str, ...] | None = None
    groups: tuple[str, ...] = GROUPS
    optional: bool = False
    """Written by preprocess (or another step), not by the ingest."""

    def chunk_shape(self, sizes: Mapping[str, int], tile: int) -> tuple[int, ...]:
        return _resolve(self.chunks, self.dims, sizes, tile)

    def shard_shape(self, sizes: Mapping[str, int], tile: int) -> tuple[int, ...] | None:
        return None if self.shards is None else _resolve(self.shards, self.dims, sizes, tile)


def band_group(n_bands: int) -> int:
    """Bands per chunk for an axis of ``n_bands``: :data:`BAND_GROUP`, or all when fewer."""
    return max(1, min(BAND_GROUP, n_bands))


def _resolve(
    tokens: tuple[str, ...], dims: tuple[str, ...], sizes: Mapping[str, int], tile: int
) -> tuple[int, ...]:
    out = []
    for token, dim in zip(tokens, dims, strict=True):
        size = int(sizes.get(dim, 0))
        group = band_group(size)
        value = {
            "1": 1,
            "T": min(tile, size) if size else tile,
            "G": group,
            "B": -(-size // group) * group,
            "*": max(size, 1),
            "K": COORD_CHUNK,
        }[token]
        out.append(value)
    return tuple(out)


COORD_CHUNK = 4096
"""Elements per chunk of the 1-D per-scene arrays (``time``, ``scene_id``, ...): one chunk for
any cube of up to 4096 scenes per group, so opening a cube reads each in one request. An append
rewrites that chunk (read, set index ``N``, replace in one write: zarr's local store renames a
temp file, S3 applies a PUT whole); indices below ``N`` keep their values, so a reader of the
committed view sees the same values before and after. Cubes written with one element per chunk
(before 2026-11-28) keep that chunking when appended to."""


def time_chunks(ndim: int) -> tuple[int, ...]:
    """The ``time`` chunk sizes a valid cube may have for an array of ``ndim`` dims: one scene
    per chunk, except 1-D per-scene arrays (:data:`COORD_CHUNK`; 1 in older cubes)."""
    return (COORD_CHUNK, 1) if ndim == 1 else (1,)


_ENMAP = ("enmap",)
_HLS = ("hls",)
CUBE_ARRAYS: tuple[ArraySchema, ...] = (
    ArraySchema(
        "reflectance",
        ("time", "band", "y", "x"),
        "int16",
        "1",
        ENMAP_NODATA,
        ("1", "G", "T", "T"),
        "surface reflectance x 10000 (`scale_factor` 1e-4), decoded to float32 by `open_cube`",
        shards=("1", "B", "T", "T"),
        groups=_ENMAP,
    ),
    ArraySchema(
        "reflectance",
        ("time", "band", "y", "x"),
        "int16",
        "1",
        HLS_NODATA,
        ("1", "*", "T", "T"),
        "HLS surface reflectance x 10000 on the EnMAP grid (6 bands: one chunk)",
        groups=_HLS,
    ),
    ArraySchema(
        "valid",
        ("time", "y", "x"),
        "bool",
        "",
        False,
        ("1", "T", "T"),
        "pixel usable (see **valid**)",
    ),
    ArraySchema("time", ("time",), "int64", TIME_UNITS, None, ("K",), "acquisition start, UTC"),
    ArraySchema("scene_id", ("time",), "string", "", "", ("K",), "scene (STAC item) id"),
    ArraySchema("y", ("y",), "float64", "metre", None, ("*",), "pixel-centre y"),
    ArraySchema("x", ("x",), "float64", "metre", None, ("*",), "pixel-centre x"),
    ArraySchema("spatial_ref", (), "int64", "", None, (), "CF grid mapping (scalar)"),
    ArraySchema("band", ("band",), "int32", "", None, ("*",), "band number, 1..224", groups=_ENMAP),
    ArraySchema(
        "wavelength", ("band",), "float64", "nm", None, ("*",), "band centre", groups=_ENMAP
    ),
    ArraySchema("fwhm", ("band",), "float64", "nm", None, ("*",), "band width", groups=_ENMAP),
    ArraySchema(
        "valid_band",
        ("band",),
        "bool",
        "",
        None,
        ("*",),
        "False for bands always nodata (water vapour)",
        groups=_ENMAP,
    ),
    ArraySchema(
        "band", ("band",), "string", "", None, ("*",), "blue ... swir2 (teacher order)", groups=_HLS
    ),
    ArraySchema("sensor", ("time",), "string", "", "", ("K",), "`L30` or `S30`", groups=_HLS),
    ArraySchema(
        "paired_enmap", ("time",), "string", "", "", ("K",), "EnMAP scene id paired", groups=_HLS
    ),
    ArraySchema(
        "teacher_bands",
        ("time", "teacher_band", "y", "x"),
        "int16",
        "1",
        TEACHER_NODATA,
        ("1", "*", "T", "T"),
        f"reflectance x 10000 aggregated to the {len(TEACHER_BANDS)} teacher bands "
        "(preprocess; another aggregation: `teacher_bands_<hash>`)",
        groups=_ENMAP,
        optional=True,
    ),
    ArraySchema(
        "significance_gabor_p<P>",
        ("time", "y_p<P>", "x_p<P>"),
        "float32",
        "1",
        "NaN",
        ("1", "*", "*"),
        "mean Gabor energy per P px patch (preprocess; another filter bank: `_p<P>_<hash>`)",
        groups=_ENMAP,
        optional=True,
    ),
    ArraySchema(
        "significance_wavelet_p<P>",
        ("time", "y_p<P>", "x_p<P>"),
        "float32",
        "1",
        "NaN",
        ("1", "*", "*"),
        "mean wavelet detail energy per P px patch (preprocess)",
        groups=_ENMAP,
        optional=True,
    ),
    ArraySchema(
        "y_p<P>",
        ("y_p<P>",),
        "float64",
        "metre",
        None,
        ("*",),
        "patch-centre y; `spatial_ref_p<P>` is the patch grid's own grid mapping",
        groups=_ENMAP,
        optional=True,
    ),
    ArraySchema(
        "x_p<P>",
        ("x_p<P>",),
        "float64",
        "metre",
        None,
        ("*",),
        "patch-centre x",
        groups=_ENMAP,
        optional=True,
    ),
)


def group_arrays(group: str, *, optional: bool = False) -> tuple[ArraySchema, ...]:
    """The arrays of ``group`` the ingest writes (``optional=True``: also preprocess's)."""
    return tuple(a for a in CUBE_ARRAYS if group in a.groups and (optional or not a.optional))


def _cell(value: Any) -> str:
    return "" if value is None or value == "" else f"`{value}`"


def markdown_tables() -> dict[str, str]:
    """The docs/cube.md tables by name (``arrays``, ``chunk_tokens``)."""
    return {"arrays": _arrays_table(), "chunk_tokens": _tokens_table()}


def _tokens_table() -> str:
    rows = [
        ("1", "one element"),
        ("T", "the tile size (root attribute `hyperkd:tile_size`, default 128)"),
        ("G", f"a band group: {BAND_GROUP} bands (all when fewer)"),
        ("B", "all bands, rounded up to whole groups (the shard)"),
        ("*", "the whole axis"),
        ("K", f"{COORD_CHUNK} scenes: one chunk for up to {COORD_CHUNK} scenes per group"),
    ]
    lines = ["| token | chunk size |", "|---|---|"]
    lines += [f"| `{t}` | {meaning} |" for t, meaning in rows]
    return "\n".join(lines) + "\n"


def _arrays_table() -> str:
    lines = [
        "| group | array | dims | dtype | units | nodata | chunks (shards) | meaning |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in CUBE_ARRAYS:
        chunks = f"`({', '.join(a.chunks)})`" if a.chunks else ""
        if a.shards:
            chunks += f" (`({', '.join(a.shards)})`)"
        lines.append(
            f"| {', '.join(a.groups)} | `{a.name}` | `({', '.join(a.dims)})` | {a.dtype} | "
            f"{a.units} | {_cell(a.nodata)} | {chunks} | {a.meaning} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for name, table in markdown_tables().items():
        print(f"<!-- schema:{name} -->\n{table}<!-- /schema -->\n")
