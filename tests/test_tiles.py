"""The tile store: contract (verify_tiles), leak-free splits, labels across CRSs, statistics,
crash safety and idempotence."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from tile_helpers import CRS, RES, X0, Y0, make_scene

from hyperkd.pipeline.tiles.build import TileConfig, verify_tiles, write_tile_store
from hyperkd.pipeline.tiles.index import block_splits, drop_leaks, leaking_pairs, tile_origins

CFG = TileConfig(tile_size=32, patch_size=8, split_block_px=64)
H, W = 160, 192


def _scenes() -> list:
    return [
        make_scene(H, W, patch=8, seed=0, invalid_box=(0, 40, 0, 60)),
        make_scene(H, W, patch=8, seed=1, scene_id="ENMAP_TEST_1", time="2022-08-01"),
    ]


def _quadrant_raster(path: Path, crs: str, res: float, dtype: str) -> None:
    """A label raster in ``crs`` whose value is the cube-grid quadrant of each pixel centre:
    1 + (east of the cube's middle) + 2 * (north of the middle)."""
    xm, ym = X0 + RES * W / 2, Y0 - RES * H / 2
    (lon0, lon1), (lat0, lat1) = warp_transform(
        CRS, crs, [X0 - 300, X0 + RES * W + 300], [Y0 + 300, Y0 - RES * H - 300]
    )
    left, right, top, bottom = min(lon0, lon1), max(lon0, lon1), max(lat0, lat1), min(lat0, lat1)
    width, height = int((right - left) / res), int((top - bottom) / res)
    transform = from_origin(left, top, res, res)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xs, ys = transform @ (cols.ravel(), rows.ravel())
    ex, ny = warp_transform(crs, CRS, xs, ys)
    quad = 1 + (np.asarray(ex) > xm) + 2 * (np.asarray(ny) > ym)
    data = quad.reshape(height, width).astype(dtype)
    if np.issubdtype(np.dtype(dtype), np.floating):
        data = data * 1.25  # not integral: a continuous variable
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype=dtype,
        crs=crs,
        transform=transform,
    ) as dst:
        dst.write(data, 1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list]:
    tmp = tmp_path_factory.mktemp("tiles")
    raster = tmp / "landcover_wgs84.tif"
    _quadrant_raster(raster, "EPSG:4326", 0.00005, "uint8")
    out = str(tmp / "tiles.zarr")
    scenes = _scenes()
    summary = write_tile_store(
        scenes, out, CFG, labels={"landcover": str(raster)}, source_cubes=["s3://k:s@b/c.zarr"]
    )
    assert summary.n_tiles > 0 and not summary.skipped
    return out, scenes


def test_store_meets_the_contract(store: tuple[str, list]) -> None:
    out, _ = store
    assert verify_tiles(out) == []
    root = zarr.open_group(out, mode="r")
    n = root["student"].shape[0]
    assert (
        root["student"].shape == (n, 7, 32, 32) and root["student"].dtype == np.int16
    )  # bad band left out
    assert root["student"].chunks == (1, 7, 32, 32)
    (codec,) = root["student"].compressors  # docs/tiles.md: Blosc LZ4 with byte shuffle
    assert (codec.cname.value, codec.shuffle.value, codec.typesize) == ("lz4", "shuffle", 2)
    assert root["significance_gabor"].shape == (n, 4, 4)
    assert root["label_landcover"].dtype == np.int16
    attrs = dict(root.attrs)
    assert attrs["source_cubes"] == ["s3://b/c.zarr"]  # credentials never reach attributes
    assert sum(attrs["splits"].values()) == n and attrs["dropped"]["invalid"] >= 2
    assert attrs["teacher_preset"] == "prithvi-eo-1.0-100m" and len(attrs["teacher_mean"]) == 6


def test_store_opens_with_plain_xarray_without_warnings(store: tuple[str, list]) -> None:
    """Named dims and consolidated metadata: ``xr.open_zarr`` needs nothing else."""
    import json
    import warnings

    import pyproj
    import xarray as xr

    from hyperkd.pipeline.tiles.schema import TILE_ARRAYS

    out, _ = store
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(out)
        index = xr.open_zarr(out, group="index")
    for a in TILE_ARRAYS:
        assert ds[a.name].dims == a.dims
    assert ds["label_landcover"].dims == ("tile", "y", "x")
    assert index["split"].dims == ("tile",) and index.sizes["tile"] == ds.sizes["tile"]
    raw = xr.open_zarr(out, mask_and_scale=False)
    np.testing.assert_array_equal(raw["student"][0].values, zarr.open_group(out)["student"][0])
    root = json.loads((Path(out) / "zarr.json").read_text())
    assert {"student", "index", "index/split"} <= set(root["consolidated_metadata"]["metadata"])
    crs = ds.attrs["crs"]
    assert crs.startswith("PROJCRS") and pyproj.CRS.from_wkt(crs).to_epsg() == 32633  # WKT2


def test_tiles_hold_the_scene_pixels(store: tuple[str, list]) -> None:
    out, scenes = store
    root = zarr.open_group(out, mode="r")
    scene_ids = np.array(root["index/scene"][:].tolist())
    y0s, x0s = root["index/y0"][:], root["index/x0"][:]
    for t in (0, len(y0s) // 2, len(y0s) - 1):
        s = next(s for s in scenes if str(s.scene_id.item()) == scene_ids[t])
        y, x = int(y0s[t]), int(x0s[t])
        ref = s.reflectance.values[s.valid_band.values][:, y : y + 32, x : x + 32]
        np.testing.assert_array_equal(root["student"][t], ref)
        np.testing.assert_array_equal(
            root["teacher"][t], s.teacher_bands.values[:, y : y + 32, x : x + 32]
        )
        np.testing.assert_array_equal(
            root["significance_wavelet"][t],
            s.significance_wavelet.values[y // 8 : y // 8 + 4, x // 8 : x // 8 + 4],
        )


def test_student_statistics_match_numpy_over_train_tiles(store: tuple[str, list]) -> None:
    out, _ = store
    root = zarr.open_group(out, mode="r")
    train = np.flatnonzero(np.array(root["index/split"][:].tolist()) == "train")
    student, valid = root["student"][:][train], root["valid"][:][train]
    pixels = student.transpose(1, 0, 2, 3)[:, valid].astype(np.float64)
    np.testing.assert_allclose(root.attrs["student_mean"], pixels.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(root.attrs["student_std"], pixels.std(axis=1), rtol=1e-8)


def test_splits_do_not_leak(store: tuple[str, list]) -> None:
    out, _ = store
    root = zarr.open_group(out, mode="r")
    split = np.array(root["index/split"][:].tolist())
    assert set(split) == {"train", "val", "test"}
    y0, x0 = root["index/y0"][:].astype(np.int64), root["index/x0"][:].astype(np.int64)
    for a in range(len(split)):
        for b in range(len(split)):
            if split[a] != split[b]:  # tiles of different splits neither overlap nor touch
                assert abs(y0[a] - y0[b]) > 32 or abs(x0[a] - x0[b]) > 32


def test_overlapping_stride_drops_the_tiles_that_would_leak() -> None:
    origins = tile_origins(256, 256, 32, 16)
    splits = block_splits(origins, 64, (0.5, 0.25, 0.25), seed=3)
    assert leaking_pairs(origins, splits, 32)  # adjacent blocks do leak before the guard
    keep = drop_leaks(origins, splits, 32)
    assert leaking_pairs(origins[keep], splits[keep], 32) == []
    assert {"train", "val", "test"} <= set(splits[keep])


def test_train_stride_adds_overlapping_train_tiles_and_keeps_val_and_test(
    store: tuple[str, list], tmp_path: Path
) -> None:
    out, scenes = store
    fine = str(tmp_path / "fine.zarr")
    cfg = TileConfig(tile_size=32, patch_size=8, split_block_px=64, train_stride=16)
    write_tile_store(scenes, fine, cfg)
    assert verify_tiles(fine) == []

    def places(url: str) -> dict[str, set[tuple[int, int, int]]]:
        index = zarr.open_group(url, mode="r")["index"]
        columns = ("split", "scene", "y0", "x0")
        rows = zip(*(index[c][:].tolist() for c in columns), strict=True)
        out: dict[str, set] = {}
        for split, scene, y0, x0 in rows:
            out.setdefault(split, set()).add((scene, int(y0), int(x0)))
        return out

    plain, overlapping = places(out), places(fine)
    assert overlapping["val"] == plain["val"] and overlapping["test"] == plain["test"]
    assert overlapping["train"] > plain["train"]  # a strict superset
    assert any(y0 % 32 or x0 % 32 for _, y0, x0 in overlapping["train"])
    assert zarr.open_group(fine, mode="r").attrs["train_stride"] == 16
    with pytest.raises(ValueError, match="train stride 24"):
        TileConfig(tile_size=32, patch_size=8, train_stride=24)


def test_verify_catches_a_train_tile_off_its_grid(tmp_path: Path) -> None:
    fine = str(tmp_path / "fine.zarr")
    cfg = TileConfig(tile_size=32, patch_size=8, split_block_px=64, train_stride=16)
    write_tile_store(_scenes(), fine, cfg)
    root = zarr.open_group(fine, mode="r+")
    root.attrs["train_stride"] = 32  # claims the plain grid: the overlapping tiles are off it
    assert any("stride-32 grid" in p for p in verify_tiles(fine))


def test_verify_catches_a_leaking_split(store: tuple[str, list], tmp_path: Path) -> None:
    import shutil

    out, _ = store
    copy = tmp_path / "tampered.zarr"
    shutil.copytree(out, copy)
    root = zarr.open_group(str(copy), mode="r+")
    split = np.array(root["index/split"][:].tolist())
    y0, x0 = root["index/y0"][:], root["index/x0"][:]
    test = np.flatnonzero(split == "test")[0]
    beside = (np.abs(y0 - y0[test]) + np.abs(x0 - x0[test]) == 32) & (split == "test")
    assert beside.any()
    place = np.flatnonzero(beside)[0]
    split[(y0 == y0[place]) & (x0 == x0[place])] = "train"  # one place, every scene
    root["index/split"][:] = split
    problems = verify_tiles(str(copy))
    assert any("touch" in p for p in problems) and any("split counts" in p for p in problems)


def test_labels_from_another_crs_land_on_the_right_pixels(
    store: tuple[str, list], tmp_path: Path
) -> None:
    out, _ = store
    root = zarr.open_group(out, mode="r")
    rows, cols = np.mgrid[0:32, 0:32]
    for t in range(root["student"].shape[0]):
        y, x = int(root["index/y0"][t]), int(root["index/x0"][t])
        expected = 1 + (cols + x >= W // 2) + 2 * (rows + y < H // 2)
        np.testing.assert_array_equal(root["label_landcover"][t], expected)
    assert root.attrs["labels"]["landcover"]["kind"] == "classes"

    soc = tmp_path / "soc_utm32.tif"
    _quadrant_raster(soc, "EPSG:32632", 5.0, "float32")
    out2 = str(tmp_path / "soc.zarr")
    write_tile_store(_scenes()[:1], out2, CFG, labels={"soc": str(soc)})
    root2 = zarr.open_group(out2, mode="r")
    assert (
        root2.attrs["labels"]["soc"]["kind"] == "continuous"
        and root2["label_soc"].dtype == np.float32
    )
    y, x = int(root2["index/y0"][0]), int(root2["index/x0"][0])
    expected = 1.25 * (1 + (cols + x >= W // 2) + 2 * (rows + y < H // 2))
    np.testing.assert_allclose(root2["label_soc"][0], expected)
    assert verify_tiles(out2) == []


def test_rerun_is_a_noop_and_changed_params_rebuild(store: tuple[str, list]) -> None:
    out, scenes = store
    stamp = os.stat(Path(out) / "zarr.json").st_mtime_ns
    again = write_tile_store(
        scenes,
        out,
        CFG,
        labels={"landcover": dict(zarr.open_group(out).attrs)["labels"]["landcover"]["source"]},
    )
    assert again.skipped and os.stat(Path(out) / "zarr.json").st_mtime_ns == stamp


def test_killed_build_leaves_the_old_store_and_no_partial(tmp_path: Path) -> None:
    out = tmp_path / "t.zarr"
    scenes = _scenes()[:1]
    write_tile_store(scenes, str(out), CFG)

    def die(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_tile_store(
            scenes,
            str(out),
            TileConfig(tile_size=32, patch_size=8, split_block_px=96),
            progress=die,
        )
    assert verify_tiles(str(out)) == []
    assert zarr.open_group(str(out)).attrs["split_block_px"] == 64
    assert [p.name for p in tmp_path.iterdir()] == ["t.zarr"]
    with pytest.raises(KeyboardInterrupt):
        write_tile_store(scenes, str(tmp_path / "new.zarr"), CFG, progress=die)
    assert not (tmp_path / "new.zarr").exists()
    assert verify_tiles(str(tmp_path / "new.zarr"))  # nothing there is a problem, not a store


def test_next_build_removes_what_a_killed_build_left(tmp_path: Path) -> None:
    out = tmp_path / "t.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    killed = tmp_path / f"t.zarr.partial-{host}-{dead.pid}-0badc0de"
    running = tmp_path / f"t.zarr.partial-{host}-{os.getpid()}-0badc0de"
    elsewhere = tmp_path / f"t.zarr.partial-another-host-{dead.pid}-0badc0de"
    old_style = tmp_path / "t.zarr.partial-0badc0de"
    for leftover in (killed, running, elsewhere, old_style):
        (leftover / "student").mkdir(parents=True)
    write_tile_store(_scenes()[:1], str(out), CFG)
    assert verify_tiles(str(out)) == []
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["t.zarr", running.name, elsewhere.name, old_style.name])


def test_sharded_store_verifies(tmp_path: Path) -> None:
    out = str(tmp_path / "sharded.zarr")
    summary = write_tile_store(
        _scenes(), out, TileConfig(tile_size=32, patch_size=8, split_block_px=64, shard=4)
    )
    root = zarr.open_group(out, mode="r")
    assert root["student"].shards == (4, 7, 32, 32) and root["student"].chunks == (1, 7, 32, 32)
    assert verify_tiles(out) == [] and summary.n_tiles == root["student"].shape[0]


def test_bad_input_fails_with_one_clear_line(tmp_path: Path) -> None:
    scene = _scenes()[0]
    with pytest.raises(ValueError, match="missing teacher_bands"):
        write_tile_store([scene.drop_vars("teacher_bands")], str(tmp_path / "a.zarr"), CFG)
    with pytest.raises(ValueError, match="significance_gabor is"):
        write_tile_store([scene], str(tmp_path / "b.zarr"), TileConfig(tile_size=32, patch_size=16))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        TileConfig(tile_size=30, patch_size=8)
    with pytest.raises(ValueError, match="valid fraction"):
        write_tile_store(
            [scene],
            str(tmp_path / "c.zarr"),
            TileConfig(tile_size=32, patch_size=8, min_valid=1.01),
        )
    assert not any(tmp_path.iterdir())


def test_demo_cube_to_tile_store_via_the_cli(tmp_path: Path) -> None:
    """Scene factory -> cube -> ``hyperkd tiles`` (teacher bands and maps computed on the way,
    the cube left byte-identical) -> verify_tiles."""
    from tile_helpers import factory_cube

    from hyperkd.cli import main
    from hyperkd.pipeline.features.aggregate import teacher_bands
    from hyperkd.pipeline.features.preprocess import open_enmap
    from hyperkd.pipeline.synthetic import RegionSpec, write_region

    spec = RegionSpec(size_px=128, n_scenes=2, seed=11, cloud_cover=0.2)
    truth = write_region(tmp_path / "region", spec).truth
    cube, out = str(tmp_path / "cube.zarr"), str(tmp_path / "tiles.zarr")
    factory_cube(cube, spec)
    argv = ["tiles", "--cube", cube, "--out", out, "--tile-size", "32", "--split-block", "32"]
    argv += [
        "--allow-empty-splits",  # 7 tiles: the val split comes out empty
        "--min-valid",
        "0.3",
        "--labels",
        f"landcover={truth['landcover']}",
        "--labels",
        f"soc={truth['soc']}",
    ]
    before = {f: f.read_bytes() for f in sorted(Path(cube).rglob("*")) if f.is_file()}
    assert main(argv) == 0
    assert verify_tiles(out) == []
    assert {f: f.read_bytes() for f in sorted(Path(cube).rglob("*")) if f.is_file()} == before
    enmap = open_enmap(cube)
    assert "teacher_bands" not in enmap  # readers never write
    assert zarr.open_group(out, mode="r").attrs["crs"] == enmap.attrs["proj:wkt2"]  # the cube's
    teacher = teacher_bands(enmap["reflectance"])
    root = zarr.open_group(out, mode="r")
    assert root["student"].shape[1:] == (218, 32, 32)
    with rasterio.open(truth["landcover"]) as src:
        landcover = src.read(1)
    t = int(np.argmax(np.array(root["index/split"][:].tolist()) == "train"))
    y, x = int(root["index/y0"][t]), int(root["index/x0"][t])
    np.testing.assert_array_equal(root["label_landcover"][t], landcover[y : y + 32, x : x + 32])
    scene = str(root["index/scene"][t])
    time_index = [str(s) for s in enmap.scene_id.values].index(scene)
    np.testing.assert_array_equal(
        root["teacher"][t], teacher[time_index, :, y : y + 32, x : x + 32].values
    )
    stamp = (Path(out) / "zarr.json").stat().st_mtime_ns
    assert main(argv) == 0  # second run: a no-op
    assert (Path(out) / "zarr.json").stat().st_mtime_ns == stamp
