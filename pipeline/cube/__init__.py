"""The cube contract (docs/cube.md): a co-registered Zarr v3 cube per region, its layout, its
writer, its reader and its verifier.
"""

from hyperkd.pipeline.cube.io import (
    CubeWriter,
    EmptySceneError,
    NotACubeError,
    write_variables,
)
from hyperkd.pipeline.cube.layout import ENMAP_NODATA, CubeLayout, Grid, SceneWrite
from hyperkd.pipeline.cube.read import committed_scenes, open_cube
from hyperkd.pipeline.cube.verify import verify_cube

__all__ = [
    "ENMAP_NODATA",
    "CubeLayout",
    "CubeWriter",
    "EmptySceneError",
    "Grid",
    "NotACubeError",
    "SceneWrite",
    "committed_scenes",
    "open_cube",
    "verify_cube",
    "write_variables",
]
