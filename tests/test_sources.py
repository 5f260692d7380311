"""Sources from catalogs/sources, static catalogs, and parsing the real STAC JSON."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pystac
import pytest

from hyperkd.pipeline.sensors import hls_sensor
from hyperkd.pipeline.stac.items import asset_grid, cloud_cover, enmap_bands_of, processor_version
from hyperkd.pipeline.stac.sources import load_source, resolve_source, sensor_of, source_names

DLR_ITEM = "enmap_l2a_dlr_stac_item_DT0000080454.json"
DLR_PAGE = "enmap_dlr_stac_search_page_20items.json"
LPDAAC_PAGE = "hls_l30_v1.5_cmr_stac_item_collection.json"


@pytest.fixture(scope="module")
def stac_dir(sample_data: Path) -> Path:
    return sample_data / "stac"


def test_three_api_sources_ship() -> None:
    assert source_names() == ("enmap-dlr", "hls-lpdaac", "hls-planetary-computer")
    dlr = load_source("enmap-dlr")
    assert dlr.kind == "api"
    assert dlr.url == "https://geoservice.dlr.de/eoc/ogc/stac/v1"
    assert dlr.collections == ("ENMAP_HSI_L2A",)
    assert dlr.auth == "dlr" and dlr.netrc_hosts == ("download.geoservice.dlr.de",)
    assert "ENMAP_HSI_L0_QL" in dlr.ignored_collections
    lp = load_source("hls-lpdaac")
    assert lp.url == "https://cmr.earthdata.nasa.gov/stac/LPCLOUD"
    assert lp.collections == ("HLSL30_2.0", "HLSS30_2.0")
    assert lp.auth == "earthdata" and lp.token_env == "EARTHDATA_TOKEN"
    assert lp.cloud_filter == "client" and not lp.sends_cloud_query  # CMR rejects cloud queries
    pc = load_source("hls-planetary-computer")
    assert pc.collections == ("hls2-l30", "hls2-s30")
    assert pc.signing is not None and pc.signing["token_url"].endswith("/api/sas/v1/token")


def test_enmap_profile_names_the_image_and_quality_assets() -> None:
    profile = load_source("enmap-dlr").profile("ENMAP_HSI_L2A")
    assert profile is not None and profile.sensor == "enmap"
    assert profile.band_assets == {"reflectance": "image"}
    assert profile.band_metadata == "image"
    assert profile.nodata_property == "enmap:nodata"
    assert profile.projection == "asset"
    for key in (
        "quality_cloud",
        "quality_cloud_shadow",
        "quality_haze",
        "quality_cirrus",
        "quality_snow",
    ):
        assert key in profile.quality_assets


def test_hls_band_maps_come_from_the_sensor_table() -> None:
    lp = load_source("hls-lpdaac")
    l30, s30 = lp.profile("HLSL30_2.0"), lp.profile("HLSS30_2.0")
    assert l30 is not None and s30 is not None
    assert l30.band_assets == hls_sensor().asset_keys("l30")
    assert s30.band_assets == hls_sensor().asset_keys("s30")
    # Same key, different band: the maps must differ exactly where HLS says they do.
    assert l30.band_assets["nir_narrow"] == "B05" and s30.band_assets["nir_narrow"] == "B8A"
    assert l30.quality_assets == {"Fmask": "fmask"}
    assert lp.profile("HLSL30.v1.5") is l30  # old CMR ids resolve to the same profile


@pytest.mark.parametrize(
    ("collection", "sensor"),
    [
        ("ENMAP_HSI_L2A", "enmap"),
        ("HLSL30_2.0", "hls-l30"),
        ("HLSS30_2.0", "hls-s30"),
        ("hls2-l30", "hls-l30"),
        ("hls2-s30", "hls-s30"),
        ("HLSL30.v2.0", "hls-l30"),
        ("HLSS30.v2.0", "hls-s30"),
        ("HLSL30.v1.5", "hls-l30"),
    ],
)
def test_sensor_by_real_collection_id(collection: str, sensor: str) -> None:
    item = pystac.Item("x", None, None, pystac.utils.str_to_datetime("2024-01-01T00:00:00Z"), {})
    item.collection_id = collection
    assert sensor_of(item) == sensor


def test_sensor_of_rejects_quicklook_collection() -> None:
    item = pystac.Item("ql", None, None, pystac.utils.str_to_datetime("2024-01-01T00:00:00Z"), {})
    item.collection_id = "ENMAP_HSI_L0_QL"
    with pytest.raises(ValueError, match="'ENMAP_HSI_L0_QL' is not an EnMAP L2A or HLS collection"):
        sensor_of(item)


def test_unknown_source_names_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        resolve_source("sentinel-hub")
    assert str(info.value) == (
        "unknown source 'sentinel-hub': choose one of enmap-dlr, hls-lpdaac, "
        "hls-planetary-computer or a path/URL to catalog.json"
    )


def test_static_sources_from_path_folder_and_url(tmp_path: Path) -> None:
    catalog = pystac.Catalog("c", "test")
    catalog.normalize_and_save(str(tmp_path / "cat"), pystac.CatalogType.SELF_CONTAINED)
    by_file = resolve_source(str(tmp_path / "cat" / "catalog.json"))
    by_dir = resolve_source(str(tmp_path / "cat"))
    assert by_file.kind == by_dir.kind == "static"
    assert by_file.url == by_dir.url == str((tmp_path / "cat" / "catalog.json").resolve())
    assert "ENMAP_HSI_L2A" in by_file.collections and "hls2-s30" in by_file.collections
    assert resolve_source("https://example.org/stac/catalog.json").kind == "static"
    with pytest.raises(ValueError, match="static catalog not found"):
        resolve_source(str(tmp_path / "nope" / "catalog.json"))


# --- the real STAC JSON -------------------------------------------------------------------


def test_real_dlr_item_yields_224_bands_from_the_image_asset(stac_dir: Path) -> None:
    raw = json.loads((stac_dir / DLR_ITEM).read_text())
    eo = raw["assets"]["image"]["eo:bands"]
    assert isinstance(eo[0]["name"], int)  # band names are integers in the real JSON
    assert "eo:bands" not in raw["properties"]
    item = pystac.Item.from_file(str(stac_dir / DLR_ITEM))
    assert sensor_of(item) == "enmap"
    bands = enmap_bands_of(item)
    assert len(bands) == 224
    np.testing.assert_array_equal(bands.wavelengths, [b["center_wavelength"] for b in eo])
    np.testing.assert_array_equal(bands.fwhms, [b["full_width_half_max"] for b in eo])
    assert bands.bands[0].name == "1" and bands.bands[-1].name == "224"
    assert bands.nodata == -32768  # from the string property enmap:nodata
    assert set(bands.gain) == {1e-4} and set(bands.offset) == {0.0}
    assert bands.processor_version == "01.04.02" == processor_version(item)
    assert cloud_cover(item) == 0.0  # "0", a string


@pytest.mark.parametrize("migrate", [False, True], ids=["proj:epsg", "proj:code (migrated)"])
def test_real_dlr_item_projection_comes_from_the_image_asset(stac_dir: Path, migrate: bool) -> None:
    raw = json.loads((stac_dir / DLR_ITEM).read_text())
    assert raw["properties"]["proj:epsg"] is None  # the item level says nothing
    item = pystac.Item.from_dict(raw, migrate=migrate)
    grid = asset_grid(item, "image")
    assert grid is not None
    assert grid.epsg == 32736
    assert grid.shape == (1220, 1517)
    assert grid.transform == (30.0, 0.0, 454245.0, 0.0, -30.0, 7246185.0)
    assert grid.resolution == (30.0, -30.0)


def test_item_without_band_metadata_is_a_clear_error(stac_dir: Path) -> None:
    raw = json.loads((stac_dir / DLR_ITEM).read_text())
    broken = copy.deepcopy(raw)
    del broken["assets"]["image"]["eo:bands"]
    item = pystac.Item.from_dict(broken)
    with pytest.raises(ValueError, match=rf"item {item.id}: no band metadata") as info:
        enmap_bands_of(item)
    assert "\n" not in str(info.value)
    partial = copy.deepcopy(raw)
    del partial["assets"]["image"]["eo:bands"][5]["center_wavelength"]
    with pytest.raises(ValueError, match=rf"item {item.id}: item band metadata is incomplete"):
        enmap_bands_of(pystac.Item.from_dict(partial))


def test_cmr_item_has_no_projection_so_read_it_from_the_file(stac_dir: Path) -> None:
    items = pystac.ItemCollection.from_file(str(stac_dir / LPDAAC_PAGE))
    first = next(iter(items))
    assert asset_grid(first, "B04") is None
    with pytest.raises(ValueError, match="no asset 'B8A'"):
        asset_grid(first, "B8A")  # L30 has no B8A: the S30 key is not valid here


# --- the scene factory's static catalog --------------------------------------------------------


@pytest.fixture(scope="module")
def factory_region(tmp_path_factory: pytest.TempPathFactory):
    from hyperkd.pipeline.synthetic.factory import RegionSpec
    from hyperkd.pipeline.synthetic.products import write_region

    return write_region(
        tmp_path_factory.mktemp("factory") / "demo", RegionSpec(size_px=16, n_scenes=2)
    )


def test_factory_catalog_is_searched_and_paired_over_the_demo_region(factory_region) -> None:
    import datetime as dt

    from hyperkd.pipeline.stac.items import scene_datetime
    from hyperkd.pipeline.stac.regions import parse_region
    from hyperkd.pipeline.stac.search import SearchQuery, search

    catalog = str(factory_region.catalog)
    query = SearchQuery(
        (catalog,), parse_region("demo"), dt.date(2024, 1, 1), dt.date(2024, 12, 31)
    )
    result = search(query)
    assert len(result.enmap) == 2 and len(result.hls) == 4
    assert {sensor_of(i) for i in result.hls} == {"hls-l30", "hls-s30"}
    for pair, scene in zip(result.pairs, result.enmap, strict=True):
        when = scene_datetime(scene)
        near = [h for h in result.hls if abs(scene_datetime(h) - when) <= dt.timedelta(days=10)]
        expected = sorted(near, key=lambda h: (cloud_cover(h), abs(scene_datetime(h) - when)))
        assert pair.enmap_id == scene.id
        assert pair.hls_ids == tuple(h.id for h in expected) and len(expected) == 2
    elsewhere = SearchQuery(
        (catalog,), parse_region("kansas"), dt.date(2024, 1, 1), dt.date(2024, 12, 31)
    )
    assert len(search(elsewhere)) == 0


def test_factory_items_parse_like_the_real_dlr_item(factory_region) -> None:
    item = pystac.Item.from_file(str(factory_region.enmap_items[0]))
    grid = asset_grid(item, "image")
    assert grid is not None and grid.epsg == factory_region.crs_epsg
    assert grid.transform == factory_region.enmap_transform
    assert grid.shape == factory_region.enmap_shape
    bands = enmap_bands_of(item)
    assert len(bands) == factory_region.n_bands == 224
    assert {b.detector for b in bands.bands} == {"VNIR", "SWIR"}  # listed by detector
