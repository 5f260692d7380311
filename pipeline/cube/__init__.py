"""The cube contract (docs/cube.md): a co-registered Zarr v3 cube per region, its layout, its
writer, its reader and its verifier.
"""

from hyperkd.pipeline.cube.io import (
    CubeLayout,
    CubeWriter,
    SceneWrite,
    committed_scenes,
    open_cube,
    verify_cube,
    write_variables,
)
from hyperkd.pipeline.cube.layout import ENMAP_NODATA, Grid

__all__ = [
    "ENMAP_NODATA",
    "CubeLayout",
    "CubeWriter",
    "Grid",
    "SceneWrite",
    "committed_scenes",
    "open_cube",
    "verify_cube",
    "write_variables",
]
