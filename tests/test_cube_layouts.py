"""Cubes of layout 1 (reflectance unsharded, all bands per chunk) stay readable, verifiable,
appendable and tileable by this code; layout 2 is what it writes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from hyperkd.pipeline.cube import (
    CubeLayout,
    CubeWriter,
    Grid,
    SceneWrite,
    io,
    open_cube,
    schema,
    verify_cube,
)
from hyperkd.pipeline.sensors import enmap_table

GRID = Grid("EPSG:32633", (30.0, 0.0, 362175.0, 0.0, -30.0, 5809965.0), (128, 128))
TILE = 32
RECORD = {
    "collection": "ENMAP_HSI_L2A",
    "hrefs": {},
    "processing_version": "01.04.02",
    "cloud_cover": 0.0,
    "ingested_at": "2024-01-01T00:00:00Z",
    "code_version": "test",
    "parameters": {},
}


def _scene(i: int) -> SceneWrite:
    rng = np.random.default_rng(i)
    bands = enmap_table().bands
    refl = (300 + rng.integers(0, 4000, size=(len(bands), *GRID.shape))).astype(np.int16)
    refl[~bands.valid] = bands.nodata
    when = dt.datetime(2022, 7, 1 + i, 10, 45, tzinfo=dt.UTC)
    return SceneWrite("enmap", f"E{i}", when, refl, np.ones(GRID.shape, bool), record=RECORD)


@pytest.fixture
def layout1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A cube as layout 1 wrote it: version 1, reflectance chunks (1, 224, T, T), zstd."""
    url = str(tmp_path / "v1.zarr")
    old = tuple(
        dataclasses.replace(a, chunks=("1", "*", "T", "T"), shards=None)
        if a.name == "reflectance"
        else a
        for a in schema.CUBE_ARRAYS
    )
    with monkeypatch.context() as m:
        m.setattr(schema, "CUBE_ARRAYS", old)
        m.setattr(io, "CUBE_VERSION", 1)
        with CubeWriter(url) as w:
            w.create(CubeLayout(GRID, enmap_table().bands, TILE, region="v1"))
            w.append(_scene(0))
    return url


def _reflectance_doc(url: str) -> dict:
    return json.loads((Path(url) / "enmap" / "reflectance" / "zarr.json").read_text())


def test_a_layout1_cube_is_read_verified_appended_and_tiled(layout1: str, tmp_path: Path) -> None:
    from hyperkd.pipeline.tiles.build import TileConfig, build_tiles, verify_tiles

    root = json.loads((Path(layout1) / "zarr.json").read_text())
    assert root["attributes"]["hyperkd:cube_version"] == 1
    assert _reflectance_doc(layout1)["chunk_grid"]["configuration"]["chunk_shape"] == [
        1,
        224,
        TILE,
        TILE,
    ]
    assert verify_cube(layout1) == []
    with CubeWriter(layout1) as w:  # this code appends to it, in its own layout
        w.append(_scene(1))
    assert verify_cube(layout1) == []
    doc = _reflectance_doc(layout1)
    assert not any(c["name"] == "sharding_indexed" for c in doc["codecs"])
    enmap = open_cube(layout1)["enmap"].ds
    assert enmap.reflectance.dtype == np.float32 and list(enmap.scene_id.values) == ["E0", "E1"]
    np.testing.assert_allclose(
        enmap.reflectance[1, 5].values, _scene(1).reflectance[5] * np.float32(1e-4), rtol=1e-6
    )
    out = str(tmp_path / "tiles.zarr")
    cfg = TileConfig(tile_size=32, patch_size=16, split_block_px=32, allow_empty_splits=True)
    build_tiles(layout1, out, cfg)
    assert verify_tiles(out) == []
    assert zarr.open_group(out, mode="r")["student"].shape[1:] == (218, 32, 32)


def test_layout2_shards_band_groups(tmp_path: Path) -> None:
    url = str(tmp_path / "v2.zarr")
    with CubeWriter(url) as w:
        w.create(CubeLayout(GRID, enmap_table().bands, TILE, region="v2"))
        w.append(_scene(0))
    doc = _reflectance_doc(url)
    assert doc["chunk_grid"]["configuration"]["chunk_shape"] == [1, 224, TILE, TILE]  # shard
    (sharding,) = [c for c in doc["codecs"] if c["name"] == "sharding_indexed"]
    assert sharding["configuration"]["chunk_shape"] == [1, 16, TILE, TILE]
    # One object per scene and tile: the whole spectrum of a tile is one read.
    shards = sorted(
        p.relative_to(url) for p in Path(url, "enmap/reflectance/c").rglob("*") if p.is_file()
    )
    assert len(shards) == (128 // TILE) ** 2
    assert verify_cube(url) == []
    # verify catches a band group that is not the schema's.
    sharding["configuration"]["chunk_shape"] = [1, 32, TILE, TILE]
    root = json.loads((Path(url) / "zarr.json").read_text())
    root["consolidated_metadata"]["metadata"]["enmap/reflectance"] = doc
    (Path(url) / "zarr.json").write_text(json.dumps(root))
    assert any("band group 32, expected 16" in p for p in verify_cube(url))


def test_layout1_maps_are_used_when_their_parameters_match(layout1: str, tmp_path: Path) -> None:
    """A layout 1 cube's one unkeyed map set (on ``py``/``px``) serves tiles of its patch size,
    read as stored (not recomputed), and the cube is left untouched."""
    import xarray as xr

    from hyperkd.pipeline.cube import write_variables
    from hyperkd.pipeline.features.preprocess import (
        PARAMS_ATTR,
        SCENES_ATTR,
        PreprocessConfig,
        open_enmap,
        products,
    )
    from hyperkd.pipeline.tiles.build import TileConfig, build_tiles, verify_tiles

    cfg = PreprocessConfig()
    enmap = open_enmap(layout1)
    teacher = products(enmap, cfg)["teacher_bands"]
    teacher = teacher.drop_vars([c for c in teacher.coords if c not in teacher.dims])
    g = 128 // 16
    maps = {
        name: xr.DataArray(
            np.full((1, g, g), 0.25, np.float32),
            dims=("time", "py", "px"),
            attrs={PARAMS_ATTR: cfg.significance_params(), SCENES_ATTR: ["E0"]},
        )
        for name in ("significance_gabor", "significance_wavelet")
    }
    teacher = teacher.assign_attrs({PARAMS_ATTR: cfg.aggregation_params(), SCENES_ATTR: ["E0"]})
    legacy = xr.Dataset({"teacher_bands": teacher, **maps})
    write_variables(layout1, "enmap", legacy)
    before = {p: p.read_bytes() for p in Path(layout1).rglob("*") if p.is_file()}
    out = str(tmp_path / "tiles.zarr")
    cfg_tiles = TileConfig(tile_size=32, patch_size=16, split_block_px=32, allow_empty_splits=True)
    build_tiles(layout1, out, cfg_tiles)
    assert verify_tiles(out) == []
    root = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(root["significance_gabor"][:], 0.25)  # the stored maps
    assert {p: p.read_bytes() for p in Path(layout1).rglob("*") if p.is_file()} == before
