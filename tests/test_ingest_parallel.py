"""Parallel ingest (pipeline/ingest/parallel.py): scenes loaded on local threads or on a
2-worker dask LocalCluster give the serial run's cube, byte for byte in every array.
"""

from __future__ import annotations

import datetime as dt
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
    from hyperkd.pipeline.cube.io import verify_cube
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
