"""The tile store contract (docs/tiles.md): cube scenes cut into training tiles once, with
statistics, splits and labels, read by the trainer and by other teams.
"""

from hyperkd.pipeline.tiles.build import TileConfig, build_tiles, verify_tiles
from hyperkd.pipeline.tiles.labels import parse_label_arg
from hyperkd.pipeline.tiles.verify import open_store

__all__ = ["TileConfig", "build_tiles", "open_store", "parse_label_arg", "verify_tiles"]
