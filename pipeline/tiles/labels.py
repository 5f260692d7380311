"""Label rasters onto the cube grid: ``--labels NAME=RASTER``.

A label raster is any GeoTIFF (or other file rasterio opens) in any CRS. It is resampled
nearest-neighbour onto the cube's own pixel grid, so a label pixel is the raster value at
the cube pixel's centre, and then cut into the same tiles as the imagery.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hyperkd.pipeline.cube.layout import Grid
from hyperkd.pipeline.redaction import clean_href

LABEL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
CLASS_NODATA = 0
"""Class labels: 0 means unlabeled (also where the raster has nodata or no coverage)."""
_MAX_CLASSES = 1024


@dataclass(frozen=True)
class LabelLayer:
    """One label resampled onto a cube grid."""

    name: str
    kind: str
    """``"classes"`` (int16, 0 = unlabeled) or ``"continuous"`` (float32, NaN = no value)."""
    data: np.ndarray
    """``(y, x)`` on the cube grid."""
    classes: tuple[int, ...]
    """Class values present (excluding 0); empty for continuous labels."""
    source: str

    @property
    def attrs(self) -> dict[str, object]:
        """The store's ``labels[name]`` record."""
        record: dict[str, object] = {
            "dtype": str(self.data.dtype),
            "kind": self.kind,
            "source": self.source,
        }
        if self.kind == "classes":
            record["classes"] = {str(c): f"class {c}" for c in self.classes}
            record["nodata"] = CLASS_NODATA
        return record


def parse_label_arg(text: str) -> tuple[str, str]:
    """``"landcover=/data/lc.tif"`` -> ``("landcover", "/data/lc.tif")``, validated."""
    name, sep, path = text.partition("=")
    name = name.strip()
    if not sep or not path:
        raise ValueError(f"label {text!r}: expected NAME=RASTER")
    if not LABEL_NAME.match(name):
        raise ValueError(f"label name {name!r}: use lower-case letters, digits and _")
    return name, path.strip()


def _infer_kind(values: np.ndarray, dtype: np.dtype) -> str:
    if np.issubdtype(dtype, np.integer):
        return "classes"
    finite = values[np.isfinite(values)]
    integral = bool(np.all(finite == np.round(finite)))
    # A float raster holding a handful of integer codes (the real Potsdam land cover is
    # float32 0..6) is a class map; anything else is a continuous variable such as SOC.
    if integral and np.unique(finite).size <= _MAX_CLASSES:
        return "classes"
    return "continuous"


def load_label(name: str, path: str | Path, grid: Grid, kind: str | None = None) -> LabelLayer:
    """Resample band 1 of ``path`` nearest-neighbour onto ``grid``.

    ``kind`` is ``"classes"``, ``"continuous"`` or ``None`` to infer it (integer rasters and
    float rasters of integer codes are classes). Raises ``ValueError`` when the raster does
    not reach the cube grid at all, or class codes do not fit int16.
    """
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.warp import Resampling, reproject

    if kind not in (None, "classes", "continuous"):
        raise ValueError(f"label {name}: kind must be 'classes' or 'continuous', got {kind!r}")
    if not LABEL_NAME.match(name):
        raise ValueError(f"label name {name!r}: use lower-case letters, digits and _")
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise FileNotFoundError(f"label {name}: cannot open raster {path}") from exc
    with src:
        if src.crs is None:
            raise ValueError(f"label {name}: raster {path} has no CRS")
        values = np.full(grid.shape, np.nan, dtype=np.float64)
        reproject(
            source=rasterio.band(src, 1),
            destination=values,
            src_nodata=src.nodata,
            dst_transform=Affine(*grid.transform),
            dst_crs=CRS.from_user_input(grid.crs),
            dst_nodata=np.nan,
            resampling=Resampling.nearest,
        )
        src_dtype = np.dtype(src.dtypes[0])
    if not np.isfinite(values).any():
        raise ValueError(f"label {name}: raster {path} does not overlap the cube grid")
    kind = kind or _infer_kind(values, src_dtype)
    if kind == "continuous":
        return LabelLayer(name, kind, values.astype(np.float32), (), clean_href(str(path)))
    finite = np.isfinite(values)
    if finite.any() and (values[finite].min() < -32768 or values[finite].max() > 32767):
        raise ValueError(f"label {name}: class codes in {path} do not fit int16")
    codes = np.where(finite, np.round(values), CLASS_NODATA).astype(np.int16)
    classes = tuple(int(c) for c in np.unique(codes) if c != CLASS_NODATA)
    return LabelLayer(name, kind, codes, classes, clean_href(str(path)))
