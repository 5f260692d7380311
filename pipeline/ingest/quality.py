"""Fold a scene's quality layers into one per-pixel ``valid(y, x)`` mask (docs/cube.md "valid").

EnMAP L2A: a pixel is valid when it has data in every band the scene provides and its cloud,
cloud-shadow, haze, cirrus (any level > 0) and snow layers are all clear. HLS: data in all six
teacher bands and Fmask bits 1-3 (cloud, adjacent to cloud/shadow, cloud shadow) clear, Fmask
not fill (255). All functions work on numpy blocks so they run per chunk under dask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hyperkd.pipeline.sensors import hls_sensor

ENMAP_MASKING = ("cloud", "cloud_shadow", "haze", "cirrus", "snow")
"""Quality-layer meanings (sensor table ``quality_assets``) whose non-zero values invalidate."""


def data_present(block: np.ndarray, nodata: int, bands: Sequence[int] | None = None) -> np.ndarray:
    """``(band, y, x)`` -> ``(y, x)`` True where none of ``bands`` (default all) is ``nodata``."""
    ok = np.zeros(block.shape[1:], dtype=bool) if bands is not None and not len(bands) else None
    # Band by band: no (band, y, x) temporaries on 224-band blocks.
    for b in range(block.shape[0]) if bands is None else bands:
        present = block[b] != nodata
        ok = present if ok is None else np.logical_and(ok, present, out=ok)
    return np.zeros(block.shape[1:], dtype=bool) if ok is None else ok


def enmap_valid(
    reflectance: np.ndarray, *layers: np.ndarray, nodata: int, bands: Sequence[int]
) -> np.ndarray:
    """EnMAP validity of one block.

    ``reflectance``: ``(band, y, x)`` on the cube band axis; ``bands``: the canonical positions
    the scene provides (copied or interpolated, valid in the table). ``layers``: ``(y, x)``
    quality layers, each clear where 0 (cirrus: any level > 0 invalidates).
    """
    ok = data_present(reflectance, nodata, bands)
    for layer in layers:
        ok &= np.asarray(layer) == 0
    return ok


def hls_valid(reflectance: np.ndarray, fmask: np.ndarray, *, nodata: int) -> np.ndarray:
    """HLS validity of one block: ``reflectance`` ``(6, y, x)``, ``fmask`` ``(y, x)`` uint8."""
    hls = hls_sensor()
    fmask = np.asarray(fmask)
    bits = 0
    for b in hls.fmask_invalid_bits:
        bits |= 1 << b
    return data_present(reflectance, nodata) & (fmask != hls.fmask_fill) & ((fmask & bits) == 0)
