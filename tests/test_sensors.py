"""Sensor tables against real products: the Potsdam L2A tiles (v01.03.02) and a DLR item (v01.04.02)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from hyperkd.pipeline.sensors import SWIR, VNIR, EnmapBands, alignment, enmap_table, hls_sensor


def _tile_bands(path: Path) -> tuple[EnmapBands, np.ndarray]:
    """Band metadata of a Potsdam tile from its GDAL tags, in file order, plus its bbl flags."""
    import rasterio

    with rasterio.open(path) as ds:
        tags = [ds.tags(i + 1) for i in range(ds.count)]
    eo = [
        {
            "name": i + 1,
            "center_wavelength": float(t["wavelength"]),
            "full_width_half_max": float(t["fwhm"]),
        }
        for i, t in enumerate(tags)
    ]
    return EnmapBands.from_eo_bands(eo), np.array([t["bbl"] == "1" for t in tags])


@pytest.fixture(scope="module")
def potsdam(sample_data: Path) -> tuple[EnmapBands, np.ndarray]:
    tiles = sorted((sample_data / "enmap_potsdam_l2a" / "images").glob("*.tif"))
    assert tiles, "no Potsdam tiles"
    return _tile_bands(tiles[0])


@pytest.fixture(scope="module")
def dlr_bands(sample_data: Path) -> EnmapBands:
    item = json.loads(
        (sample_data / "stac" / "enmap_l2a_dlr_stac_item_DT0000080454.json").read_text()
    )
    return EnmapBands.from_eo_bands(
        item["assets"]["image"]["eo:bands"], processor_version=item["properties"]["version"]
    )


def test_table_shape() -> None:
    table = enmap_table()
    bands = table.bands
    assert len(bands) == 224 and bands.is_sorted
    assert len(bands.valid_indices) == 218
    assert sum(b.detector == VNIR for b in bands.bands) == 91
    assert sum(b.detector == SWIR for b in bands.bands) == 133
    assert len(table.hyspecnet_indices) == 202
    assert set(table.quality_assets) == {
        "quality_cloud", "quality_cloud_shadow", "quality_haze", "quality_cirrus", "quality_snow", "quality_classes"
    }  # fmt: skip


def test_potsdam_centres_match_table_within_1nm(potsdam: tuple[EnmapBands, np.ndarray]) -> None:
    bands, _ = potsdam
    table = enmap_table().bands
    ordered = bands.sorted_by_wavelength()
    assert len(ordered) == len(table) == 224
    assert np.abs(ordered.wavelengths - table.wavelengths).max() < 1.0


def test_potsdam_bad_bands_are_the_table_nodata_bands(
    potsdam: tuple[EnmapBands, np.ndarray],
) -> None:
    bands, bbl = potsdam
    # Carry the bbl flags through the wavelength sort, then compare positions with the table.
    order = np.argsort(bands.wavelengths, kind="stable")
    bad_sorted = set(np.flatnonzero(~bbl[order]).tolist())
    assert len(bad_sorted) == 6
    assert bad_sorted == set(enmap_table().bands.nodata_bands)
    assert np.all((bands.wavelengths[~bbl] > 1320) & (bands.wavelengths[~bbl] < 1400))


def test_potsdam_tiles_list_bands_by_detector(potsdam: tuple[EnmapBands, np.ndarray]) -> None:
    """The v01.03.02 tiles list VNIR 1-91 then SWIR; the one wavelength drop recovers detectors."""
    bands, _ = potsdam
    assert not bands.is_sorted
    det = [b.detector for b in bands.bands]
    assert det == [VNIR] * 91 + [SWIR] * 133
    ordered = bands.sorted_by_wavelength()
    overlap = [b.detector for b in ordered.bands if 900 <= b.center_nm <= 1000]
    switches = sum(a != b for a, b in itertools.pairwise(overlap))
    assert switches >= 10, f"detectors should interleave in 900-1000 nm, got {overlap}"


def test_dlr_item_has_its_own_band_metadata(dlr_bands: EnmapBands) -> None:
    """The 2024 DLR item (v01.04.02): 224 bands, sorted by wavelength, a different SWIR band set.

    Unlike the Potsdam tiles it lists bands by wavelength, so VNIR and SWIR bands interleave in
    the list itself (pairs ~1 nm apart between 900 and 1000 nm) and detectors cannot be told
    from the order. It is not expected to match the table.
    """
    b = dlr_bands
    assert len(b) == 224 and b.processor_version == "01.04.02"
    assert [x.name for x in b.bands] == [str(i) for i in range(1, 225)]
    assert b.is_sorted and all(x.detector is None for x in b.bands)
    assert np.allclose(b.gain, 1e-4) and np.allclose(b.offset, 0.0)
    w = b.wavelengths
    close = np.flatnonzero(np.diff(w) < 3.0)
    assert len(close) >= 6 and np.all((w[close] > 900) & (w[close] < 1000))


def test_dlr_item_differs_from_table_in_swir(dlr_bands: EnmapBands) -> None:
    table = enmap_table().bands
    w, tw = dlr_bands.wavelengths, table.wavelengths
    det = np.array([x.detector for x in table.bands])
    positional = np.abs(w - tw)
    # VNIR centres agree closely; SWIR centres sit up to ~12 nm from the table's (band set shift).
    assert positional[det == VNIR].max() < 0.5
    swir_ok = (det == SWIR) & (tw < 1700)
    assert 2.0 < positional[swir_ok].max() < 15.0
    nearest = np.abs(w[:, None] - tw[None, :]).min(axis=1)
    assert nearest[w < 1400].max() < 0.5
    # Bands in the table's water-vapour gaps (1390-1461 and 1760-1939 nm) exist in this product.
    assert np.any((w > 1400) & (w < 1455)) and np.any((w > 1765) & (w < 1900))
    # The alignment derived from the product's own metadata still finds every teacher band.
    align = alignment(dlr_bands)
    assert set(align) == set(hls_sensor().band_names)
    assert all(len(v) > 0 for v in align.values())
