"""Embeddings as a data product: a cube through the student into a Zarr store on the patch grid
(``hyperkd embed``; the layout is ``docs/embeddings.md``)."""

from hyperkd.model.embed.run import EmbedConfig, embed_cube
from hyperkd.model.embed.store import EmbeddingGrid

__all__ = ["EmbedConfig", "EmbeddingGrid", "embed_cube"]
