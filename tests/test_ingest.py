"""Ingest end to end: the factory's demo catalog -> cube; exactness, idempotency, bad input."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.warp import Resampling, reproject

from hyperkd.cli import main
from hyperkd.pipeline.cube import open_cube, verify_cube
from hyperkd.pipeline.ingest.region import IngestConfig, IngestParams, ingest_region
from hyperkd.pipeline.sensors import EnmapBands, enmap_table
from hyperkd.pipeline.stac.regions import parse_region
from hyperkd.pipeline.stac.search import SearchQuery
from hyperkd.pipeline.stac.sources import RetryPolicy, Source
from hyperkd.pipeline.synthetic.factory import RegionSpec
from hyperkd.pipeline.synthetic.products import write_region

SIZE = 64
ARGS = ["--region", "demo", "--start", "2024-06-01", "--tile-size", "32"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """Two EnMAP scenes (detector band order) + one L30 and one S30 each, 64 px."""
    root = tmp_path_factory.mktemp("demo") / "region"
    write_region(root, RegionSpec(size_px=SIZE, n_scenes=2))
    return root


def _ingest(catalog: Path, out: Path, end: str = "2024-08-30", *extra: str) -> int:
    return main(
        ["ingest", "--source", str(catalog), *ARGS, "--end", end, "--out", str(out), *extra]
    )


def _enmap_source(root: Path, scene_id: str) -> np.ndarray:
    """The source COG's bands sorted by wavelength, read with plain rasterio."""
    tif = next((root / "ENMAP_HSI_L2A" / scene_id).glob("*SPECTRAL_IMAGE_COG.TIF"))
    with rasterio.open(tif) as f:
        data = f.read()
        wl = [float(f.tags(i + 1)["wavelength"]) for i in range(f.count)]
    return data[np.argsort(wl)]


def _hls_expected(root: Path, scene_id: str, keys: list[str], grid_transform) -> np.ndarray:
    """HLS bands resampled independently: rasterio.warp.reproject, bilinear, onto the EnMAP grid."""
    coll = "HLSL30_2.0" if ".L30." in scene_id else "HLSS30_2.0"
    out = np.full((len(keys), SIZE, SIZE), -9999, np.int16)
    for b, key in enumerate(keys):
        with rasterio.open(root / coll / scene_id / f"{scene_id}.{key}.tif") as ds:
            assert ds.transform.c % 30 == 0  # MGRS-aligned, half a pixel off EnMAP's grid
            reproject(
                ds.read(1), out[b], src_transform=ds.transform, src_crs=ds.crs, src_nodata=-9999,
                dst_transform=grid_transform, dst_crs=ds.crs, dst_nodata=-9999,
                resampling=Resampling.bilinear,
            )  # fmt: skip
    return out


def test_demo_catalog_ingests_exactly(demo, tmp_path, capsys):
    out = tmp_path / "cube.zarr"
    assert _ingest(demo / "catalog.json", out) == 0
    printed = capsys.readouterr().out
    assert "summary: 6 written, 0 skipped (already present), 0 failed" in printed
    assert verify_cube(str(out)) == []
    tree = xr.open_datatree(str(out), engine="zarr", mask_and_scale=False)
    enmap, hls = tree["enmap"].to_dataset(), tree["hls"].to_dataset()
    table = enmap_table().bands
    # The grid is the EnMAP product's own grid: corner 362175 E, not a multiple of 30 m.
    assert enmap.x.values[0] - 15 == 362175.0
    for t, sid in enumerate(enmap.scene_id.values):
        got = enmap.reflectance[t].values
        src = _enmap_source(demo, str(sid))
        np.testing.assert_array_equal(got[table.valid], src[table.valid])
        assert (got[~table.valid] == -32768).all()
    grid_t = rasterio.Affine(30, 0, 362175, 0, -30, 5809965)
    keys = {"L30": ["B02", "B03", "B04", "B05", "B06", "B07"],
            "S30": ["B02", "B03", "B04", "B8A", "B11", "B12"]}  # fmt: skip
    for t, sid in enumerate(hls.scene_id.values):
        want = _hls_expected(demo, str(sid), keys[str(hls.sensor.values[t])], grid_t)
        np.testing.assert_array_equal(hls.reflectance[t].values, want)
    assert set(hls.paired_enmap.values) == set(enmap.scene_id.values)
    # Quality folding: the factory's cloudy acquisition has invalid pixels, none outside it.
    assert 0 < float(enmap.valid.mean()) < 1
    records = tree.attrs["hyperkd:scenes"]
    assert len(records) == 6
    rec = records[0]
    assert rec["code_version"] and rec["parameters"]["resampling"] == "bilinear"
    assert len(rec["wavelength"]) == 224 and rec["details"]["band_plan"]["copy"] == 218
    assert all("?" not in h for h in rec["hrefs"].values())


def test_rerun_is_a_noop_and_later_end_appends(demo, tmp_path, capsys):
    out = tmp_path / "cube.zarr"
    assert _ingest(demo / "catalog.json", out, "2024-06-30") == 0
    first = open_cube(str(out))
    assert first["enmap"].sizes["time"] == 1 and first["hls"].sizes["time"] == 2
    root_doc = (out / "zarr.json").read_bytes()
    assert _ingest(demo / "catalog.json", out, "2024-06-30") == 0
    assert "0 written, 3 skipped" in capsys.readouterr().out
    assert (out / "zarr.json").read_bytes() == root_doc  # nothing changed at all
    assert _ingest(demo / "catalog.json", out, "2024-07-30") == 0
    assert "3 written, 3 skipped" in capsys.readouterr().out
    tree = open_cube(str(out))
    assert tree["enmap"].sizes["time"] == 2 and tree["hls"].sizes["time"] == 4
    assert np.all(np.diff(tree["hls"].time.values) > np.timedelta64(0))
    assert verify_cube(str(out)) == []


def test_dlr_band_metadata_lands_on_the_canonical_axis(sample_data, tmp_path):
    item = json.loads(
        (sample_data / "stac" / "enmap_l2a_dlr_stac_item_DT0000080454.json").read_text()
    )
    dlr = EnmapBands.from_eo_bands(item["assets"]["image"]["eo:bands"])
    root = tmp_path / "dlr"
    write_region(root, RegionSpec(size_px=32, n_scenes=1, bands=dlr, processor_version="01.04.02"))
    out = tmp_path / "cube.zarr"
    assert _ingest(root / "catalog.json", out) == 0
    ds = xr.open_zarr(str(out), group="enmap", mask_and_scale=False)
    got = ds.reflectance[0].values
    tif = next((root / "ENMAP_HSI_L2A").glob("*/*SPECTRAL_IMAGE_COG.TIF"))
    with rasterio.open(tif) as f:
        src = f.read()
    table = enmap_table().bands
    n_copy = n_missing = 0
    for c, band in enumerate(table.bands):
        d = np.abs(dlr.wavelengths - band.center_nm)
        if table.valid[c] and d.min() <= 2.0:  # copied unchanged from the nearest scene band
            np.testing.assert_array_equal(got[c], src[int(np.argmin(d))])
            n_copy += 1
        elif table.valid[c]:  # the DLR scene has no band within 2 nm nor a bracketing pair
            below = dlr.wavelengths[dlr.wavelengths < band.center_nm].max()
            above = dlr.wavelengths[dlr.wavelengths > band.center_nm].min()
            assert band.center_nm - below > band.fwhm_nm or above - band.center_nm > band.fwhm_nm
            assert (got[c] == -32768).all()
            n_missing += 1
    assert n_copy == 215 and n_missing == 3
    rec = open_cube(str(out)).attrs["hyperkd:scenes"][0]
    assert rec["wavelength"] == dlr.wavelengths.tolist()
    assert rec["processing_version"] == "01.04.02"
    assert rec["details"]["band_plan"] == {"copy": 215, "interpolate": 0, "missing": 9,
                                           "exact_copy": False}  # fmt: skip


def _damaged_copy(demo: Path, tmp_path: Path) -> tuple[Path, str, str]:
    """A copy of the demo with scene 2's image corrupted and scene 1's band metadata removed."""
    root = tmp_path / "damaged"
    shutil.copytree(demo, root)
    first, second = sorted(p.name for p in (root / "ENMAP_HSI_L2A").iterdir() if p.is_dir())
    tif = next((root / "ENMAP_HSI_L2A" / second).glob("*SPECTRAL_IMAGE_COG.TIF"))
    tif.write_bytes(b"II*\x00" + b"\x00garbage" * 64)
    item_path = root / "ENMAP_HSI_L2A" / first / f"{first}.json"
    doc = json.loads(item_path.read_text())
    del doc["assets"]["image"]["eo:bands"]
    item_path.write_text(json.dumps(doc))
    return root, first, second


def test_failing_scenes_are_reported_and_never_half_written(demo, tmp_path, capsys):
    root, no_bands, corrupt = _damaged_copy(demo, tmp_path)
    out = tmp_path / "cube.zarr"
    assert _ingest(root / "catalog.json", out) == 1
    captured = capsys.readouterr()
    # The HLS scenes of failed EnMAP scenes are skipped: paired_enmap never points outside.
    assert "0 written, 0 skipped (already present), 2 failed, 4 HLS skipped" in captured.out
    assert f"failed {no_bands}: item {no_bands}: no band metadata" in captured.err
    assert f"failed {corrupt}: cannot read" in captured.err
    assert not out.exists()  # created by this run, and no scene written: removed again


def test_band_count_mismatch_is_reported(demo, tmp_path, capsys):
    root = tmp_path / "mismatch"
    shutil.copytree(demo, root)
    item_path = sorted((root / "ENMAP_HSI_L2A").glob("*/*.json"))[0]
    doc = json.loads(item_path.read_text())
    doc["assets"]["image"]["eo:bands"] = doc["assets"]["image"]["eo:bands"][:200]
    item_path.write_text(json.dumps(doc))
    out = tmp_path / "cube.zarr"
    assert _ingest(root / "catalog.json", out, "2024-06-30") == 1
    err = capsys.readouterr().err
    assert "band-count mismatch: eo:bands lists 200 bands but the image file has 224" in err
    assert not out.exists()  # its HLS pair is skipped too, so no scene was written


def test_corrupt_only_scene_leaves_no_cube(tmp_path, capsys):
    root = tmp_path / "one"
    write_region(root, RegionSpec(size_px=16, n_scenes=1))
    for tif in (root / "ENMAP_HSI_L2A").glob("*/*SPECTRAL_IMAGE_COG.TIF"):
        tif.write_bytes(b"not a tiff")
    shutil.rmtree(root / "HLSL30_2.0")
    shutil.rmtree(root / "HLSS30_2.0")
    catalog = json.loads((root / "catalog.json").read_text())
    catalog["links"] = [ln for ln in catalog["links"] if "HLS" not in ln["href"]]
    (root / "catalog.json").write_text(json.dumps(catalog))
    out = tmp_path / "cube.zarr"
    assert _ingest(root / "catalog.json", out) == 1
    assert "cannot read" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source", "nowhere-api"], "unknown source 'nowhere-api'"),
        (["--region", "1,2,3"], "bbox"),
        (["--region", "{bad.geojson}"], "invalid GeoJSON"),
        (["--start", "2024-09-01"], "after end date"),
        (["--bands", "no-such-table"], "unknown band table"),
    ],
)
def test_bad_input_one_line_nothing_written(demo, tmp_path, capsys, argv, message):
    out = tmp_path / "cube.zarr"
    base = {"--source": str(demo / "catalog.json"), "--region": "demo", "--start": "2024-06-01",
            "--end": "2024-08-30", "--out": str(out)}  # fmt: skip
    extra = []
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        if flag == "--region" and value == "{bad.geojson}":
            bad = tmp_path / "bad.geojson"
            bad.write_text('{"type": "Polygon", "coordinates": [[1, 2]]}')
            value = str(bad)
        if flag in base:
            base[flag] = value
        else:
            extra += [flag, value]
    args = [x for kv in base.items() for x in kv] + extra
    assert main(["ingest", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hyperkd ingest: error:")
    assert message in err[0]
    assert not out.exists()


def test_region_with_no_scenes_exits_zero(demo, tmp_path, capsys):
    out = tmp_path / "cube.zarr"
    argv = ["ingest", "--source", str(demo / "catalog.json"), "--region", "10,-10,11,-9",
            "--start", "2024-06-01", "--end", "2024-08-30", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "no scenes" in capsys.readouterr().out
    assert not out.exists()


def test_unreachable_api_is_one_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    source = Source(
        name="dead-api", kind="api", url=f"http://127.0.0.1:{port}/stac", collections=("x",),
        retry=RetryPolicy(tries=2, backoff_s=0.0, jitter_s=0.0, timeout_s=1.0),
    )  # fmt: skip
    query = SearchQuery(
        ("dead-api",), parse_region("demo"), dt.date(2024, 6, 1), dt.date(2024, 7, 1)
    )
    out = tmp_path / "cube.zarr"
    with pytest.raises(ValueError, match=r"127\.0\.0\.1") as info:
        ingest_region(IngestConfig(query, str(out)), sources=[source])
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_ingest_to_s3(demo, s3_server, s3_bucket):
    query = SearchQuery(
        (str(demo / "catalog.json"),),
        parse_region("demo"),
        dt.date(2024, 6, 1),
        dt.date(2024, 6, 30),
    )
    url = f"{s3_bucket}/cube.zarr"
    config = IngestConfig(query, url, dict(s3_server), IngestParams(tile_size=32))
    summary = ingest_region(config)
    assert summary.ok and len(summary.written) == 3
    assert verify_cube(url, s3_server) == []
    again = ingest_region(config)
    assert len(again.skipped) == 3 and not again.written
    tree = open_cube(url, s3_server)
    sid = str(tree["enmap"].scene_id.values[0])
    got = np.rint(tree["enmap"].reflectance[0].values / 1e-4)
    valid = enmap_table().bands.valid
    np.testing.assert_array_equal(got[valid], _enmap_source(demo, sid)[valid])


def test_concurrent_runs_serialise(demo, tmp_path):
    out = tmp_path / "cube.zarr"
    cmd = [sys.executable, "-m", "hyperkd", "ingest", "--source", str(demo / "catalog.json"),
           *ARGS, "--end", "2024-08-30", "--out", str(out)]  # fmt: skip
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    time.sleep(0.3)
    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    written = sum(int(o.split("summary: ")[1].split(" written")[0]) for o, _ in outs)
    assert written == 6  # every scene exactly once, whoever won the lock
    tree = open_cube(str(out))
    ids = list(tree["enmap"].scene_id.values) + list(tree["hls"].scene_id.values)
    assert len(ids) == len(set(ids)) == 6
    assert verify_cube(str(out)) == []


def test_provenance_hrefs_carry_no_credentials():
    import pystac

    from hyperkd.pipeline.ingest.region import _record

    item = pystac.Item("x", None, None, dt.datetime(2024, 1, 1), {}, collection="HLSL30_2.0")
    item.add_asset("B02", pystac.Asset("https://user:s3cret@data.example/x.tif?sig=T0KEN&se=1"))
    text = json.dumps(_record(item, ["B02"], IngestParams()))
    assert "s3cret" not in text and "T0KEN" not in text
    assert "https://data.example/x.tif" in text
