"""``hyperkd embed`` on the demo cube (built by the real commands), read back by other tools, and
used as features by ``hyperkd downstream``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from eval_helpers import demo_run, torch_threads

from hyperkd.cli import main
from hyperkd.model import load_student
from hyperkd.model.data.dataset import TileDataset
from hyperkd.model.embed.features import pixel_features


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with torch_threads(1):
        run = demo_run(tmp_path_factory.mktemp("demo"))
        out = str(Path(run["root"]) / "embeddings.zarr")
        argv = ["embed", "--checkpoint", run["student"], "--cube"]
        assert (
            main([*argv, str(Path(run["root"]) / "cube.zarr"), "--out", out, "--device", "cpu"])
            == 0
        )
        yield run | {"embeddings": out}


def test_demo_store_opens_with_xarray_and_rioxarray(demo: dict[str, str]) -> None:
    import rioxarray  # noqa: F401

    ds = xr.open_zarr(demo["embeddings"])
    cube = xr.open_zarr(Path(demo["root"]) / "cube.zarr", group="enmap", decode_coords="all")
    assert ds["embedding"].dims == ("time", "feature", "y", "x")
    assert ds.rio.crs == cube.rio.crs and ds.rio.crs is not None
    assert ds.rio.resolution() == (cube.rio.resolution()[0] * 8, cube.rio.resolution()[1] * 8)
    left, _, _, top = ds.rio.bounds()
    assert (left, top) == (cube.rio.bounds()[0], cube.rio.bounds()[3])  # same upper-left corner
    assert np.isfinite(ds["embedding"].values).all()


def test_store_embeddings_of_a_tile_equal_forward_features(demo: dict[str, str]) -> None:
    """The store, looked up at a tile's pixels, holds the encoder's tokens of that tile."""
    ds = TileDataset(demo["tiles"], split="train")
    raw = ds.read_raw(0, ["student", "valid"])
    refl = np.where(raw["student"] == -32768, np.nan, raw["student"] / 10000.0)  # (C, T, T)
    backbone = load_student(demo["student"])
    with torch.no_grad():
        tokens = backbone.forward_features(
            torch.from_numpy(refl.astype(np.float32))[None], torch.from_numpy(raw["valid"])[None]
        )[0]  # (h*w, D)
    size, patch = ds.info.tile_size, ds.info.patch_size
    pixels = np.arange(size * size)
    got = pixel_features(demo["embeddings"], ds, np.zeros_like(pixels), pixels)  # (T*T, D)
    token_of_pixel = (pixels // size // patch) * (size // patch) + (pixels % size) // patch
    np.testing.assert_allclose(got, tokens.numpy()[token_of_pixel], rtol=0, atol=1e-4)


def test_downstream_probes_the_embeddings_store(demo: dict[str, str], tmp_path: Path) -> None:
    argv = ["downstream", "--checkpoint", demo["student"], "--task", "landcover"]
    argv += ["--data", demo["tiles"], "--out", str(tmp_path), "--finetune-steps", "0"]
    argv += ["--max-train-pixels", "2000", "--max-eval-pixels", "2000", "--device", "cpu"]
    with torch_threads(1):
        assert main([*argv, "--embeddings", demo["embeddings"]]) == 0
    result = json.loads((tmp_path / "downstream_landcover.json").read_text())
    rows = {(r["method"], r["mode"]): r for r in result["results"]}
    store = rows[("embeddings store", "linear probe")]
    assert 0.0 <= store["accuracy"] <= 1.0 and 0.0 <= store["macro_f1"] <= 1.0
    assert result["config"]["embeddings"] == demo["embeddings"]
    assert (
        "| embeddings store | linear probe |" in (tmp_path / "downstream_landcover.md").read_text()
    )
