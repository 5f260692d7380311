"""The cube's commit protocol under concurrency (docs/design/0001-cube-commit-protocol.md).

Two writer processes append scenes to one cube at the same time while this process keeps
reading it. Every scene's reflectance is a constant derived from its id, so a reader that saw
a half-written or misplaced scene would notice. Kill -9 at every stage of a write is covered by
tests/test_ingest_crash.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

from hyperkd.pipeline.cube import CubeLayout, CubeWriter, Grid, open_cube, verify_cube
from hyperkd.pipeline.sensors import enmap_table

GRID = Grid("EPSG:32633", (30.0, 0.0, 362175.0, 0.0, -30.0, 5809965.0), (24, 24))
PER_WRITER = 3

WRITER = r"""
import datetime as dt, sys, time
import numpy as np
from hyperkd.pipeline.cube import CubeWriter, SceneWrite
url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    value = (100 if name == "A" else 200) + i
    # Each append takes the lock on its own, so the two writers interleave.
    with CubeWriter(url, lock_timeout_s=120) as w:
        refl = np.full((224, 24, 24), value, np.int16)
        when = dt.datetime.now(dt.UTC)  # newer than anything committed: the lock is held
        record = {"collection": "ENMAP_HSI_L2A", "hrefs": {}, "processing_version": None,
                  "cloud_cover": None, "ingested_at": when.isoformat(), "code_version": "test",
                  "parameters": {}}
        w.append(SceneWrite("enmap", f"{name}{i}", when, refl, np.ones((24, 24), bool),
                            record=record))
    time.sleep(0.05)
"""


def _value_of(scene_id: str) -> int:
    return (100 if scene_id[0] == "A" else 200) + int(scene_id[1:])


def _check_snapshot(url: str, plain: bool = False) -> int:
    """Open the cube once as a reader would (``open_cube``, or plain ``xr.open_zarr``); every
    scene that view shows must be complete and in place."""
    if plain:
        enmap = xr.open_zarr(url, group="enmap", mask_and_scale=False)
        scale = 1.0
    else:
        enmap, scale = open_cube(url)["enmap"], 1e-4
    ids = [str(s) for s in enmap.scene_id.values]
    for t, sid in enumerate(ids):
        values = np.unique(np.rint(enmap.reflectance[t].values / scale))
        assert values.tolist() == [_value_of(sid)], (sid, values[:5])
    return len(ids)


def test_concurrent_writers_and_a_reader_see_only_whole_scenes(tmp_path: Path) -> None:
    url = str(tmp_path / "cube.zarr")
    with CubeWriter(url) as w:
        w.create(CubeLayout(GRID, enmap_table().bands, tile_size=16, region="race"))
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, name, str(PER_WRITER)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("A", "B")
    ]
    seen = set()
    deadline = time.monotonic() + 240
    while any(p.poll() is None for p in writers) and time.monotonic() < deadline:
        seen.add(_check_snapshot(url, plain=len(seen) % 2 == 1))
    errors = [p.communicate(timeout=60)[1] for p in writers]
    assert [p.returncode for p in writers] == [0, 0], errors
    assert _check_snapshot(url) == _check_snapshot(url, plain=True) == 2 * PER_WRITER
    assert len(seen) >= 2  # the reader really ran while scenes were being committed
    assert verify_cube(url) == []
    ids = [str(s) for s in open_cube(url)["enmap"].scene_id.values]
    assert sorted(ids) == sorted(
        [f"A{i}" for i in range(PER_WRITER)] + [f"B{i}" for i in range(PER_WRITER)]
    )
    times = open_cube(url)["enmap"].time.values
    assert (np.diff(times) > np.timedelta64(0)).all()  # the time axis only grew forward
