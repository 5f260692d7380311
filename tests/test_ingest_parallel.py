"""Parallel ingest (pipeline/ingest/parallel.py): scenes loaded on local threads or on a
2-worker dask LocalCluster give the serial run's cube, byte for byte in every array.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hyperkd.pipeline.ingest.region import IngestConfig, IngestParams, ingest_region
from hyperkd.pipeline.stac.regions import parse_region
from hyperkd.pipeline.stac.search import SearchQuery


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hyperkd.pipeline.synthetic.factory import RegionSpec
    from hyperkd.pipeline.synthetic.products import write_region

    root = tmp_path_factory.mktemp("parallel-region")
    return write_region(root / "region", RegionSpec(size_px=64, seed=11, n_scenes=3)).catalog


def _config(catalog: Path, out: Path) -> IngestConfig:
    query = SearchQuery((str(catalog),), parse_region("demo"), dt.date(2024, 1, 1),
                        dt.date(2024, 12, 31))  # fmt: skip
    return IngestConfig(query, str(out), params=IngestParams(tile_size=32))


def _arrays(cube: Path) -> dict[str, np.ndarray]:
    import zarr

    root = zarr.open_group(str(cube), mode="r")
    return {
        f"{group}/{name}": np.asarray(arr[...])
        for group in ("enmap", "hls")
        for name, arr in root[group].arrays()
    }


def _records(cube: Path) -> list[dict]:
    import json

    scenes = json.loads((cube / "zarr.json").read_text())["attributes"]["hyperkd:scenes"]
    return [{k: v for k, v in s.items() if k != "ingested_at"} for s in scenes]


@pytest.fixture(scope="module")
def serial(catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "cube.zarr"
    summary = ingest_region(_config(catalog, out))
    assert summary.ok and len(summary.written) == 9  # 3 EnMAP + 3 L30 + 3 S30
    return out


@pytest.mark.parametrize("dask_address", [None, "local"], ids=["threads", "local-cluster"])
def test_parallel_ingest_equals_the_serial_cube(
    catalog: Path, serial: Path, tmp_path: Path, dask_address: str | None
) -> None:
    from hyperkd.pipeline.cube import verify_cube
    from hyperkd.pipeline.ingest.parallel import ingest_region_parallel

    out = tmp_path / "cube.zarr"
    seen: list[str] = []
    summary = ingest_region_parallel(
        _config(catalog, out), dask_address=dask_address, workers=2,
        progress=lambda o: seen.append(o.scene_id),
    )  # fmt: skip
    assert summary.ok and len(summary.written) == 9
    assert seen == [s["id"] for s in _records(serial)]  # written in the serial order
    assert verify_cube(str(out)) == []
    want, got = _arrays(serial), _arrays(out)
    assert sorted(got) == sorted(want)
    for name, values in want.items():
        assert got[name].dtype == values.dtype, name
        if values.dtype.kind in "OSUT":  # strings: compare values, not object pointers
            assert got[name].tolist() == values.tolist(), name
        else:
            assert got[name].tobytes() == values.tobytes(), name
    assert _records(out) == _records(serial)

    # A re-run loads nothing and skips every scene.
    again = ingest_region_parallel(_config(catalog, out), dask_address=None, workers=2)
    assert len(again.skipped) == 9 and not again.written


def test_a_failing_load_fails_its_scene_alone(catalog: Path, tmp_path: Path) -> None:
    import shutil

    from hyperkd.pipeline.ingest.parallel import ingest_region_parallel

    copy = tmp_path / "region"
    shutil.copytree(catalog.parent, copy)
    victim = sorted(copy.rglob("HLS.L30.*.B04.tif"))[1]
    victim.write_bytes(victim.read_bytes()[:1500])  # a truncated COG
    summary = ingest_region_parallel(
        _config(copy / "catalog.json", tmp_path / "cube.zarr"), workers=2
    )
    assert [o.scene_id for o in summary.failed] == [victim.name.rsplit(".", 2)[0]]
    assert len(summary.written) == 8
    # The later HLS scenes' chunks moved down over the failed scene's slot: the serial cube.
    serial = ingest_region(_config(copy / "catalog.json", tmp_path / "serial.zarr"))
    assert [o.status for o in serial.outcomes] == [o.status for o in summary.outcomes]
    _assert_equal(tmp_path / "serial.zarr", tmp_path / "cube.zarr")


def _assert_equal(want_cube: Path, got_cube: Path) -> None:
    want, got = _arrays(want_cube), _arrays(got_cube)
    assert sorted(got) == sorted(want)
    for name, values in want.items():
        if values.dtype.kind in "OSUT":
            assert got[name].tolist() == values.tolist(), name
        else:
            assert got[name].tobytes() == values.tobytes(), name
    assert _records(got_cube) == _records(want_cube)


def _ingest_argv(catalog: Path, out: Path) -> list[str]:
    return ["ingest", "--source", str(catalog), "--region", "demo", "--start", "2024-01-01",
            "--end", "2024-12-31", "--out", str(out), "--tile-size", "32"]  # fmt: skip


def test_cli_ingest_on_a_dask_cluster_equals_the_serial_cube(
    catalog: Path, serial: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from distributed import LocalCluster

    from hyperkd.cli import main

    out = tmp_path / "cube.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        argv = [*_ingest_argv(catalog, out), "--dask-address", cluster.scheduler_address]
        assert main(argv) == 0
    assert "summary: 9 written, 0 skipped" in capsys.readouterr().out
    _assert_equal(serial, out)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dask-address", "my-scheduler"], "dask address 'my-scheduler': expected tcp://"),
        (["--dask-address", "tcp://127.0.0.1:9"], "cannot reach dask scheduler tcp://127.0.0.1:9"),
        (["--workers", "0"], "--workers 0: must be at least 1"),
    ],
)
def test_cli_ingest_refuses_a_bad_dask_address_before_any_work(
    catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch,
    extra: list[str], message: str,
) -> None:  # fmt: skip
    from hyperkd.cli import main
    from hyperkd.pipeline.ingest import pool

    monkeypatch.setattr(pool, "CONNECT_TIMEOUT_S", 1.0)  # port 9 (discard) does not answer
    out = tmp_path / "cube.zarr"
    assert main([*_ingest_argv(catalog, out), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert captured.err.startswith("hyperkd ingest: error: ") and captured.out == ""
    assert not out.exists()


def test_pipeline_refuses_a_malformed_dask_address(capsys: pytest.CaptureFixture[str]) -> None:
    from hyperkd.cli import main

    argv = ["pipeline", "--source", "enmap-dlr", "--region", "demo", "--out", "/tmp/never",
            "--start", "2024-01-01", "--end", "2024-02-01", "--dask-address", "http://x"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dask address 'http://x': expected" in err, err


@pytest.mark.parametrize(
    "stage",
    [
        "before-commit:1",  # the first batch of worker-written scenes, before its commit
        pytest.param("scene-chunks:3", marks=pytest.mark.slow),  # a worker mid-write
    ],
)
def test_kill_9_during_a_parallel_ingest_then_resume(
    catalog: Path, serial: Path, tmp_path: Path, stage: str
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from hyperkd.pipeline.cube import verify_cube

    out, marker = tmp_path / "cube.zarr", tmp_path / "paused"
    argv = [sys.executable, "-m", "hyperkd", *_ingest_argv(catalog, out), "--workers", "2"]
    env = dict(os.environ, HYPERKD_TEST_PAUSE_AT=stage, HYPERKD_TEST_PAUSE_FILE=str(marker))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"ingest never reached {stage}: {proc.communicate()[1][-2000:]!r}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert verify_cube(str(out)) == []  # readable: only committed scenes, whole
    committed = len(_records(out))
    assert committed < 9
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{9 - committed} written, {committed} skipped" in done.stdout
    assert verify_cube(str(out)) == []
    _assert_equal(serial, out)


def test_backfills_in_a_parallel_run_give_the_serial_cube(
    catalog: Path, serial: Path, tmp_path: Path
) -> None:
    """The newest scenes first, then the whole season: the older scenes are backfills (loaded
    in parallel, placed by the writer's edit), and the cube is the one-pass serial cube."""
    from hyperkd.pipeline.ingest.parallel import ingest_region_parallel

    newest = max(dt.date.fromisoformat(s["datetime"][:10]) for s in _records(serial)
                 if s["group"] == "enmap")  # fmt: skip
    out = tmp_path / "cube.zarr"
    late = _config(catalog, out)
    late = replace(late, query=replace(late.query, start=newest))
    first = ingest_region_parallel(late, workers=2)
    assert first.ok and 0 < len(first.written) < 9
    rest = ingest_region_parallel(_config(catalog, out), workers=2)
    assert rest.ok and len(rest.written) == 9 - len(first.written)
    want, got = _arrays(serial), _arrays(out)
    assert sorted(got) == sorted(want)
    for name, values in want.items():
        assert got[name].tolist() == values.tolist(), name
    key = lambda r: r["id"]  # noqa: E731
    assert sorted(_records(out), key=key) == sorted(_records(serial), key=key)


@pytest.mark.slow  # a LocalCluster and moto: ~13 s on 2 shared cores
def test_dask_workers_write_into_an_object_store_cube(
    catalog: Path, serial: Path, s3_server: dict[str, str], s3_bucket: str
) -> None:
    """Two worker processes write their scenes' chunks into a cube on (moto) S3, where the
    client commits them: the serial cube."""
    import zarr

    from hyperkd.pipeline.cube import verify_cube
    from hyperkd.pipeline.ingest.parallel import ingest_region_parallel

    url = f"{s3_bucket}/cube.zarr"
    config = replace(_config(catalog, Path("unused")), out=url, storage_options=dict(s3_server))
    summary = ingest_region_parallel(config, dask_address="local", workers=2)
    assert summary.ok and len(summary.written) == 9
    assert verify_cube(url, s3_server) == []
    options = {"key": s3_server["key"], "secret": s3_server["secret"],
               "client_kwargs": {"endpoint_url": s3_server["endpoint_url"]}}  # fmt: skip
    root = zarr.open_group(url, mode="r", storage_options=options)
    want = _arrays(serial)
    for name, values in want.items():
        group, array = name.split("/")
        got = np.asarray(root[group][array][...])
        assert got.tolist() == values.tolist(), name


def test_an_interrupted_writer_stops_its_workers_and_leaves_a_readable_cube(
    catalog: Path, serial: Path, tmp_path: Path, monkeypatch
) -> None:
    import threading

    from hyperkd.pipeline.cube import verify_cube
    from hyperkd.pipeline.ingest import parallel

    commits = []
    real = parallel.commit_written

    def interrupted(writer, scenes):  # Ctrl-C at the second commit of scenes
        commits.append(len(scenes))
        if sum(1 for c in commits if c) == 2:
            raise KeyboardInterrupt
        real(writer, scenes)

    monkeypatch.setattr(parallel, "commit_written", interrupted)
    out = tmp_path / "cube.zarr"
    with pytest.raises(KeyboardInterrupt):
        parallel.ingest_region_parallel(_config(catalog, out), workers=2)
    assert not (out / ".hyperkd.lock").exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("ingest")]
    assert verify_cube(str(out)) == [] and 0 < len(_records(out)) < 9
    monkeypatch.setattr(parallel, "commit_written", real)
    rest = parallel.ingest_region_parallel(_config(catalog, out), workers=2)
    assert rest.ok and len(rest.written) + len(rest.skipped) == 9
    _assert_equal(serial, out)
