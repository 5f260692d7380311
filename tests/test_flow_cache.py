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

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
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
