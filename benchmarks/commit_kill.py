"""kill -9 an append at random moments, for four ways of committing a scene, and classify what
a reader sees afterwards and what a re-run of the append leaves (docs/design/0001).

Protocols:
  hyperkd   ``CubeWriter.append``: chunks first, one root ``zarr.json`` as the commit point
  append    ``xarray.to_zarr(append_dim="time", consolidated=True)`` on a plain Zarr v3 store
  region    a time axis pre-sized for every scene, each scene written with ``to_zarr(region=)``
  icechunk  ``to_zarr(append_dim="time")`` into an Icechunk session, then ``session.commit``
            (needs ``icechunk`` importable, e.g. ``PYTHONPATH=<pip --target dir>``)

Every trial: a store holding scene 0; a child process appends scene 1 (reflectance = constant
1000 * (i + 1), 224 bands x 128 x 128 int16) and is SIGKILLed a uniform random time after it
reports "ready" (imports done and the same append run once on a scratch store, so lazy
imports and caches are warm for every protocol), up to 1.1x the median unkilled append
(ready -> done). The reader opens the
store as documented for the protocol and checks every visible scene is whole and in place.
Then the append is re-run unkilled; the store must end with exactly scenes 0 and 1, whole.

    python benchmarks/commit_kill.py --trials 12 [--protocols hyperkd,append,region,icechunk]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NB, NY, NX, TILE = 224, 128, 128, 64
PROTOCOLS = ("hyperkd", "append", "region", "icechunk")

CHILD = r"""
import shutil, sys, tempfile, datetime as dt
import numpy as np
protocol, URL, I = sys.argv[1], sys.argv[2], int(sys.argv[3])
NB, NY, NX, TILE = 224, 128, 128, 64


def make(url, i):  # the append of scene i to url for this protocol, as a function
    refl = np.full((NB, NY, NX), 1000 * (i + 1), np.int16)
    when = dt.datetime(2024, 6, 1 + i, 10, tzinfo=dt.UTC)
    if protocol == "hyperkd":
        from hyperkd.pipeline.cube import CubeLayout, CubeWriter, Grid, SceneWrite
        from hyperkd.pipeline.sensors import enmap_table
        rec = {"collection": "ENMAP_HSI_L2A", "hrefs": {}, "processing_version": None,
               "cloud_cover": None, "ingested_at": when.isoformat(), "code_version": "bench",
               "parameters": {}}
        grid = Grid("EPSG:32633", (30.0, 0.0, 362175.0, 0.0, -30.0, 5809965.0), (NY, NX))
        scene = SceneWrite("enmap", f"S{i}", when, refl, np.ones((NY, NX), bool), record=rec)
        def run():
            with CubeWriter(url) as w:
                if not w.exists:
                    w.create(CubeLayout(grid, enmap_table().bands, TILE, region="bench"))
                if f"S{i}" not in w.scene_ids("enmap"):
                    w.append(scene)
    else:
        import xarray as xr
        import xarray.backends.zarr  # noqa: F401  (imported now, not inside the timed write)
        import zarr  # noqa: F401
        ds = xr.Dataset(
            {"reflectance": (("time", "band", "y", "x"), refl[None])},
            coords={"time": [np.datetime64(when.replace(tzinfo=None), "ns")]},
        )
        enc = {"reflectance": {"chunks": (1, NB, TILE, TILE)}}
        def present(store, **kw):  # idempotent re-runs: skip a scene whose time is there
            try:
                return ds.time.values[0] in xr.open_zarr(store, **kw).time.values
            except (FileNotFoundError, KeyError, ValueError):
                return False
        if protocol == "append":
            def run():
                if i == 0:
                    ds.to_zarr(url, mode="w", consolidated=True, zarr_format=3, encoding=enc)
                elif not present(url):
                    ds.to_zarr(url, mode="a", append_dim="time", consolidated=True)
        elif protocol == "region":
            def run():
                if i == 0:  # pre-size the axis for both scenes; unwritten = fill value
                    full = xr.concat([ds, ds.assign_coords(time=ds.time + np.timedelta64(1, "D"))], "time")
                    # dask-backed, so compute=False writes metadata (and coordinates) only
                    full.chunk({"time": 1}).to_zarr(url, mode="w", consolidated=True,
                                                    zarr_format=3, encoding=enc, compute=False)
                ds.drop_vars("time").to_zarr(url, region={"time": slice(i, i + 1)})
        else:
            import icechunk
            def run():
                if i == 0:
                    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(url))
                    session = repo.writable_session("main")
                    ds.to_zarr(session.store, mode="w", zarr_format=3, consolidated=False, encoding=enc)
                else:
                    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(url))
                    if present(repo.readonly_session("main").store, consolidated=False):
                        return
                    session = repo.writable_session("main")
                    ds.to_zarr(session.store, mode="a", append_dim="time", consolidated=False)
                session.commit(f"scene {i}")
    return run


# Warm up on a scratch store: every lazy import and cache is loaded before "ready", so the
# kill window covers the write itself for every protocol alike.
scratch = tempfile.mkdtemp()
for k in (0, 1):
    make(f"{scratch}/warm.zarr", k)()
shutil.rmtree(scratch)
print("ready", flush=True)
make(URL, I)()
print("done", flush=True)
"""


def child(protocol: str, url: str, i: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, protocol, url, str(i)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"child failed before starting: {proc.communicate()[1][-2000:]}")


def run_child(protocol: str, url: str, i: int) -> float:
    """Run one unkilled append; seconds from "ready" to "done" (the append itself, without
    the interpreter's exit)."""
    proc = child(protocol, url, i)
    wait_ready(proc)
    t0 = time.perf_counter()
    line = proc.stdout.readline()
    span = time.perf_counter() - t0
    _, err = proc.communicate(timeout=300)
    if proc.returncode != 0 or line.strip() != "done":
        raise RuntimeError(f"{protocol} append {i} failed: {err[-2000:]}")
    return span


def reader_view(protocol: str, url: str) -> str:
    """What a reader sees, scene by scene: ``whole`` (every value right), ``unwritten`` (only
    the fill value: a pre-sized axis), ``torn`` (anything else); or ``unreadable``."""
    import xarray as xr

    try:
        if protocol == "hyperkd":
            ds = xr.open_zarr(url, group="enmap", mask_and_scale=False)
        elif protocol == "icechunk":
            import icechunk

            repo = icechunk.Repository.open(icechunk.local_filesystem_storage(url))
            ds = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
        else:
            ds = xr.open_zarr(url, mask_and_scale=False)
        fill = ds.reflectance.encoding.get("_FillValue", 0)
        seen = []
        for t in range(ds.sizes["time"]):
            values = np.unique(ds.reflectance[t].values).tolist()
            seen.append(
                "whole"
                if values == [1000 * (t + 1)]
                else "unwritten"
                if values in ([fill], [0], [-32768])
                else "torn"
            )
    except Exception as exc:
        return f"unreadable ({type(exc).__name__})"
    return ",".join(seen)


def trial(protocol: str, root: Path, delay: float) -> tuple[str, str]:
    url = str(root / f"{protocol}.zarr")
    shutil.rmtree(url, ignore_errors=True)
    run_child(protocol, url, 0)
    proc = child(protocol, url, 1)
    wait_ready(proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after_kill = reader_view(protocol, url)
    try:
        run_child(protocol, url, 1)
        after_rerun = reader_view(protocol, url)
    except RuntimeError as exc:
        after_rerun = "re-run failed: " + str(exc).splitlines()[-1][:80]
    return after_kill, after_rerun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="commit-kill-"))
    report = {}
    try:
        for protocol in args.protocols.split(","):
            span = statistics.median(_timed(protocol, root, k) for k in range(3))
            kills = collections.Counter()
            reruns = collections.Counter()
            for _ in range(args.trials):
                seen, final = trial(protocol, root, rng.uniform(0, 1.1 * span))
                kills[seen] += 1
                reruns[final] += 1
            report[protocol] = {
                "append_s_median": round(span, 3),
                "reader_after_kill": dict(kills),
                "after_rerun": dict(reruns),
            }
            print(protocol, json.dumps(report[protocol]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"machine": os.uname().nodename, "trials": args.trials, **report}))


def _timed(protocol: str, root: Path, k: int) -> float:
    """Seconds of one unkilled append of scene 1 onto a fresh one-scene store."""
    fresh = str(root / f"{protocol}-timing-{k}.zarr")
    run_child(protocol, fresh, 0)
    return run_child(protocol, fresh, 1)


if __name__ == "__main__":
    main()
