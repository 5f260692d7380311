"""Tiles to tensors: the tile store as a PyTorch dataset, its concurrent reader and the loader."""

from hyperkd.model.data.dataset import TileDataset, read_info
from hyperkd.model.data.loader import make_loader

__all__ = ["TileDataset", "make_loader", "read_info"]
