""" "Cached means still there" for every flow task: a deleted demo region or catalog is never
served from Prefect's result cache, and the error names the first cause.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from hyperkd.flows.params import PipelineParams


async def _task_states(flow_run_id: object) -> dict[str, str]:
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
    return {r.name: r.state.name for r in runs if r.state is not None}


def test_a_deleted_demo_region_is_written_again(prefect_harness: None, tmp_path: Path) -> None:
    from prefect import flow

    from hyperkd.flows.demo import demo_inputs

    @flow
    def region_only(out: str) -> dict:
        return demo_inputs(out, "tiny", 0)

    out = str(tmp_path / "demo-out")
    first = region_only(out, return_state=True)
    catalog = Path(first.result()["catalog"])
    assert catalog.is_file()
    again = region_only(out, return_state=True)
    assert set(asyncio.run(_task_states(again.state_details.flow_run_id)).values()) == {"Cached"}

    shutil.rmtree(out)
    third = region_only(out, return_state=True)
    assert third.is_completed(), third.message
    assert set(asyncio.run(_task_states(third.state_details.flow_run_id)).values()) == {"Completed"}
    assert catalog.is_file()


def test_a_deleted_catalog_is_named_not_the_empty_cube(
    prefect_harness: None, tmp_path: Path
) -> None:
    from hyperkd.flows.flows import hyperkd_pipeline
    from hyperkd.pipeline.synthetic.factory import RegionSpec
    from hyperkd.pipeline.synthetic.products import write_region

    catalog = write_region(tmp_path / "region", RegionSpec(size_px=64, seed=5)).catalog
    params = PipelineParams(
        region="demo", sources=(str(catalog),), start="2024-06-01", end="2024-08-31",
        out=str(tmp_path / "out"), stages=("ingest",), tile_size=32, patch_size=8,
    )  # fmt: skip
    assert hyperkd_pipeline(params, return_state=True).is_completed()
    shutil.rmtree(tmp_path / "region")
    shutil.rmtree(tmp_path / "out")
    state = hyperkd_pipeline(
        params.model_copy(update={"stages": ("ingest", "tiles")}), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(ValueError, match=r"^static catalog not found: .*catalog\.json$"):
        state.result()


@pytest.mark.slow
def test_demo_runs_twice_with_its_output_deleted(
    prefect_harness: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``make clean && make demo`` twice, as ``hyperkd demo`` in-process on the smallest size
    that still fills the demo's training batch."""
    from hyperkd.cli import main

    out = tmp_path / "demo-out"
    argv = ["demo", "--out", str(out), "--size", "medium", "--steps", "2"]
    assert main(argv) == 0, capsys.readouterr().err
    shutil.rmtree(out)
    assert main(argv) == 0, capsys.readouterr().err
    assert "report:" in capsys.readouterr().out
    assert list(out.rglob("report.html"))


@pytest.mark.slow
def test_a_demo_of_another_region_does_not_reuse_the_earlier_cube(
    prefect_harness: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``hyperkd demo`` into an ``--out`` that holds another seed's (or size's) demo builds
    its own cube and tiles, and leaves the earlier ones as they were."""
    from hyperkd.cli import main
    from hyperkd.pipeline.cube import committed_scenes

    out = tmp_path / "demo-out"
    cubes = []
    for seed in ("0", "1"):
        argv = ["demo", "--out", str(out), "--size", "medium", "--steps", "2", "--seed", seed]
        assert main(argv) == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        cubes.append(next(ln for ln in printed.splitlines() if ln.startswith("cube:")).split()[1])
    assert cubes[0] != cubes[1]
    enmap = out / "region-medium-seed1" / "ENMAP_HSI_L2A"
    enmap_ids = {p.name for p in enmap.iterdir() if p.is_dir()}
    assert enmap_ids <= set(committed_scenes(cubes[1]))  # the seed-1 region's scenes
    assert not set(committed_scenes(cubes[0])) & enmap_ids  # the seed-0 cube is untouched


_RUN = """
import asyncio, json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from hyperkd.flows.flows import hyperkd_pipeline
from hyperkd.flows.params import PipelineParams

params = PipelineParams.model_validate_json(sys.argv[1])
state = hyperkd_pipeline(params, return_state=True)
assert state.is_completed(), state.message

async def names():
    async with get_client() as client:
        for _ in range(50):  # task states arrive as events: wait until each is final
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
            if all(r.state is not None and r.state.is_final() for r in runs):
                break
            await asyncio.sleep(0.2)
    return sorted(r.state.name for r in runs)

print(json.dumps(asyncio.run(names())))
"""


def test_a_second_machine_gets_cached_states_from_shared_s3_results(
    prefect_harness: None, s3_server: dict[str, str], s3_bucket: str, tmp_path: Path
) -> None:
    """Two processes, each with a fresh PREFECT_HOME (no local results), one Prefect API and
    one S3 location: the second finds every task's result where the first left it."""
    import json
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from hyperkd.pipeline.cube import committed_scenes
    from hyperkd.pipeline.synthetic.factory import RegionSpec
    from hyperkd.pipeline.synthetic.products import write_region

    catalog = write_region(tmp_path / "region", RegionSpec(size_px=64, seed=6)).catalog
    options = {"endpoint_url": s3_server["endpoint_url"]}  # credentials: the environment
    params = PipelineParams(
        region="demo", sources=(str(catalog),), start="2024-06-01", end="2024-08-31",
        out=f"{s3_bucket}/out", stages=("ingest",), tile_size=32, patch_size=8,
        storage_options=options,
    )  # fmt: skip

    def run(home: str) -> list[str]:
        env = dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()),
                   PREFECT_HOME=str(tmp_path / home))  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c", _RUN, params.model_dump_json()],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run("home-a")
    assert "Completed" in first and "Cached" not in first, first
    assert len(committed_scenes(f"{s3_bucket}/out/demo/cube.zarr", options)) == 6
    second = run("home-b")
    assert second and set(second) == {"Cached"}, second
    assert not (tmp_path / "home-b" / "storage").exists()
