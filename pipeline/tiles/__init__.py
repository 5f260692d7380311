"""The tile store contract (docs/tiles.md): cube scenes cut into training tiles once, with
statistics, splits and labels, read by the trainer and by other teams.

Readers (the torch dataset in ``hyperkd.model.data`` among them) go through this package:
:func:`open_store` (the root zarr group), :func:`read_store` (a zarr store for async
readers), :func:`read_info` (:class:`TileStoreInfo`) and :func:`verify_tiles`; the schema is
:mod:`hyperkd.pipeline.tiles.schema`.
"""

from hyperkd.pipeline.tiles.build import TileConfig, build_tiles, verify_tiles
from hyperkd.pipeline.tiles.info import TileStoreInfo, read_info, read_store
from hyperkd.pipeline.tiles.labels import parse_label_arg
from hyperkd.pipeline.tiles.schema import TEACHER_BANDS, TILE_ARRAYS
from hyperkd.pipeline.tiles.verify import as_str, open_store

__all__ = [
    "TEACHER_BANDS",
    "TILE_ARRAYS",
    "TileConfig",
    "TileStoreInfo",
    "as_str",
    "build_tiles",
    "open_store",
    "parse_label_arg",
    "read_info",
    "read_store",
    "verify_tiles",
]
