"""The tile store's schema, declared once: arrays, index columns and root attributes.

The writer (:mod:`hyperkd.pipeline.tiles.write`), the verifier
(:mod:`hyperkd.pipeline.tiles.verify`), the torch reader (``hyperkd.model.data``) and the
tables of docs/tiles.md all derive from :data:`TILE_ARRAYS`, :data:`INDEX_COLUMNS` and
:data:`ROOT_ATTRS`. ``python -m hyperkd.pipeline.tiles.schema`` prints the docs tables (a test
keeps docs/tiles.md equal to them).

Dims: ``tile`` (n tiles), ``band`` (C student bands), ``teacher_band`` (the teacher's bands),
``y``/``x`` (T pixels), ``py``/``px`` (T/P patches).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hyperkd.pipeline.cube.schema import ENMAP_NODATA, TEACHER_BANDS, TEACHER_NODATA

__all__ = [
    "INDEX_COLUMNS",
    "READABLE_VERSIONS",
    "ROOT_ATTRS",
    "STUDENT_NODATA",
    "TEACHER_BANDS",
    "TEACHER_NODATA",
    "TILES_VERSION",
    "TILE_ARRAYS",
    "markdown_tables",
]

TILES_VERSION = 2
"""2: named dims, consolidated metadata, WKT2 ``crs``. Version 1 stores stay readable."""
READABLE_VERSIONS = (1, 2)
STUDENT_NODATA = ENMAP_NODATA
"""The student's nodata is the cube's: tiles copy reflectance unchanged."""


@dataclass(frozen=True)
class ArraySchema:
    """One per-tile array: ``dims`` name its axes (``tile`` first), ``dtype`` a numpy name."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    nodata: Any
    units: str
    content: str

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The array's shape given each dim's size."""
        return tuple(int(sizes[d]) for d in self.dims)


@dataclass(frozen=True)
class Column:
    """One index column (``index/<name>``, dims ``(tile,)``, one chunk)."""

    name: str
    dtype: str
    meaning: str


TILE_ARRAYS: tuple[ArraySchema, ...] = (
    ArraySchema(
        "student",
        ("tile", "band", "y", "x"),
        "int16",
        STUDENT_NODATA,
        "reflectance x 10000",
        "EnMAP reflectance of the cube's valid bands (`valid_band`; C = 218 for L2A)",
    ),
    ArraySchema(
        "teacher",
        ("tile", "teacher_band", "y", "x"),
        "int16",
        TEACHER_NODATA,
        "reflectance x 10000",
        f"the {len(TEACHER_BANDS)} aggregated teacher bands ({', '.join(TEACHER_BANDS)})",
    ),
    ArraySchema(
        "significance_gabor",
        ("tile", "py", "px"),
        "float32",
        "NaN",
        "1",
        "mean Gabor energy per ViT patch of size P",
    ),
    ArraySchema(
        "significance_wavelet",
        ("tile", "py", "px"),
        "float32",
        "NaN",
        "1",
        "mean wavelet detail energy per patch",
    ),
    ArraySchema(
        "valid",
        ("tile", "y", "x"),
        "bool",
        False,
        "",
        "cube `enmap/valid` AND no student band is nodata",
    ),
)
LABEL_DIMS = ("tile", "y", "x")
"""``label_<name>``: int16 class codes (0 = unlabeled) or float32 continuous (NaN = none)."""

INDEX_COLUMNS: tuple[Column, ...] = (
    Column("tile_id", "int64", "0..n-1, the position in every array"),
    Column("scene", "str", "EnMAP scene id (cube `scene_id`)"),
    Column("time", "datetime64[ns]", "acquisition start of the scene"),
    Column(
        "y0",
        "int32",
        "pixel offsets of the tile's upper-left corner in the cube grid, multiples of the stride "
        "(of `train_stride` for train tiles)",
    ),
    Column("x0", "int32", "as `y0`, along x"),
    Column("valid_fraction", "float32", "mean of the stored `valid` tile"),
    Column(
        "cloud_fraction",
        "float32",
        "fraction of pixels that hold data but are not valid (cloud, shadow, haze, cirrus, "
        "snow in the cube's mask); a scene variable `cloud` is used instead when present",
    ),
    Column("significance", "float32", "mean of the tile's Gabor map"),
    Column("split", "str", "`train` / `val` / `test`"),
)

ROOT_ATTRS: tuple[tuple[str, str], ...] = (
    (
        "hyperkd:kind",
        "`tiles`: what the store is (written first, so a half-written store is known)",
    ),
    (
        "hyperkd:tiles_version",
        f"layout version, currently `{TILES_VERSION}` (`1`: no dims, not consolidated, still read)",
    ),
    ("tile_size", "T, pixels"),
    ("patch_size", "P, pixels"),
    ("stride", "step between tile origins, pixels (val and test tiles)"),
    (
        "train_stride",
        "step between train tile origins, pixels: `stride` or a divisor of it (overlapping "
        "train tiles); absent in stores written before it, which read as `stride`",
    ),
    ("min_valid", "the valid-fraction threshold tiles were filtered with"),
    ("split_block_px", "the spatial block size of the split"),
    ("split_fractions", "the train/val/test block shares"),
    ("band_wavelength", "list, nm, for the `C` student bands"),
    ("band_fwhm", "list, nm, for the `C` student bands"),
    (
        "student_mean",
        "per band, reflectance x 10000: over the valid pixels of the **train** tiles, "
        "streamed in float64 (Welford updates, Chan merges)",
    ),
    ("student_std", "as `student_mean`; population std, floored at 1.0"),
    ("student_nodata", f"`{STUDENT_NODATA}`"),
    ("teacher_nodata", f"`{TEACHER_NODATA}`"),
    ("teacher_bands", "teacher band names, in the order of `teacher`"),
    ("teacher_mean", "the Prithvi constants, reflectance x 10000"),
    ("teacher_std", "the Prithvi constants, reflectance x 10000"),
    ("teacher_preset", "Prithvi preset the constants come from"),
    (
        "labels",
        '`{name: {"dtype", "kind": "classes"/"continuous", "source", "classes", "nodata"}}`',
    ),
    ("crs", "the cube grid's CRS as WKT2 (the cube's `proj:wkt2`)"),
    ("transform", "the cube grid's affine `a, b, c, d, e, f`"),
    ("grid_shape", "`[height, width]` of the cube grid"),
    ("source_cubes", "cube URLs (credentials and query strings removed)"),
    ("splits", "tile counts per split"),
    ("dropped", "tiles dropped as `invalid` (below `min_valid`) and for `leakage`"),
    ("params_hash", "sha256 of the parameters, the cube's root document and the label files"),
)
REQUIRED_ATTRS = tuple(
    name
    for name, _ in ROOT_ATTRS
    if name not in ("dropped", "hyperkd:kind", "split_fractions", "train_stride")
)


def sizes(n: int, n_bands: int, tile_size: int, patch_size: int) -> dict[str, int]:
    """Dim sizes of a store of ``n`` tiles."""
    g = tile_size // patch_size
    return {
        "tile": n,
        "band": n_bands,
        "teacher_band": len(TEACHER_BANDS),
        "y": tile_size,
        "x": tile_size,
        "py": g,
        "px": g,
    }


def _cell(value: Any) -> str:
    return f"`{value}`" if value != "" else ""


def markdown_tables() -> dict[str, str]:
    """The docs/tiles.md tables by name: ``arrays``, ``index``, ``attributes``."""
    arrays = ["| array | dims | dtype | nodata | units | content |", "|---|---|---|---|---|---|"]
    for a in TILE_ARRAYS:
        arrays.append(
            f"| `{a.name}` | `({', '.join(a.dims)})` | {a.dtype} | {_cell(a.nodata)} | "
            f"{a.units} | {a.content} |"
        )
    arrays.append(
        f"| `label_<name>` | `({', '.join(LABEL_DIMS)})` | int16 or float32 | `0` or `NaN` | | "
        "optional labels (`--labels NAME=RASTER`): int16 class codes, 0 = unlabeled; or "
        "float32 continuous, NaN = no value |"
    )
    index = ["| column | dtype | meaning |", "|---|---|---|"]
    index += [f"| `{c.name}` | {c.dtype} | {c.meaning} |" for c in INDEX_COLUMNS]
    attrs = ["| attribute | meaning |", "|---|---|"]
    attrs += [f"| `{name}` | {meaning} |" for name, meaning in ROOT_ATTRS]
    return {
        k: "\n".join(v) + "\n"
        for k, v in (("arrays", arrays), ("index", index), ("attributes", attrs))
    }


if __name__ == "__main__":
    for name, table in markdown_tables().items():
        print(f"<!-- schema:{name} -->\n{table}<!-- /schema -->\n")
