"""The Prefect flows under one real (temporary) Prefect API server: the whole pipeline on a tiny
demo region, a fully cached re-run, a corrupt scene that fails alone, and ``hyperkd serve``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyperkd.flows.params import PipelineParams

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hyperkd.pipeline.synthetic.factory import RegionSpec
    from hyperkd.pipeline.synthetic.products import write_region

    root = tmp_path_factory.mktemp("flow-region")
    return write_region(root / "region", RegionSpec(size_px=128, seed=3)).catalog


def _params(catalog: Path, out: Path, **kw: object) -> PipelineParams:
    base: dict[str, object] = dict(
        region="demo", sources=(str(catalog),), start="2024-06-01", end="2024-08-31", out=str(out),
        tile_size=32, patch_size=8, min_valid=0.3, split_block_px=64, teacher_steps=12, student_steps=12, batch_size=2,
    )  # fmt: skip
    return PipelineParams(**(base | kw))


async def _task_states(flow_run_id: object) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    # Task states reach the server as events: wait (briefly) until each one is final.
    async with get_client() as client:
        for _ in range(50):
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            if all(r.state is not None and r.state.is_final() for r in runs):
                break
            await asyncio.sleep(0.2)
    return sorted(r.state.name for r in runs if r.state is not None)


def _mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_pipeline_runs_then_reruns_from_cache(
    prefect_harness: None, region: Path, tmp_path: Path
) -> None:
    from hyperkd.flows.flows import hyperkd_pipeline

    params = _params(region, tmp_path / "out")
    first = hyperkd_pipeline(params, return_state=True)
    assert first.is_completed(), first.message
    out = first.result()
    assert out["ingest"].failed == ()
    assert len(out["ingest"].scenes) == 6  # 2 EnMAP + 2 L30 + 2 S30
    assert out["tiles"].n_tiles > 0
    assert set(out["evaluate"]["metrics"]) >= {"psnr", "ssim", "sam"}
    assert Path(out["evaluate"]["report"]).is_file()

    written = _mtimes(tmp_path / "out")
    assert len(written) > 100  # cube chunks, tiles, checkpoints, metrics, the report
    second = hyperkd_pipeline(params, return_state=True)
    assert second.is_completed(), second.message
    states = asyncio.run(_task_states(second.state_details.flow_run_id))
    assert states and set(states) == {"Cached"}, states
    # A cached re-run does no work again: not one output file is rewritten.
    # (This replaced a wall-time ratio, which failed whenever other jobs shared the CPU.)
    assert _mtimes(tmp_path / "out") == written

    # A changed training parameter re-runs only what depends on it.
    third = hyperkd_pipeline(params.model_copy(update={"student_steps": 13}), return_state=True)
    assert third.is_completed(), third.message
    third_states = asyncio.run(_task_states(third.state_details.flow_run_id))
    # student, run manifest, evaluate, report
    assert third_states.count("Completed") == 4, third_states

    # Another optimizer trains another teacher and student, in folders of their own.
    muon = hyperkd_pipeline(params.model_copy(update={"optimizer": "muon"}), return_state=True)
    assert muon.is_completed(), muon.message
    runs = muon.result()
    assert runs["teacher"].path != out["teacher"].path
    assert runs["student"].path != out["student"].path
    for run in (runs["teacher"], runs["student"]):
        config = json.loads((Path(run.path) / "config.json").read_text())
        assert config["run"]["train"]["optim"]["optimizer"] == "muon"

    # "Cached" means "still there": a deleted cube is ingested again, not taken from the cache.
    shutil.rmtree(out["ingest"].cube)
    fourth = hyperkd_pipeline(params, return_state=True)
    assert fourth.is_completed(), fourth.message
    assert fourth.result()["ingest"].written == out["ingest"].scenes


def test_a_corrupt_scene_fails_alone(prefect_harness: None, region: Path, tmp_path: Path) -> None:
    from hyperkd.flows.flows import ingest_region

    copy = tmp_path / "region"
    shutil.copytree(region.parent, copy)
    victim = sorted(copy.rglob("HLS.S30.*.B8A.tif"))[0]
    victim.write_bytes(victim.read_bytes()[:2000])  # a truncated COG
    params = _params(copy / "catalog.json", tmp_path / "out", stages=("ingest",))
    state = ingest_region(params, return_state=True)
    assert state.is_completed(), state.message
    record = state.result()
    assert [sid for sid, _ in record.failed] == [victim.name.rsplit(".", 2)[0]]
    assert len(record.scenes) == 5
    from hyperkd.pipeline.cube import verify_cube

    assert verify_cube(record.cube) == []


def test_serve_registers_the_scheduled_deployments(prefect_harness: None, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hyperkd", "serve", "--schedules", str(REPO / "examples" / "schedules.yaml")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    async def deployments() -> dict[str, list[str]]:
        async with get_client() as client:
            found = await client.read_deployments()
        return {
            d.name: [s.schedule.cron for s in d.schedules]
            for d in found
            if "hyperkd" in (d.tags or [])
        }

    try:
        deadline, seen = time.monotonic() + 90, {}
        while time.monotonic() < deadline and len(seen) < 4:
            time.sleep(1)
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            seen = asyncio.run(deployments())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert seen == {
        "weekly-ingest-california": ["0 3 * * 1"],
        "weekly-ingest-colorado": ["15 3 * * 1"],
        "weekly-ingest-kansas": ["30 3 * * 1"],
        "monthly-retrain-kansas": ["0 5 1 * *"],
    }


def test_bad_schedules_file_is_one_line(tmp_path: Path) -> None:
    from hyperkd.flows.serve import load_schedules

    bad = tmp_path / "s.yaml"
    bad.write_text("deployments:\n  - {name: x, cron: '61 * * * *', parameters: {}}\n")
    with pytest.raises(ValueError, match="invalid cron expression"):
        load_schedules(bad)
    bad.write_text(
        "deployments:\n  - name: x\n    cron: '0 * * * *'\n"
        "    parameters: {region: demo, sources: [x], start: '2024-02-01', end: '2024-01-01', out: /tmp/x}\n"
    )
    with pytest.raises(ValueError, match="invalid parameters"):
        load_schedules(bad)
