"""Backfills and reprocessing: any scene finds its place on the sorted time axis, a newer
processor version replaces its predecessor, concurrent ingests equal serial ones, and kill -9
anywhere in an insert or a replacement leaves a sound cube that the next run completes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from hyperkd.cli import main
from hyperkd.pipeline.cube import verify_cube
from hyperkd.pipeline.synthetic.factory import RegionSpec
from hyperkd.pipeline.synthetic.products import write_region

EARLY = ("2024-06-01", "2024-06-30")  # EnMAP scene 0 and its two HLS scenes
LATE = ("2024-07-01", "2024-08-30")  # scenes 1 and 2
ALL = ("2024-06-01", "2024-08-30")


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three EnMAP datatakes (+ L30, S30 each), processed as v01.03.02 and as v01.04.02."""
    base = tmp_path_factory.mktemp("backfill")
    out = {}
    for name, version in (("v1", "01.03.02"), ("v2", "01.04.02")):
        write_region(base / name, RegionSpec(size_px=16, n_scenes=3, processor_version=version))
        out[name] = base / name / "catalog.json"
    return out


def _cmd(catalog: Path, out: Path, dates: tuple[str, str]) -> list[str]:
    return [sys.executable, "-m", "hyperkd", "ingest", "--source", str(catalog),
            "--region", "demo", "--start", dates[0], "--end", dates[1], "--out", str(out),
            "--tile-size", "8", "--lock-timeout", "240"]  # fmt: skip


def _ingest(catalog: Path, out: Path, dates: tuple[str, str]) -> str:
    """An uninterrupted ingest, in this process (the kill tests use subprocesses)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(_cmd(catalog, out, dates)[3:])
    assert rc == 0, printed.getvalue()[-2000:]
    return printed.getvalue()


def _content(out: Path) -> dict[str, Any]:
    """Everything a reader can see, minus the ingest timestamps: arrays and scene records."""
    root = json.loads((out / "zarr.json").read_text())["attributes"]
    assert "hyperkd:pending" not in root
    records = [
        {k: v for k, v in r.items() if k != "ingested_at"}
        | {
            "replaces": [
                {k: v for k, v in p.items() if k != "ingested_at"} for p in r.get("replaces", [])
            ]
        }
        for r in root["hyperkd:scenes"]
    ]
    seen: dict[str, Any] = {"records": sorted(records, key=lambda r: (r["group"], r["datetime"]))}
    for group in ("enmap", "hls"):
        ds = xr.open_zarr(str(out), group=group, mask_and_scale=False)
        for name in ("scene_id", "time", "reflectance", "valid", "paired_enmap", "sensor"):
            if name in ds:
                seen[f"{group}/{name}"] = ds[name].values
    return seen


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    assert a["records"] == b["records"]
    for key in a:
        if key != "records":
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _ids(out: Path, group: str) -> list[str]:
    return [str(s) for s in xr.open_zarr(str(out), group=group).scene_id.values]


@pytest.fixture(scope="module")
def reference(regions: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole period in one uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "cube.zarr"
    _ingest(regions["v1"], out, ALL)
    return out


@pytest.fixture(scope="module")
def late_cube(regions: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cube holding only the later period: the starting point of every backfill."""
    out = tmp_path_factory.mktemp("late") / "cube.zarr"
    _ingest(regions["v1"], out, LATE)
    return out


def test_a_backfill_lands_in_time_order_and_equals_one_run(
    regions, reference, late_cube, tmp_path
) -> None:
    out = tmp_path / "cube.zarr"
    shutil.copytree(late_cube, out)
    printed = _ingest(regions["v1"], out, EARLY)
    assert "3 written" in printed
    assert verify_cube(str(out)) == []
    ds = xr.open_zarr(str(out), group="enmap")
    assert np.all(np.diff(ds.time.values) > np.timedelta64(0))
    _assert_same(_content(out), _content(reference))
    # Re-running either period changes nothing.
    assert "0 written" in _ingest(regions["v1"], out, ALL)


def _kill(cmd: list[str], stage: str, tmp_path: Path) -> None:
    marker = tmp_path / f"paused-{stage.replace(':', '-')}"
    env = dict(os.environ, HYPERKD_TEST_PAUSE_AT=stage, HYPERKD_TEST_PAUSE_FILE=str(marker))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"writer never reached {stage}: {proc.communicate()[1][-2000:]!r}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    marker.unlink()


def test_kill_mid_backfill_leaves_a_sound_prefix_and_resumes(
    regions, reference, late_cube, tmp_path
) -> None:
    """Killed between two slot copies: readers see a sorted prefix; the next run finishes."""
    out = tmp_path / "cube.zarr"
    shutil.copytree(late_cube, out)
    _kill(_cmd(regions["v1"], out, EARLY), "edit-copy:1", tmp_path)
    assert verify_cube(str(out)) == []
    root = json.loads((out / "zarr.json").read_text())["attributes"]
    assert root["hyperkd:pending"]["group"] == "enmap"
    assert _ids(out, "enmap") == []  # the insert goes first: every slot hidden while they move
    _ingest(regions["v1"], out, EARLY)
    assert verify_cube(str(out)) == []
    _assert_same(_content(out), _content(reference))


@pytest.fixture(scope="module")
def replaced(regions, reference, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference cube after an uninterrupted ingest of the reprocessed (v01.04.02) region."""
    out = tmp_path_factory.mktemp("replaced") / "cube.zarr"
    shutil.copytree(reference, out)
    printed = _ingest(regions["v2"], out, ALL)
    assert "3 written" in printed  # the EnMAP scenes; the HLS granules are the same
    return out


def test_a_reprocessed_product_replaces_its_predecessor(
    regions, reference, replaced, tmp_path
) -> None:
    old, new = _ids(reference, "enmap"), _ids(replaced, "enmap")
    assert all("_V010402_" in i for i in new) and len(new) == 3
    assert [i.split("_V")[0] for i in old] == [i.split("_V")[0] for i in new]  # same slots
    assert verify_cube(str(replaced)) == []
    root = json.loads((replaced / "zarr.json").read_text())["attributes"]["hyperkd:scenes"]
    enmap = [r for r in root if r["group"] == "enmap"]
    assert [r["replaces"][0]["id"] for r in enmap] == old  # the old ids stay in provenance
    assert [r["replaces"][0]["processing_version"] for r in enmap] == ["01.03.02"] * 3
    pairs = set(xr.open_zarr(str(replaced), group="hls").paired_enmap.values)
    assert pairs == set(new)  # HLS scenes follow their replaced EnMAP pair
    # An older version never replaces a newer one, and nothing changes.
    out = tmp_path / "cube.zarr"
    shutil.copytree(replaced, out)
    assert "0 written" in _ingest(regions["v1"], out, ALL)
    _assert_same(_content(out), _content(replaced))


@pytest.mark.parametrize(
    "stage",
    [
        "edit-copy:0",  # the first replacement's slot copied, not yet committed
        pytest.param("after-commit:0", marks=pytest.mark.slow),  # just after the hiding commit
    ],
)
def test_kill_mid_replacement_resumes_to_the_same_cube(
    regions, reference, replaced, stage, tmp_path
) -> None:
    out = tmp_path / "cube.zarr"
    shutil.copytree(reference, out)
    _kill(_cmd(regions["v2"], out, ALL), stage, tmp_path)
    assert verify_cube(str(out)) == []  # HLS pairs of the hidden EnMAP scene included
    assert "hyperkd:pending" in json.loads((out / "zarr.json").read_text())["attributes"]
    _ingest(regions["v2"], out, ALL)
    assert verify_cube(str(out)) == []
    _assert_same(_content(out), _content(replaced))


@pytest.mark.slow
def test_concurrent_ingests_of_two_periods_equal_the_serial_cube(
    regions, reference, tmp_path
) -> None:
    out = tmp_path / "cube.zarr"
    # Both start at once; the later period usually takes the lock first, so the early one
    # becomes a backfill. Either way the cube must equal the serial (one-run) result.
    procs = [
        subprocess.Popen(
            _cmd(regions["v1"], out, dates),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for dates in (LATE, EARLY)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert verify_cube(str(out)) == []
    _assert_same(_content(out), _content(reference))


def _start_and_kill(cmd: list[str], out: Path, rng: random.Random, tmp_path: Path) -> bool:
    """Run ``cmd`` and SIGKILL it at a random point: at a random pause stage (a slot copy, a
    commit, a scene's chunks; 5 in 7), else at a random moment after it took the lock.
    Returns False when the run finished first."""
    stage = rng.choice([
        f"edit-copy:{rng.randrange(4)}", f"edit-copy:{rng.randrange(4)}",
        f"before-commit:{rng.randrange(4)}", f"after-commit:{rng.randrange(4)}",
        f"scene-chunks:{rng.randrange(2)}", "", "",
    ])  # fmt: skip
    marker = tmp_path / "paused"
    marker.unlink(missing_ok=True)
    env = dict(os.environ, HYPERKD_TEST_PAUSE_AT=stage, HYPERKD_TEST_PAUSE_FILE=str(marker))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = out / ".hyperkd.lock"
    if stage:
        while proc.poll() is None and not marker.exists():
            time.sleep(0.01)
    else:
        while proc.poll() is None and f":{proc.pid}" not in (
            lock.read_text() if lock.exists() else ""
        ):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 3.0))
    if proc.poll() is not None:
        assert proc.returncode == 0, proc.communicate()[1][-2000:]
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return True


@pytest.mark.slow
def test_ten_random_kills_during_backfills(regions, reference, late_cube, tmp_path) -> None:
    """SIGKILL at 10 random points of backfills: never a corrupt cube, and every finished
    cube equals the uninterrupted run."""
    rng = random.Random(17)
    out = tmp_path / "cube.zarr"
    shutil.copytree(late_cube, out)
    cmd = _cmd(regions["v1"], out, EARLY)
    kills = completed = mid_edit = 0
    while kills < 10:
        if _start_and_kill(cmd, out, rng, tmp_path):
            kills += 1
            assert verify_cube(str(out)) == [], f"corrupt after kill {kills}"
            root = json.loads((out / "zarr.json").read_text())["attributes"]
            mid_edit += "hyperkd:pending" in root  # killed between hiding and showing slots
        else:
            completed += 1
            _assert_same(_content(out), _content(reference))
            shutil.rmtree(out)
            shutil.copytree(late_cube, out)  # start the backfill over
    _ingest(regions["v1"], out, EARLY)
    assert verify_cube(str(out)) == []
    _assert_same(_content(out), _content(reference))
    print(f"{kills} kills ({mid_edit} left an edit pending), {completed} runs finished first")
    assert mid_edit >= 1  # the slot-moving path was really interrupted
