"""Pure data functions on xarray, dask and numpy: STAC search, ingest, cubes, significance, tiles.

Nothing here imports torch or prefect (a test enforces it).
"""
