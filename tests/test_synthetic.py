"""The scene factory: physical sanity, HLS/EnMAP consistency, packaging, determinism, realism."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from hyperkd.pipeline.features import spectra
from hyperkd.pipeline.sensors import EnmapBands, alignment, enmap_table, hls_sensor
from hyperkd.pipeline.synthetic.factory import (
    RegionSpec,
    detector_order,
    enmap_reflectance,
    hls_reflectance,
    make_surface,
)
from hyperkd.pipeline.synthetic.products import RegionManifest, write_region
from hyperkd.pipeline.synthetic.stac import footprint_lonlat, odc_stac_cfg

SPEC = RegionSpec(size_px=128, seed=0)


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> RegionManifest:
    return write_region(tmp_path_factory.mktemp("synthetic") / "region", SPEC)


def _item(path: Path) -> dict:
    return json.loads(path.read_text())


def _read_enmap(manifest: RegionManifest, t: int) -> tuple[np.ndarray, EnmapBands, dict]:
    """Reflectance (band, y, x) float32 with NaN for nodata, the item's own bands, the item."""
    item = _item(manifest.enmap_items[t])
    image = manifest.enmap_items[t].parent / item["assets"]["image"]["href"]
    bands = EnmapBands.from_eo_bands(item["assets"]["image"]["eo:bands"])
    with rasterio.open(image) as ds:
        dn = ds.read()
    refl = dn.astype(np.float32) * np.asarray(bands.gain, np.float32)[:, None, None]
    return np.where(dn == int(item["properties"]["enmap:nodata"]), np.nan, refl), bands, item


def _band(bands: EnmapBands, nm: float) -> int:
    return int(np.argmin(np.abs(bands.wavelengths - nm)))


def test_vegetation_ndvi_and_water_nir(region: RegionManifest) -> None:
    refl, bands, _ = _read_enmap(region, 0)
    with rasterio.open(region.truth["landcover"]) as ds:
        landcover = ds.read(1)
    red, nir = refl[_band(bands, 660)], refl[_band(bands, 860)]
    ndvi = (nir - red) / (nir + red)
    assert np.median(ndvi[landcover == 4]) > 0.5  # tree
    assert np.median(ndvi[landcover == 3]) > 0.5  # low vegetation incl. crops
    assert np.median(ndvi[landcover == 5]) < 0.4  # soil
    water = landcover == 6
    assert water.sum() > 50
    assert np.median(nir[water]) < 0.05
    # Open water (>= 95 % of the pixel, from the in-memory truth) is dark in the NIR everywhere.
    surface = make_surface(SPEC)
    open_water = surface._crop_to_enmap(surface.water_fraction()) >= 0.95
    assert open_water.sum() > 20
    assert np.all(nir[open_water] < 0.05)


def test_library_shapes() -> None:
    veg = spectra.vegetation()
    at = {nm: veg[int(nm - 400)] for nm in (480, 550, 670, 800, 970, 1200, 1450, 1650, 1940, 2200)}
    assert at[550] > at[480] and at[550] > at[670]  # green peak between chlorophyll wells
    assert at[800] > 4 * at[670]  # red edge
    assert at[970] < veg[(1070 - 400)] and at[1450] < at[1650] and at[1940] < at[2200]  # water
    low, high = spectra.soil(5.0), spectra.soil(60.0)
    assert np.all(high < low)  # more organic carbon -> darker everywhere
    assert (low[150] / high[150]) > (low[1800] / high[1800])  # ... most in the visible (flatter)
    assert spectra.water()[(860 - 400)] < 0.01


def test_hls_equals_enmap_response_average(region: RegionManifest) -> None:
    """S30 of date 0 and EnMAP date 0 are both clear: each HLS band is the EnMAP band average."""
    refl, bands, _ = _read_enmap(region, 0)
    align = alignment(bands)
    enmap6 = np.stack([np.nanmean(refl[idx], axis=0) for idx in align.values()])
    # HLS grid shifted by half a pixel: HLS pixel j covers EnMAP pixels j-m-1 and j-m.
    m, n = SPEC.hls_margin_px, SPEC.size_px
    enmap6 = 0.25 * (
        enmap6[:, :-1, :-1] + enmap6[:, 1:, :-1] + enmap6[:, :-1, 1:] + enmap6[:, 1:, 1:]
    )
    s30 = next(
        p
        for p in region.hls_items
        if ".S30." in p.name and _item(p)["properties"]["datetime"] < "2024-06-20"
    )
    item = _item(s30)
    keys = hls_sensor().asset_keys("s30")
    hls6 = []
    for role in hls_sensor().band_names:
        with rasterio.open(s30.parent / item["assets"][keys[role]]["href"]) as ds:
            assert ds.nodata == -9999 and ds.dtypes[0] == "int16"
            hls6.append(ds.read(1)[m + 1 : m + n, m + 1 : m + n] * hls_sensor().scale)
    diff = np.stack(hls6) - enmap6
    assert np.abs(np.median(diff, axis=(1, 2))).max() < 0.001
    assert np.median(np.abs(diff)) < 0.002  # HLS noise is 0.0015
    assert np.percentile(np.abs(diff), 99) < 0.008


def test_hls_without_offset_matches_pixel_for_pixel() -> None:
    spec = RegionSpec(size_px=48, seed=3, hls_offset_px=0.0, bands=enmap_table().bands)
    surface = make_surface(spec)
    dn = enmap_reflectance(surface, 0).astype(np.float32) * 1e-4
    hls, fmask = hls_reflectance(surface, 0, "s30")
    assert hls.shape == (6, *spec.hls_shape) and fmask.dtype == np.uint8
    assert spec.hls_transform.c == spec.enmap_transform.c - spec.hls_margin_px * 30
    m = spec.hls_margin_px
    for i, idx in enumerate(alignment(spec.enmap_bands).values()):
        d = hls[i, m:-m, m:-m] * 1e-4 - dn[idx].mean(axis=0)
        assert np.percentile(np.abs(d), 99) < 0.008


def test_products_open_with_rasterio(region: RegionManifest) -> None:
    table = enmap_table()
    item = _item(region.enmap_items[0])
    folder = region.enmap_items[0].parent
    assert item["id"].startswith("ENMAP01-____L2A-DT") and "_V010302_" in item["id"]
    with rasterio.open(folder / item["assets"]["image"]["href"]) as ds:
        assert ds.count == 224 and ds.dtypes[0] == "int16" and ds.nodata == -32768
        assert ds.crs.to_epsg() == 32633 and ds.res == (30.0, 30.0)
        assert (ds.transform.c, ds.transform.f) == (
            362175.0,
            5809965.0,
        ) and ds.transform.c % 30 != 0
        assert ds.scales[0] == pytest.approx(1e-4)
        assert ds.name.endswith(table.file_suffixes["image"])
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        wavelengths = np.array([float(ds.tags(i + 1)["wavelength"]) for i in range(ds.count)])
        bbl = np.array([ds.tags(i + 1)["bbl"] == "1" for i in range(ds.count)])
        dn = ds.read()
    bands = EnmapBands.from_eo_bands(item["assets"]["image"]["eo:bands"])
    assert np.allclose(wavelengths, bands.wavelengths)
    assert np.all(dn[~bbl] == -32768) and (~bbl).sum() == 6
    assert np.all(dn[bbl] != -32768)
    assert np.allclose(
        np.sort(wavelengths[~bbl]), table.bands.wavelengths[sorted(table.bands.nodata_bands)]
    )
    for key in table.quality_assets:
        with rasterio.open(folder / item["assets"][key]["href"]) as ds:
            assert ds.count == 1 and ds.dtypes[0] == "uint8" and ds.shape == (128, 128)
            assert ds.name.endswith(table.file_suffixes[key])
    for path in region.hls_items:
        hitem = _item(path)
        for key, asset in hitem["assets"].items():
            with rasterio.open(path.parent / asset["href"]) as ds:
                assert ds.transform.c % 30 == 0 and ds.transform.f % 30 == 0  # MGRS-aligned
                assert ds.shape == SPEC.hls_shape and ds.crs.to_epsg() == 32633
                assert (ds.dtypes[0], ds.nodata) == (
                    ("uint8", 255) if key == "Fmask" else ("int16", -9999)
                )
    for name, dtype in (("landcover", "uint8"), ("crop_type", "uint8"), ("soc", "float32")):
        with rasterio.open(region.truth[name]) as ds:
            assert ds.dtypes[0] == dtype and ds.transform == SPEC.enmap_transform
    with rasterio.open(region.truth["landcover"]) as ds:
        assert set(np.unique(ds.read(1))) <= {1, 2, 3, 4, 5, 6} and len(np.unique(ds.read(1))) == 6
    with rasterio.open(region.truth["crop_type"]) as ds:
        assert len(np.unique(ds.read(1))) == SPEC.n_crop_types + 1


def test_clouds_are_flagged(region: RegionManifest) -> None:
    refl, bands, item = _read_enmap(region, 1)  # the cloudy EnMAP acquisition
    with rasterio.open(
        region.enmap_items[1].parent / item["assets"]["quality_cloud"]["href"]
    ) as ds:
        cloud = ds.read(1).astype(bool)
    assert 0.005 < cloud.mean() < 0.2
    assert int(item["properties"]["eo:cloud_cover"]) == round(cloud.mean() * 100)
    blue = refl[_band(bands, 480)]
    assert np.median(blue[cloud]) > 0.3 > np.median(blue[~cloud])
    clear = _item(region.enmap_items[0])
    assert clear["properties"]["eo:cloud_cover"] == "0"


def test_soc_is_tied_to_soil_spectra(region: RegionManifest) -> None:
    refl, bands, _ = _read_enmap(region, 0)
    with rasterio.open(region.truth["soc"]) as ds:
        soc = ds.read(1)
    with rasterio.open(region.truth["landcover"]) as ds:
        soil = ds.read(1) == 5
    assert np.isfinite(soc[soil]).all() and np.nanmin(soc) >= 3 and np.nanmax(soc) <= 120
    r = np.corrcoef(soc[soil], refl[_band(bands, 550)][soil])[0, 1]
    assert r < -0.4


def test_stac_catalog_walks_and_mirrors_real_items(region: RegionManifest, tmp_path: Path) -> None:
    import pystac

    moved = tmp_path / "moved"
    shutil.copytree(region.root, moved)  # relative hrefs: the folder is relocatable
    catalog = pystac.Catalog.from_file(str(moved / "catalog.json"))
    assert {c.id for c in catalog.get_children()} == {"ENMAP_HSI_L2A", "HLSL30_2.0", "HLSS30_2.0"}
    items = list(catalog.get_items(recursive=True))
    assert len(items) == 3 * SPEC.n_scenes
    for item in items:
        for asset in item.assets.values():
            assert not Path(asset.href).is_absolute()
            assert Path(asset.get_absolute_href() or "").is_file()
    enmap = next(i for i in items if i.collection_id == "ENMAP_HSI_L2A")
    raw = _item(region.enmap_items[0])  # the JSON as written (pystac migrates proj:epsg on read)
    assert raw["properties"]["proj:epsg"] is None and raw["properties"]["enmap:nodata"] == "-32768"
    assert raw["properties"]["version"] == "01.03.02" and raw["stac_version"] == "1.0.0"
    image = raw["assets"]["image"]
    assert image["proj:epsg"] == 32633 and image["proj:shape"] == [128, 128]
    assert image["proj:transform"][:6] == list(SPEC.enmap_transform)[:6]
    eo = image["eo:bands"]
    assert len(eo) == 224 and isinstance(eo[0]["name"], int)
    assert set(eo[0]) == {
        "name",
        "center_wavelength",
        "full_width_half_max",
        "enmap:gain_of_band",
        "enmap:offset_of_band",
    }
    assert set(enmap.assets) == {"image", *enmap_table().quality_assets}
    l30 = next(i for i in items if i.collection_id == "HLSL30_2.0")
    assert l30.id.startswith("HLS.L30.T33UUU.2024") and l30.id.endswith(".v2.0")
    assert set(l30.assets) == {"B02", "B03", "B04", "B05", "B06", "B07", "Fmask"}
    assert not any(k.startswith("proj:") for k in l30.properties)
    assert not any(k.startswith("proj:") for a in l30.assets.values() for k in a.extra_fields)
    s30 = next(i for i in items if i.collection_id == "HLSS30_2.0")
    assert set(s30.assets) == {"B02", "B03", "B04", "B8A", "B11", "B12", "Fmask"}


def test_odc_stac_loads_the_image_asset(region: RegionManifest) -> None:
    import odc.stac
    import pystac

    items = [pystac.Item.from_file(str(p)) for p in region.enmap_items]
    ds = odc.stac.load(items, bands=["image"], stac_cfg=odc_stac_cfg(224))
    assert ds.image.shape == (SPEC.n_scenes, 128, 128, 224)
    refl, _bands, _ = _read_enmap(region, 0)
    got = ds.image.isel(time=0).values.transpose(2, 0, 1)
    assert np.array_equal(
        got, np.where(np.isnan(refl), -32768, np.rint(refl / 1e-4)).astype(np.int16)
    )


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    spec = RegionSpec(size_px=32, seed=11, n_scenes=1)
    a = write_region(tmp_path / "a", spec)
    b = write_region(tmp_path / "b", spec)
    assert _digest(a.root) == _digest(b.root)
    s1, s2 = make_surface(spec), make_surface(RegionSpec(size_px=32, seed=12, n_scenes=1))
    assert not np.array_equal(s1.landcover, s2.landcover)
    assert not np.array_equal(enmap_reflectance(s1, 0), enmap_reflectance(s2, 0))


def test_custom_band_metadata_is_honoured() -> None:
    """Pixels follow the given band order/centres: a detector-ordered set vs the sorted table."""
    table = enmap_table().bands
    surface = make_surface(RegionSpec(size_px=32, seed=5, bands=table))
    sorted_dn = enmap_reflectance(surface, 0, table).astype(np.float32)
    by_detector = detector_order(table)
    assert not by_detector.is_sorted
    det_dn = enmap_reflectance(surface, 0, by_detector).astype(np.float32)
    order = [int(np.argmin(np.abs(table.wavelengths - c))) for c in by_detector.wavelengths]
    valid = table.valid[order]
    # Same surface, same bands, different order: equal up to noise (sigma <= ~60 DN).
    assert np.abs(det_dn[valid] - sorted_dn[order][valid]).mean() < 60
    shifted = EnmapBands(
        bands=tuple(
            type(b)(b.name, b.center_nm + 40.0, b.fwhm_nm, b.detector) for b in table.bands
        ),
        nodata_bands=table.nodata_bands,
    )
    moved = enmap_reflectance(surface, 0, shifted).astype(np.float32)
    red_edge = int(np.argmin(np.abs(table.wavelengths - 700)))  # 700 nm -> 740 nm: much brighter
    assert moved[red_edge].mean() > sorted_dn[red_edge].mean() + 500


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="hls_offset_px"):
        RegionSpec(hls_offset_px=1.0)
    with pytest.raises(ValueError, match="dates"):
        RegionSpec(n_scenes=2, dates=())
    with pytest.raises(ValueError, match="size_px"):
        RegionSpec(size_px=2)


def test_demo_region_covers_default_footprint() -> None:
    from shapely.geometry import Polygon, shape

    from hyperkd.catalogs import resource

    feature = json.loads(resource("regions", "demo.geojson").read_text())
    assert feature["type"] == "Feature" and feature["properties"]["name"] == "demo"
    spec = RegionSpec()
    footprint = Polygon(
        footprint_lonlat(spec.crs_epsg, spec.enmap_transform, (spec.size_px, spec.size_px))
    )
    region = shape(feature["geometry"])
    assert region.contains(footprint)
    assert footprint.area / region.area > 0.9


CLASSES = {"low_vegetation": [3], "tree": [4], "soil": [5], "water": [6], "roof_pavement": [1, 2]}


def test_realism_against_real_potsdam_class_means(
    region: RegionManifest, sample_data: Path
) -> None:
    """Per-class mean spectra correlate >= 0.9 with the real EnMAP Potsdam tiles' class means."""
    folder = sample_data / "enmap_potsdam_l2a"
    pixels, labels = [], []
    for tile in sorted((folder / "images").glob("*.tif")):
        with rasterio.open(tile) as ds:
            pixels.append(ds.read().reshape(ds.count, -1))
            wavelengths = np.array([float(ds.tags(i + 1)["wavelength"]) for i in range(ds.count)])
            bbl = np.array([ds.tags(i + 1)["bbl"] == "1" for i in range(ds.count)])
        with rasterio.open(folder / "labels" / tile.name) as ds:
            labels.append(ds.read(1).ravel())
    real, real_labels = np.concatenate(pixels, axis=1) * 1e-4, np.concatenate(labels)
    synth, bands, _ = _read_enmap(region, 0)
    with rasterio.open(region.truth["landcover"]) as ds:
        landcover = ds.read(1)
    # Match bands by wavelength (the two products may list them in different orders).
    match = np.array([int(np.argmin(np.abs(bands.wavelengths - w))) for w in wavelengths])
    assert np.abs(bands.wavelengths[match] - wavelengths).max() < 1.0
    valid = bbl & np.isfinite(synth[match, 0, 0])
    for name, codes in CLASSES.items():
        real_mean = real[:, np.isin(real_labels, codes)].mean(axis=1)
        synth_mean = synth[:, np.isin(landcover, codes)].mean(axis=1)[match]
        r = np.corrcoef(real_mean[valid], synth_mean[valid])[0, 1]
        assert r >= 0.9, f"{name}: Pearson r = {r:.3f} with the real Potsdam class mean"


def test_cli_demo_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hyperkd.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["demo-data", "--help"])
    assert exc.value.code == 0
    assert "--size" in capsys.readouterr().out
    out = tmp_path / "demo"
    assert main(["demo-data", "--out", str(out), "--size", "tiny", "--seed", "3"]) == 0
    assert "EnMAP L2A scenes: 2" in capsys.readouterr().out
    assert (out / "catalog.json").is_file() and (out / "truth" / "soc.tif").is_file()
    assert (
        main(["demo-data", "--out", str(out), "--size", "tiny", "--seed", "4"]) == 0
    )  # rewrite ours
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["demo-data", "--out", str(foreign), "--size", "tiny"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "foreign"]  # nothing half-written
