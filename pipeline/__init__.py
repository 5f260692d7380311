"""Pure data functions on xarray, dask and numpy: no torch, no Prefect (a test enforces it).

The parts, in the order data flows through them:

- :mod:`~hyperkd.pipeline.stac`: sources, regions, search and pairing, credentials.
- :mod:`~hyperkd.pipeline.ingest`: STAC scenes onto the cube grid.
- :mod:`~hyperkd.pipeline.cube`: the cube contract (docs/cube.md).
- :mod:`~hyperkd.pipeline.features`: teacher bands and significance maps.
- :mod:`~hyperkd.pipeline.tiles`: the tile store contract (docs/tiles.md).
- :mod:`~hyperkd.pipeline.store`: where stores live and how they are committed.
- :mod:`~hyperkd.pipeline.synthetic`: the scene factory.

``sensors`` (the band tables from ``catalogs/sensors``) and ``redaction`` serve them all.
"""
