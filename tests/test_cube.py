"""The Zarr v3 cube: layout, georeferencing twice, commit protocol, lock, verify, S3."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from hyperkd.pipeline.cube import (
    CubeLayout,
    CubeWriter,
    Grid,
    SceneWrite,
    open_cube,
    verify_cube,
    write_variables,
)
from hyperkd.pipeline.cube.bandmap import load_band_table
from hyperkd.pipeline.store.location import LOCK_KEY, CubeLockedError

# A Potsdam-like grid: the corner is NOT a multiple of 30 m (362175 E).
GRID = Grid("EPSG:32633", (30.0, 0.0, 362175.0, 0.0, -30.0, 5809965.0), (40, 50))
TILE = 16


def _record(i: int) -> dict:
    return {
        "collection": "ENMAP_HSI_L2A",
        "hrefs": {"image": f"https://example.org/s{i}.tif"},
        "processing_version": "01.04.02",
        "cloud_cover": 1.0,
        "ingested_at": "2024-01-01T00:00:00Z",
        "code_version": "test",
        "parameters": {},
    }


def _enmap(i: int, day: int = 0) -> SceneWrite:
    rng = np.random.default_rng(i)
    refl = rng.integers(0, 10000, size=(224, *GRID.shape)).astype(np.int16)
    valid = rng.random(GRID.shape) > 0.1
    when = dt.datetime(2022, 7, 1 + (day or i), 10, 45, tzinfo=dt.UTC)
    return SceneWrite("enmap", f"E{i}", when, refl, valid, record=_record(i))


def _hls(i: int, pair: str) -> SceneWrite:
    refl = np.full((6, *GRID.shape), 100 * (i + 1), np.int16)
    when = dt.datetime(2022, 7, 2 + i, 10, tzinfo=dt.UTC)
    labels = {"sensor": "S30" if i % 2 else "L30", "paired_enmap": pair}
    return SceneWrite("hls", f"H{i}", when, refl, np.ones(GRID.shape, bool), labels, _record(i))


def _new_cube(url, storage_options=None, scenes=(0, 1)) -> list[SceneWrite]:
    written = []
    with CubeWriter(url, storage_options) as w:
        w.create(CubeLayout(GRID, load_band_table(), tile_size=TILE, region="test"))
        for i in scenes:
            s = _enmap(i)
            w.append(s)
            written.append(s)
    return written


def test_layout_is_the_contract(tmp_path):
    url = str(tmp_path / "cube.zarr")
    scenes = _new_cube(url)
    with CubeWriter(url) as w:
        w.append(_hls(0, "E0"))
    assert verify_cube(url) == []
    tree = xr.open_datatree(url, engine="zarr")  # plain xarray, as other teams open it
    enmap, hls = tree["enmap"].to_dataset(), tree["hls"].to_dataset()
    assert enmap.reflectance.dims == ("time", "band", "y", "x")
    # Band groups of 16 inside one shard per scene and tile: a one-band map reads 1/14.
    assert enmap.reflectance.encoding["chunks"] == (1, 16, TILE, TILE)
    assert enmap.reflectance.encoding["shards"] == (1, 224, TILE, TILE)
    assert enmap.valid.dims == ("time", "y", "x")
    assert list(enmap.scene_id.values) == ["E0", "E1"]
    assert np.all(np.diff(enmap.wavelength.values) > 0)
    assert int(enmap.valid_band.sum()) == 218
    assert list(hls.band.values) == ["blue", "green", "red", "nir_narrow", "swir1", "swir2"]
    assert list(hls.sensor.values) == ["L30"] and list(hls.paired_enmap.values) == ["E0"]
    assert enmap.time.dtype == np.dtype("datetime64[ns]")
    np.testing.assert_allclose(enmap.x.values[:2], [362190.0, 362220.0])
    # CF decoding gives reflectance; raw int16 is exactly what was written.
    raw = xr.open_zarr(url, group="enmap", mask_and_scale=False)
    assert raw.reflectance.dtype == np.int16
    np.testing.assert_array_equal(raw.reflectance[1].values, scenes[1].reflectance)
    np.testing.assert_array_equal(raw.valid[0].values, scenes[0].valid)
    np.testing.assert_allclose(enmap.reflectance[0, 5, 0, 0], scenes[0].reflectance[5, 0, 0] * 1e-4)
    decoded = open_cube(url)["enmap"].ds.reflectance  # the typed opener decodes to float32
    assert decoded.dtype == np.float32 and hls.reflectance.dims == ("time", "band", "y", "x")
    np.testing.assert_allclose(decoded[0, 5].values, enmap.reflectance[0, 5].values, rtol=1e-6)


def test_crs_stored_twice(tmp_path):
    import rioxarray  # noqa: F401  (registers .rio)

    url = str(tmp_path / "cube.zarr")
    _new_cube(url, scenes=(0,))
    ds = open_cube(url)["enmap"].to_dataset()
    assert ds.rio.crs.to_epsg() == 32633
    assert tuple(ds.rio.transform())[:6] == GRID.transform
    assert ds.reflectance.encoding["grid_mapping"] == "spatial_ref"
    root = json.loads((tmp_path / "cube.zarr" / "zarr.json").read_text())
    gattrs = root["consolidated_metadata"]["metadata"]["enmap"]["attributes"]
    assert gattrs["proj:code"] == "EPSG:32633"
    assert gattrs["spatial:transform"] == list(GRID.transform)
    assert gattrs["spatial:shape"] == [40, 50]


def test_append_keys_by_id_and_keeps_time_sorted(tmp_path):
    url = str(tmp_path / "cube.zarr")
    _new_cube(url, scenes=(0, 1))
    with CubeWriter(url) as w:
        assert w.scene_ids("enmap") == {"E0", "E1"}
        with pytest.raises(ValueError, match="already in the cube"):
            w.append(_enmap(1))
        with pytest.raises(ValueError, match="same acquisition time as E1"):
            w.append(_enmap(7, day=1))
        w.append(_enmap(2))
        # Backfills: between E0 and E1, then before everything (every slot moves up).
        w.append(dataclasses.replace(_enmap(7), time=dt.datetime(2022, 7, 1, 18, tzinfo=dt.UTC)))
        w.append(dataclasses.replace(_enmap(3), time=dt.datetime(2022, 6, 1, tzinfo=dt.UTC)))
    ds = open_cube(url)["enmap"]
    assert list(ds.scene_id.values) == ["E3", "E0", "E7", "E1", "E2"]
    assert np.all(np.diff(ds.time.values) > np.timedelta64(0))
    raw = xr.open_zarr(url, group="enmap", mask_and_scale=False)
    for t, i in enumerate((3, 0, 7, 1, 2)):  # every slot holds its own scene's values
        np.testing.assert_array_equal(raw.reflectance[t].values, _enmap(i).reflectance)
        np.testing.assert_array_equal(raw.valid[t].values, _enmap(i).valid)
    assert verify_cube(url) == []
    # The staged slot of the inserts left no chunks behind.
    assert not (tmp_path / "cube.zarr" / "enmap" / "reflectance" / "c" / "5").exists()
    assert (
        "hyperkd:pending"
        not in json.loads((tmp_path / "cube.zarr" / "zarr.json").read_text())["attributes"]
    )


def test_readers_see_only_the_committed_view(tmp_path):
    url = str(tmp_path / "cube.zarr")
    _new_cube(url, scenes=(0,))
    # Simulate a run killed after writing scene 1's chunks and growing an array's own
    # zarr.json, but before the root commit.
    refl_doc = tmp_path / "cube.zarr" / "enmap" / "reflectance" / "zarr.json"
    doc = json.loads(refl_doc.read_text())
    doc["shape"][0] = 2
    refl_doc.write_text(json.dumps(doc))
    chunk = tmp_path / "cube.zarr" / "enmap" / "reflectance" / "c" / "1" / "0" / "0"
    chunk.mkdir(parents=True)
    (chunk / "0").write_bytes(b"torn")
    assert open_cube(url)["enmap"].sizes["time"] == 1
    assert xr.open_zarr(url, group="enmap").sizes["time"] == 1
    assert verify_cube(url) == []
    with CubeWriter(url) as w:  # the next writer reconciles
        assert w.length("enmap") == 1
    assert json.loads(refl_doc.read_text())["shape"][0] == 1
    assert not (tmp_path / "cube.zarr" / "enmap" / "reflectance" / "c" / "1").exists()


def test_write_variables_adds_aligned_derived_arrays(tmp_path):
    url = str(tmp_path / "cube.zarr")
    _new_cube(url, scenes=(0, 1))
    teacher = np.arange(2 * 6 * 40 * 50, dtype=np.int16).reshape(2, 6, 40, 50)
    sig = np.random.default_rng(0).random((2, 5, 6)).astype(np.float32)
    ds = xr.Dataset(
        {
            "teacher_bands": (("time", "band6", "y", "x"), teacher),
            "significance_gabor": (("time", "py", "px"), sig),
        },
        coords={"band6": ["blue", "green", "red", "nir_narrow", "swir1", "swir2"]},
    )
    paths = write_variables(url, "enmap", ds)
    assert set(paths) == {"enmap/teacher_bands", "enmap/significance_gabor", "enmap/band6"}
    out = open_cube(url)["enmap"]
    np.testing.assert_array_equal(out.teacher_bands.values, teacher)
    np.testing.assert_allclose(out.significance_gabor.values, sig)
    assert verify_cube(url) == []
    # Overwrite in place, then a later append grows the derived arrays (fill = not computed).
    write_variables(url, "enmap", ds.assign(teacher_bands=ds.teacher_bands * 0 + 1))
    with CubeWriter(url) as w:
        w.append(_enmap(2))
    out = open_cube(url)["enmap"]
    assert out.sizes["time"] == 3
    assert (out.teacher_bands[:2].values == 1).all()
    assert np.isnan(out.teacher_bands[2].values).all()
    assert verify_cube(url) == []


@pytest.mark.parametrize(
    ("ds", "message"),
    [
        (xr.Dataset({"t": (("time", "y", "x"), np.zeros((5, 40, 50)))}), "time=5"),
        (xr.Dataset({"reflectance": (("time",), np.zeros(2))}), "cannot be replaced"),
    ],
)
def test_write_variables_rejects_misaligned(tmp_path, ds, message):
    url = str(tmp_path / "cube.zarr")
    _new_cube(url, scenes=(0, 1))
    before = (tmp_path / "cube.zarr" / "zarr.json").read_bytes()
    with pytest.raises(ValueError, match=message):
        write_variables(url, "enmap", ds)
    assert (tmp_path / "cube.zarr" / "zarr.json").read_bytes() == before


def test_verify_reports_every_problem(tmp_path):
    url = str(tmp_path / "cube.zarr")
    _new_cube(url, scenes=(0, 1))
    root_path = tmp_path / "cube.zarr" / "zarr.json"
    root = json.loads(root_path.read_text())
    meta = root["consolidated_metadata"]["metadata"]
    meta["enmap/reflectance"]["attributes"].pop("grid_mapping")
    meta["enmap/reflectance"]["chunk_grid"]["configuration"]["chunk_shape"] = [1, 32, 16, 16]
    meta["hls"]["attributes"]["proj:code"] = "EPSG:32632"
    meta["hls"]["attributes"].pop("proj:wkt2")
    root["attributes"]["hyperkd:scenes"].reverse()
    root_path.write_text(json.dumps(root))
    problems = verify_cube(url)
    text = "\n".join(problems)
    assert "lacks grid_mapping" in text
    assert "band chunk 32 does not hold all bands" in text
    assert "hls: CF spatial_ref CRS differs" in text
    assert "do not match the scene_id axis" in text
    assert len(problems) >= 4
    assert verify_cube(str(tmp_path / "nothing.zarr")) == [
        f"no readable root zarr.json at {tmp_path / 'nothing.zarr'}"
    ]


def test_second_writer_waits_then_fails_clearly(tmp_path):
    url = str(tmp_path / "cube.zarr")
    _new_cube(url, scenes=(0,))
    with (
        CubeWriter(url),
        pytest.raises(CubeLockedError, match=r"being written by .*waited 0 s"),
        CubeWriter(url, lock_timeout_s=0.3),
    ):
        pass
    assert not (tmp_path / "cube.zarr" / LOCK_KEY).exists()


def test_lock_of_a_killed_writer_is_taken_over(tmp_path):
    url = str(tmp_path / "cube.zarr")
    _new_cube(url, scenes=(0,))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    import socket

    lock = {"host": socket.gethostname(), "pid": int(dead.stdout), "token": "x", "refreshed_at": 0}
    (tmp_path / "cube.zarr" / LOCK_KEY).write_text(json.dumps(lock))
    with CubeWriter(url, lock_timeout_s=1) as w:
        w.append(_enmap(1))
    assert verify_cube(url) == []


def test_not_a_cube_is_refused(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "precious.txt").write_text("keep")
    with CubeWriter(str(target)) as w, pytest.raises(ValueError, match="not a hyperkd cube"):
        w.create(CubeLayout(GRID, load_band_table(), tile_size=TILE))
    assert (target / "precious.txt").read_text() == "keep"
    assert sorted(os.listdir(target)) == ["precious.txt"]


def test_cube_on_s3(s3_server, s3_bucket):
    url = f"{s3_bucket}/cube.zarr"
    scenes = _new_cube(url, s3_server, scenes=(0, 1))
    assert verify_cube(url, s3_server) == []
    ds = open_cube(url, s3_server)["enmap"].to_dataset()
    assert list(ds.scene_id.values) == ["E0", "E1"]
    raw = ds.reflectance[1].values / 1e-4
    np.testing.assert_allclose(raw, scenes[1].reflectance, atol=1e-6)
    with (
        CubeWriter(url, s3_server),
        pytest.raises(CubeLockedError),
        CubeWriter(url, s3_server, lock_timeout_s=0.2),
    ):
        pass
