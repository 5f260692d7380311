"""The 1-D per-scene arrays (``time``, ``scene_id``, ``sensor``, ``paired_enmap``) are one chunk
each, stay one chunk through appends and backfills, and keep the committed values when a
writer dies mid-append. Cubes written with one scene per chunk stay readable and appendable."""

from __future__ import annotations

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
    open_cube,
    schema,
    verify_cube,
)
from hyperkd.pipeline.sensors import enmap_table, hls_sensor

GRID = Grid("EPSG:32633", (30.0, 0.0, 362175.0, 0.0, -30.0, 5809965.0), (32, 32))
RECORD = {
    "collection": "ENMAP_HSI_L2A",
    "hrefs": {"image": "https://example.org/s.tif"},
    "processing_version": "01.04.02",
    "cloud_cover": 1.0,
    "ingested_at": "2024-01-01T00:00:00Z",
    "code_version": "test",
    "parameters": {},
}
PER_SCENE = ("enmap/time", "enmap/scene_id", "hls/time", "hls/scene_id", "hls/sensor",
             "hls/paired_enmap")  # fmt: skip


def _enmap(day: int) -> SceneWrite:
    rng = np.random.default_rng(day)
    bands = enmap_table().bands
    refl = (300 + rng.integers(0, 4000, size=(len(bands), *GRID.shape))).astype(np.int16)
    when = dt.datetime(2022, 7, day, 10, 45, tzinfo=dt.UTC)
    return SceneWrite("enmap", f"E{day:02d}", when, refl, np.ones(GRID.shape, bool), record=RECORD)


def _hls(day: int, pair: int | None = None) -> SceneWrite:
    refl = np.full((len(hls_sensor().band_names), *GRID.shape), 500 + day, np.int16)
    when = dt.datetime(2022, 7, day, 10, 0, tzinfo=dt.UTC)
    labels = {"sensor": "S30", "paired_enmap": f"E{pair or day:02d}"}
    record = RECORD | {"collection": "HLSS30_2.0"} | labels
    return SceneWrite("hls", f"H{day:02d}", when, refl, np.ones(GRID.shape, bool), labels, record)


def _build(url: str, days: list[int]) -> None:
    with CubeWriter(url) as w:
        w.create(CubeLayout(GRID, enmap_table().bands, 16, region="coords"))
        for day in days:
            w.append(_enmap(day))
            w.append(_hls(day))


def _chunk_files(url: str, path: str) -> list[str]:
    return sorted(p.name for p in Path(url, path, "c").iterdir() if ".partial" not in p.name)


def _whole_chunk(url: str, path: str) -> np.ndarray:
    """All :data:`COORD_CHUNK` values of the array's first chunk, beyond its shape too."""
    from zarr.core.array import Array, AsyncArray
    from zarr.core.metadata.v3 import ArrayV3Metadata
    from zarr.storage import LocalStore, StorePath

    doc = json.loads(Path(url, path, "zarr.json").read_text()) | {"shape": [schema.COORD_CHUNK]}
    store = StorePath(LocalStore(url, read_only=True), path)
    return np.asarray(Array(AsyncArray(ArrayV3Metadata.from_dict(doc), store))[...])


def _assert_one_chunk(url: str, n: int, group: str = "") -> None:
    for path in (p for p in PER_SCENE if p.startswith(group)):
        array = zarr.open_array(store=url, path=path, mode="r")
        assert array.shape == (n,) and array.chunks == (schema.COORD_CHUNK,), path
        assert array.nchunks == 1 and _chunk_files(url, path) == ["0"], path


def test_per_scene_arrays_are_one_chunk_through_appends_and_backfills(tmp_path: Path) -> None:
    url = str(tmp_path / "cube.zarr")
    _build(url, [2, 4, 6])
    _assert_one_chunk(url, 3)
    with CubeWriter(url) as w:
        w.append(_enmap(8))  # newest: appended in place
        w.append(_hls(8))
        w.append(_enmap(1))  # a backfill: an edit of every later slot
        w.append(_hls(3, pair=1))
    _assert_one_chunk(url, 5)
    assert verify_cube(url) == []
    tree = open_cube(url)
    enmap, hls = tree["enmap"].ds, tree["hls"].ds
    assert list(enmap.scene_id.values) == ["E01", "E02", "E04", "E06", "E08"]
    assert list(hls.scene_id.values) == ["H02", "H03", "H04", "H06", "H08"]
    assert list(hls.paired_enmap.values) == ["E02", "E01", "E04", "E06", "E08"]
    assert list(hls.sensor.values) == ["S30"] * 5
    days = [int(str(t)[8:10]) for t in enmap.time.values]
    assert days == [1, 2, 4, 6, 8] and enmap.time.dtype == np.dtype("datetime64[ns]")
    np.testing.assert_allclose(
        enmap.reflectance[3].values, _enmap(6).reflectance * np.float32(1e-4), rtol=1e-6
    )
    # The backfill's staged slot, beyond the axis in the same chunk, was reset to fill.
    assert list(_whole_chunk(url, "enmap/scene_id")[:7]) == [*enmap.scene_id.values, "", ""]


def test_a_killed_append_keeps_the_committed_coordinates(tmp_path: Path) -> None:
    """The writer dies after rewriting the coordinate chunk but before the commit: readers
    see the old values; the next writer resets the uncommitted tail and appends normally."""
    url = str(tmp_path / "cube.zarr")
    _build(url, [2, 4, 6])
    before = open_cube(url)["enmap"].ds.load()
    with CubeWriter(url) as w:
        w._write_staged(_enmap(9), 3, 4)  # step 1 of an append, then no commit
    # The chunk holds the uncommitted value; the committed view does not show it.
    assert list(_whole_chunk(url, "enmap/scene_id")[:4]) == ["E02", "E04", "E06", "E09"]
    assert _whole_chunk(url, "enmap/time")[3] > 0
    after = open_cube(url)["enmap"].ds.load()
    assert list(after.scene_id.values) == list(before.scene_id.values)
    np.testing.assert_array_equal(after.time.values, before.time.values)
    assert verify_cube(url) == []
    with CubeWriter(url) as w:  # entering reconciles: the tail goes back to fill
        pass
    assert list(_whole_chunk(url, "enmap/scene_id")[:4]) == ["E02", "E04", "E06", ""]
    assert _whole_chunk(url, "enmap/time")[3] == 0
    with CubeWriter(url) as w:
        w.append(_enmap(7))
    assert list(open_cube(url)["enmap"].ds.scene_id.values) == ["E02", "E04", "E06", "E07"]
    _assert_one_chunk(url, 4, "enmap")


def test_a_cube_with_one_scene_per_coordinate_chunk_is_read_and_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "old.zarr")
    with monkeypatch.context() as m:  # as cubes were written before: COORD_CHUNK was 1
        m.setattr(schema, "COORD_CHUNK", 1)
        _build(url, [2, 4])
    assert zarr.open_array(store=url, path="enmap/time", mode="r").chunks == (1,)
    assert verify_cube(url) == []
    assert list(open_cube(url)["enmap"].ds.scene_id.values) == ["E02", "E04"]
    with CubeWriter(url) as w:  # this code appends in the cube's own chunking
        w.append(_enmap(6))
        w.append(_enmap(3))
        w.append(_hls(6))
    for path in PER_SCENE:
        assert zarr.open_array(store=url, path=path, mode="r").chunks == (1,), path
    assert _chunk_files(url, "enmap/time") == ["0", "1", "2", "3"]
    assert verify_cube(url) == []
    tree = open_cube(url)
    assert list(tree["enmap"].ds.scene_id.values) == ["E02", "E03", "E04", "E06"]
    assert list(tree["hls"].ds.paired_enmap.values) == ["E02", "E04", "E06"]
    days = [int(str(t)[8:10]) for t in tree["enmap"].ds.time.values]
    assert days == [2, 3, 4, 6]


def test_verify_names_a_per_scene_chunking_the_schema_does_not_allow(tmp_path: Path) -> None:
    url = str(tmp_path / "cube.zarr")
    _build(url, [2])
    root = json.loads(Path(url, "zarr.json").read_text())
    doc = root["consolidated_metadata"]["metadata"]["enmap/time"]
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [7]
    Path(url, "zarr.json").write_text(json.dumps(root))
    problems = verify_cube(url)
    assert f"enmap/time: time chunk is 7, expected {schema.COORD_CHUNK} or 1" in problems
