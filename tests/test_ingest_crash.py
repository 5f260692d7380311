"""kill -9 at any stage of an ingest: the cube stays readable with only complete scenes, and the
next run finishes the job. The writer pauses at a named stage (``HYPERKD_TEST_PAUSE_AT``), the
test SIGKILLs it there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

from hyperkd.pipeline.cube import open_cube, verify_cube
from hyperkd.pipeline.sensors import enmap_table
from hyperkd.pipeline.synthetic.factory import RegionSpec
from hyperkd.pipeline.synthetic.products import write_region


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "region"
    write_region(root, RegionSpec(size_px=32, n_scenes=2))
    return root


def _cmd(demo: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "hyperkd", "ingest", "--source", str(demo / "catalog.json"),
            "--region", "demo", "--start", "2024-06-01", "--end", "2024-08-30",
            "--out", str(out), "--tile-size", "16"]  # fmt: skip


def _kill_at(demo: Path, out: Path, stage: str, tmp_path: Path) -> None:
    marker = tmp_path / f"paused-{stage.replace(':', '-')}"
    env = dict(os.environ, HYPERKD_TEST_PAUSE_AT=stage, HYPERKD_TEST_PAUSE_FILE=str(marker))
    proc = subprocess.Popen(
        _cmd(demo, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"writer never reached {stage}: {proc.communicate()[1][-2000:]!r}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _assert_complete(demo: Path, out: Path) -> int:
    """Every committed EnMAP scene equals its source COG; returns the number of scenes."""
    assert verify_cube(str(out)) == []
    ds = xr.open_zarr(str(out), group="enmap", mask_and_scale=False)
    valid = enmap_table().bands.valid
    for t, sid in enumerate(ds.scene_id.values):
        tif = next((demo / "ENMAP_HSI_L2A" / str(sid)).glob("*SPECTRAL_IMAGE_COG.TIF"))
        with rasterio.open(tif) as f:
            src = f.read()[np.argsort([float(f.tags(i + 1)["wavelength"]) for i in range(f.count)])]
        np.testing.assert_array_equal(ds.reflectance[t].values[valid], src[valid])
        assert ds.valid[t].values.any()
    tree = open_cube(str(out))
    return tree["enmap"].sizes["time"] + tree["hls"].sizes["time"]


def _committed_and_published(out: Path) -> tuple[set[str], set[str]]:
    """Scene ids in the root document, and scene items the cube's STAC collection links."""
    root = json.loads((out / "zarr.json").read_text())["attributes"]["hyperkd:scenes"]
    collection = json.loads((out / "collection.json").read_text())
    items = {ln["href"].rsplit("/", 1)[-1].removesuffix(".json") for ln in collection["links"]
             if ln["rel"] == "item"}  # fmt: skip
    assert all((out / "items" / f"{i}.json").is_file() for i in items)
    return {s["id"] for s in root}, items


@pytest.mark.parametrize(
    ("stage", "committed"),
    [
        ("before-commit:0", None),  # creating the cube, before its first root document
        ("scene-chunks:1", 1),  # half of the second EnMAP scene's chunks written
        ("before-commit:2", 1),  # all of its chunks written, root not yet replaced
        ("after-commit:2", 2),  # root replaced, arrays' own zarr.json not yet updated
    ],
)
def test_kill_and_resume(demo, tmp_path, stage, committed):
    out = tmp_path / "cube.zarr"
    _kill_at(demo, out, stage, tmp_path)
    if committed is None:
        assert not (out / "zarr.json").exists()
    else:
        assert _assert_complete(demo, out) == committed
        scenes, published = _committed_and_published(out)
        assert published <= scenes  # the STAC records lag the commit, never lead it
    assert (out / ".hyperkd.lock").exists()  # the dead writer's lock is still there
    done = subprocess.run(_cmd(demo, out), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{6 - (committed or 0)} written, {committed or 0} skipped" in done.stdout
    assert _assert_complete(demo, out) == 6
    scenes, published = _committed_and_published(out)
    assert published == scenes and len(scenes) == 6
    assert not (out / ".hyperkd.lock").exists()
