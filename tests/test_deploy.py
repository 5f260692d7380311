"""``hyperkd deploy`` end to end on loopback: a process work pool, the schedules file's
deployment registered on it, a Prefect worker started by the test, and one small deployment
(ingest of a tiny generated region) run by that worker to completion.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyperkd.cli import main


def _schedules(tmp_path: Path) -> Path:
    from hyperkd.pipeline.synthetic.factory import RegionSpec
    from hyperkd.pipeline.synthetic.products import write_region

    catalog = write_region(tmp_path / "region", RegionSpec(size_px=64, seed=7)).catalog
    path = tmp_path / "schedules.yaml"
    path.write_text(
        "defaults:\n"
        f"  out: {tmp_path / 'out'}\n"
        f"  sources: [{catalog}]\n"
        "  tile_size: 32\n  patch_size: 8\n"
        "deployments:\n"
        "  - name: tiny-ingest\n"
        "    cron: '0 3 1 1 *'\n"
        "    timezone: Europe/Berlin\n"
        "    parameters: {region: demo, start: '2024-06-01', end: '2024-08-31', stages: [ingest]}\n"
        "  - name: tiny-train\n"
        "    cron: '0 4 1 1 *'\n"
        "    parameters: {region: demo, start: '2024-06-01', end: '2024-08-31', stages: [teacher]}\n"
    )
    return path


async def _make_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    async with get_client() as client:
        await client.create_work_pool(
            WorkPoolCreate(name=name, type="process", base_job_template=template)
        )


async def _deployments() -> dict[str, tuple[str | None, list[str]]]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        found = await client.read_deployments()
    return {d.name: (d.work_pool_name, [s.schedule.timezone for s in d.schedules]) for d in found}


async def _final_state(flow_run_id: object, timeout_s: float) -> object:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run.state
            if time.monotonic() > deadline:
                return run.state
            await asyncio.sleep(1)


@pytest.mark.slow
def test_a_deployment_runs_through_a_work_pool_and_worker(
    prefect_harness: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    asyncio.run(_make_pool("hk-cpu"))
    asyncio.run(_make_pool("hk-gpu"))
    path = _schedules(tmp_path)
    argv = ["deploy", "--schedules", str(path), "--cpu-pool", "hk-cpu", "--gpu-pool", "hk-gpu"]
    assert main(argv) == 0, capsys.readouterr().err
    found = asyncio.run(_deployments())
    assert found["tiny-ingest"] == ("hk-cpu", ["Europe/Berlin"])
    assert found["tiny-train"] == ("hk-gpu", ["UTC"])

    run = run_deployment("hyperkd-pipeline/tiny-ingest", timeout=0)
    env = dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "hk-cpu", "--type",
         "process", "--install-policy", "never", "--prefetch-seconds", "60"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        state = asyncio.run(_final_state(run.id, 240))
    finally:
        worker.send_signal(signal.SIGINT)  # the worker's own Ctrl-C shutdown
        try:
            log = worker.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            worker.kill()  # the worker we started, by its handle
            log = worker.communicate()[0]
    assert state is not None and state.is_completed(), (state, log[-3000:])
    from hyperkd.pipeline.cube import committed_scenes

    assert len(committed_scenes(tmp_path / "out" / "demo" / "cube.zarr")) == 6


def test_deploy_to_a_missing_pool_is_one_line(
    prefect_harness: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _schedules(tmp_path)
    assert main(["deploy", "--schedules", str(path), "--cpu-pool", "nope-cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hyperkd deploy: error: work pool(s) hyperkd-gpu, nope-cpu do not exist")
    assert "\n" not in err
