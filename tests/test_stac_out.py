"""STAC for what we write: a demo cube's and its tile store's records validate against the
STAC and extension JSON schemas (offline fixtures), their Zarr assets open with plain xarray
exactly like ``open_cube``, and ``hyperkd search`` finds a cube's scenes through its
collection."""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import pystac
import pytest
import xarray as xr
import zarr
from shapely.geometry import box, shape
from stac_validate import validate

from hyperkd.cli import main
from hyperkd.pipeline.cube import CubeWriter, open_cube
from hyperkd.pipeline.ingest.region import IngestConfig, IngestParams, ingest_region
from hyperkd.pipeline.stac.regions import parse_region
from hyperkd.pipeline.stac.search import SearchQuery
from hyperkd.pipeline.synthetic.factory import RegionSpec
from hyperkd.pipeline.synthetic.products import write_region
from hyperkd.pipeline.tiles.build import TileConfig, build_tiles

DATES = ["--start", "2024-06-01", "--end", "2024-08-30"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """The demo region (64 px, 2 EnMAP scenes + their HLS pairs) ingested, then tiled."""
    root = tmp_path_factory.mktemp("stac")
    write_region(root / "region", RegionSpec(size_px=64, n_scenes=2))
    cube = root / "cube.zarr"
    args = ["--source", str(root / "region" / "catalog.json"), "--region", "demo", *DATES]
    assert main(["ingest", *args, "--out", str(cube), "--tile-size", "32"]) == 0
    tiles = root / "tiles.zarr"
    cfg = TileConfig(tile_size=16, patch_size=8, min_valid=0.0, split_block_px=32)
    build_tiles(str(cube), str(tiles), cfg)
    return {"region": root / "region", "cube": cube, "tiles": tiles}


def _docs(store: Path) -> tuple[dict, list[dict]]:
    collection = json.loads((store / "collection.json").read_text())
    items = [json.loads(p.read_text()) for p in sorted((store / "items").glob("*.json"))]
    return collection, items


def test_cube_records_validate(demo):
    collection, items = _docs(demo["cube"])
    checked = validate(collection)
    assert any("datacube" in uri for uri in checked)
    scenes = json.loads((demo["cube"] / "zarr.json").read_text())["attributes"]["hyperkd:scenes"]
    assert sorted(i["id"] for i in items) == sorted(s["id"] for s in scenes)
    for item in items:
        uris = validate(item)
        assert any("processing" in u for u in uris) and any("projection" in u for u in uris)
    # The datacube fields describe the enmap group, wavelengths included.
    dims, variables = collection["cube:dimensions"], collection["cube:variables"]
    assert set(dims) >= {"x", "y", "time", "band"} and dims["x"]["reference_system"] == 32633
    assert len(variables["wavelength"]["values"]) == 224 and variables["wavelength"]["unit"] == "nm"
    assert variables["reflectance"]["dimensions"] == ["time", "band", "y", "x"]
    enmap = [s for s in scenes if s["group"] == "enmap"]
    assert len(dims["time"]["values"]) == len(enmap)
    assert collection["assets"]["hls"]["cube:dimensions"]["band"]["values"][0] == "blue"


def test_scene_items_carry_provenance(demo):
    _, items = _docs(demo["cube"])
    doc = json.loads((demo["cube"] / "zarr.json").read_text())
    records = {s["id"]: s for s in doc["attributes"]["hyperkd:scenes"]}
    extent = json.loads((demo["cube"] / "collection.json").read_text())["extent"]
    cube_box = box(*extent["spatial"]["bbox"][0])
    for item in items:
        rec, props = records[item["id"]], item["properties"]
        assert props.get("processing:version") == rec["processing_version"]
        if rec["group"] == "enmap":  # the EnMAP processor version, from the source item
            assert props["processing:version"] == "01.03.02"
        assert props["processing:software"] == {"hyperkd": rec["code_version"]}
        assert props["hyperkd:source_collection"] == rec["collection"]
        assert props["hyperkd:source_hrefs"] == rec["hrefs"]
        assert pystac.Item.from_dict(item).datetime == pystac.utils.str_to_datetime(rec["datetime"])
        footprint = shape(item["geometry"])
        assert footprint.area > 0 and cube_box.buffer(1e-9).contains(footprint)
        assert footprint.intersects(shape(rec["footprint"]))


def test_validation_is_not_vacuous(demo):
    collection, items = _docs(demo["cube"])
    broken = copy.deepcopy(collection)
    # A spatial dimension needs its axis. (The schema accepts the collection when either its
    # top level or one of its assets is valid, so break both places that carry the x axis.)
    for owner in (broken, broken["assets"]["enmap"], broken["assets"]["hls"]):
        del owner["cube:dimensions"]["x"]["axis"]
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    broken = copy.deepcopy(items[0])
    broken["properties"]["processing:software"] = "hyperkd"  # must be a name -> version map
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def _same_reflectance(plain: np.ndarray, cube: np.ndarray) -> None:
    """Plain xarray decodes the int16 x 1e-4 to float64 (JSON attributes carry no float32
    type), ``open_cube`` to float32: the same stored integers, nodata in the same places, and
    equal values to float32 precision."""
    assert plain.shape == cube.shape and cube.dtype == np.float32
    nodata = np.isnan(cube)
    np.testing.assert_array_equal(np.isnan(plain), nodata)
    np.testing.assert_array_equal(
        np.rint(plain[~nodata] / 1e-4), np.rint(cube[~nodata].astype(np.float64) / 1e-4)
    )
    np.testing.assert_allclose(plain.astype(np.float32), cube, rtol=1e-6)


def test_assets_open_like_open_cube(demo):
    cube = demo["cube"]
    catalog = pystac.Collection.from_file(str(cube / "collection.json"))
    expected = open_cube(str(cube))
    asset = catalog.assets["zarr"]
    tree = xr.open_datatree(asset.get_absolute_href(), **asset.extra_fields["xarray:open_kwargs"])
    for group in ("enmap", "hls"):
        want = expected[group].reflectance.values
        _same_reflectance(tree[group].reflectance.values, want)
        one = catalog.assets[group]
        ds = xr.open_dataset(one.get_absolute_href(), **one.extra_fields["xarray:open_kwargs"])
        _same_reflectance(ds.reflectance.values, want)
    # Each scene item's asset opens its group; the scene is at its time index there.
    for item in catalog.get_items():
        asset = item.assets["zarr"]
        ds = xr.open_dataset(asset.get_absolute_href(), **asset.extra_fields["xarray:open_kwargs"])
        i = item.properties["hyperkd:time_index"]
        assert str(ds.scene_id.values[i]) == item.id


def test_search_finds_the_cubes_scenes(demo, capsys):
    _, items = _docs(demo["cube"])
    source = str(demo["cube"] / "collection.json")
    assert main(["search", "--source", source, "--region", "demo", *DATES]) == 0
    out = capsys.readouterr().out
    for item in items:
        assert item["id"] in out
    n_enmap = sum(i["properties"]["hyperkd:group"] == "enmap" for i in items)
    assert f"{n_enmap} EnMAP scenes, {len(items) - n_enmap} HLS scenes" in out
    assert f"{n_enmap} of {n_enmap} EnMAP scenes paired" in out
    # The cube folder itself works as a source too.
    assert main(["search", "--source", str(demo["cube"]), "--region", "demo", *DATES]) == 0
    assert capsys.readouterr().out == out


def test_tile_store_record_validates(demo):
    tiles = demo["tiles"]
    collection = json.loads((tiles / "collection.json").read_text())
    validate(collection)
    attrs = json.loads((tiles / "zarr.json").read_text())["attributes"]
    dims = collection["cube:dimensions"]
    assert dims["band"]["values"] == attrs["band_wavelength"]
    assert collection["cube:variables"]["student"]["dimensions"][1:] == ["band", "y", "x"]
    # The asset's open arguments open the store with plain xarray, without a warning.
    asset = pystac.Collection.from_file(str(tiles / "collection.json")).assets["zarr"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_dataset(asset.get_absolute_href(), **asset.extra_fields["xarray:open_kwargs"])
    student = zarr.open_group(str(tiles), mode="r")["student"]
    assert ds.student.dims == tuple(collection["cube:variables"]["student"]["dimensions"])
    np.testing.assert_array_equal(ds.student[:2].values, student[:2])
    (link,) = [ln for ln in collection["links"] if ln["rel"] == "derived_from"]
    assert link["href"] == f"{demo['cube']}/collection.json"
    assert Path(link["href"]).is_file()


def test_records_follow_commits_and_rewrite_nothing(demo, tmp_path):
    cube = tmp_path / "cube.zarr"
    shutil.copytree(demo["cube"], cube)
    before = {p: p.stat().st_mtime_ns for p in cube.glob("**/*.json") if "items" in p.parts}
    (cube / "collection.json").unlink()  # as if a writer was killed before publishing
    with CubeWriter(str(cube)):  # the next writer's reconcile restores it
        pass
    assert (cube / "collection.json").is_file()
    assert _docs(cube) == _docs(demo["cube"])
    after = {p: p.stat().st_mtime_ns for p in cube.glob("**/*.json") if "items" in p.parts}
    assert after == before  # unchanged items are not rewritten


def test_cube_records_on_s3(demo, s3_server, s3_bucket):
    import s3fs

    url = f"{s3_bucket}/cube.zarr"
    query = SearchQuery(
        (str(demo["region"] / "catalog.json"),),
        parse_region("demo"),
        dt.date(2024, 6, 1),
        dt.date(2024, 6, 30),
    )
    config = IngestConfig(query, url, dict(s3_server), IngestParams(tile_size=16))
    assert ingest_region(config).ok
    fs = s3fs.S3FileSystem(
        key=s3_server["key"],
        secret=s3_server["secret"],
        client_kwargs={"endpoint_url": s3_server["endpoint_url"]},
    )
    collection = json.loads(fs.cat_file(f"{url}/collection.json"))
    validate(collection)
    links = [ln["href"] for ln in collection["links"] if ln["rel"] == "item"]
    assert links and all(h.startswith("./items/") for h in links)
    for href in links:
        validate(json.loads(fs.cat_file(f"{url}/{href[2:]}")))
    assert s3_server["secret"] not in json.dumps(collection)
