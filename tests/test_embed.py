"""``hyperkd embed``: a cube through the student into a Zarr store of per-patch embeddings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from stac_validate import validate
from tile_helpers import factory_cube

from hyperkd.cli import main
from hyperkd.model import load_student
from hyperkd.model.embed import EmbedConfig, embed_cube
from hyperkd.model.nets.mae import StudentMAE, student_config
from hyperkd.model.train.checkpoint import save_run
from hyperkd.pipeline.cube import open_cube
from hyperkd.pipeline.synthetic.factory import RegionSpec

SIZE, TILE, PATCH, BATCH = 72, 32, 8, 4
"""72 px scenes in 32 px windows: 3 x 3 windows, the last row and column 8 px wide."""


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Bitwise comparisons across processes need the same thread count everywhere.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A two-scene factory cube and a tiny student run on its 218 bands."""
    root = tmp_path_factory.mktemp("embed")
    cube = str(root / "cube.zarr")
    factory_cube(cube, RegionSpec(size_px=SIZE, n_scenes=2), n_scenes=2, tile_size=TILE)
    enmap = open_cube(cube)["enmap"].to_dataset()
    keep = np.asarray(enmap["valid_band"].values, dtype=bool)
    torch.manual_seed(0)
    config = student_config("tiny", img_size=TILE, patch_size=PATCH, in_chans=int(keep.sum()))
    run = {
        "kind": "student",
        "model": config.to_dict(),
        "run": {"tiles": "../tiles.zarr", "teacher": None},
        "tile_store": {
            "n_bands": config.in_chans,
            "student_mean": np.linspace(800, 2500, config.in_chans).tolist(),
            "student_std": np.linspace(500, 900, config.in_chans).tolist(),
            "band_wavelength": enmap["wavelength"].values[keep].tolist(),
        },
    }
    save_run(root / "student", StudentMAE(config).state_dict(), run)
    return {"root": str(root), "cube": cube, "checkpoint": str(root / "student")}


def _config(inputs: dict[str, str], out: str) -> EmbedConfig:
    return EmbedConfig(inputs["checkpoint"], inputs["cube"], out, batch_size=BATCH, device="cpu")


@pytest.fixture(scope="module")
def store(inputs: dict[str, str]) -> str:
    out = str(Path(inputs["root"]) / "straight.zarr")
    torch.set_num_threads(1)
    result = embed_cube(_config(inputs, out))
    assert result["embedded_now"] == 2 and result["patches"] == 2 * (SIZE // PATCH) ** 2
    return out


def test_store_opens_with_xarray_and_rioxarray_reads_its_grid(inputs: dict, store: str) -> None:
    import rioxarray  # noqa: F401

    ds = xr.open_zarr(store)  # plain: spatial_ref is a coordinate without decode_coords
    assert ds["embedding"].dims == ("time", "feature", "y", "x")
    assert ds["embedding"].shape == (2, 64, SIZE // PATCH, SIZE // PATCH)
    assert ds.attrs["hyperkd:embedded_scenes"] == ["scene-0", "scene-1"]
    cube = open_cube(inputs["cube"])["enmap"].to_dataset()
    assert ds.rio.crs == cube.rio.crs
    a, _, c, _, e, f = tuple(ds.rio.transform())[:6]
    ca, _, cc, _, ce, cf = tuple(cube.rio.transform())[:6]
    assert (a, e, c, f) == (ca * PATCH, ce * PATCH, cc, cf)
    np.testing.assert_allclose(ds["x"].values[1], cube["x"].values[PATCH : 2 * PATCH].mean())
    np.testing.assert_allclose(ds["y"].values[2], cube["y"].values[2 * PATCH : 3 * PATCH].mean())
    np.testing.assert_array_equal(ds["time"].values, cube["time"].values)
    assert list(ds["scene_id"].values) == ["scene-0", "scene-1"]
    assert np.isfinite(ds["embedding"].values).all()
    frac = ds["valid_fraction"].values
    assert ((frac >= 0) & (frac <= 1)).all() and frac.min() < 1  # the factory's clouds


@pytest.mark.parametrize("window", [(1, 32, 64, 0, 32), (0, 64, 72, 64, 72)])
def test_embeddings_of_a_window_equal_forward_features(
    inputs: dict, store: str, window: tuple[int, int, int, int, int]
) -> None:
    t, y0, y1, x0, x1 = window
    enmap = open_cube(inputs["cube"])["enmap"].to_dataset()
    sel = dict(time=t, y=slice(y0, y1), x=slice(x0, x1))
    refl = enmap["reflectance"].isel(band=enmap["valid_band"].values).isel(sel).values
    valid = enmap["valid"].isel(sel).values
    backbone = load_student(inputs["checkpoint"])
    with torch.no_grad():
        tokens = backbone.forward_features(
            torch.from_numpy(refl.astype(np.float32))[None], torch.from_numpy(valid)[None]
        )[0]  # (h*w, D)
    h, w = (y1 - y0) // PATCH, (x1 - x0) // PATCH
    expected = tokens.T.reshape(-1, h, w).numpy()  # (D, h, w)
    got = xr.open_zarr(store)["embedding"].values[
        t, :, y0 // PATCH : y1 // PATCH, x0 // PATCH : x1 // PATCH
    ]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_collection_validates_offline(store: str) -> None:
    doc = json.loads((Path(store) / "collection.json").read_text())
    checked = validate(doc)
    assert any("datacube" in uri for uri in checked)
    dims = doc["cube:dimensions"]
    assert dims["x"]["reference_system"] == 32633 and dims["x"]["step"] == 240.0
    assert doc["assets"]["zarr"]["href"] == "./"


def test_rerun_writes_nothing(inputs: dict, store: str) -> None:
    chunks = sorted(p for p in Path(store, "embedding").rglob("*") if p.is_file())
    before = [(p, p.stat().st_mtime_ns) for p in chunks]
    root = Path(store, "zarr.json").read_bytes()
    result = embed_cube(_config(inputs, store))
    assert result["embedded_now"] == 0 and result["skipped"] == 2
    assert [(p, p.stat().st_mtime_ns) for p in chunks] == before
    assert Path(store, "zarr.json").read_bytes() == root


KILLED = textwrap.dedent(
    """
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from hyperkd.model.embed import EmbedConfig, embed_cube, store
    writes = []
    real = store.write_window
    def write_then_die(group, t, *args):
        real(group, t, *args)
        writes.append(t)
        if writes.count(1) == 5:  # mid-way through the second scene
            os.kill(os.getpid(), signal.SIGKILL)
    store.write_window = write_then_die
    ckpt, cube, out = sys.argv[1:4]
    embed_cube(EmbedConfig(ckpt, cube, out, batch_size=4, device="cpu"))
    """
)


def test_sigkill_then_rerun_equals_an_uninterrupted_run(inputs: dict, store: str) -> None:
    out = str(Path(inputs["root"]) / "killed.zarr")
    proc = subprocess.run(
        [sys.executable, "-c", KILLED, inputs["checkpoint"], inputs["cube"], out],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    killed = xr.open_zarr(out)  # readable after the kill
    assert killed.attrs["hyperkd:embedded_scenes"] == ["scene-0"]
    assert np.isnan(killed["embedding"].values[1]).any()  # scene 1 half written
    result = embed_cube(_config(inputs, out))
    assert result["embedded_now"] == 1 and result["skipped"] == 1
    a, b = xr.open_zarr(out), xr.open_zarr(store)
    for name in ("embedding", "valid_fraction"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert a.attrs == b.attrs


def test_out_holding_something_else_is_refused_untouched(inputs: dict, tmp_path: Path) -> None:
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to write there"):
        embed_cube(_config(inputs, str(precious)))
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.txt"]
    with pytest.raises(ValueError, match="overlaps the input"):
        embed_cube(_config(inputs, str(Path(inputs["cube"]) / "emb.zarr")))
    assert not (Path(inputs["cube"]) / "emb.zarr").exists()


def test_cli_embeds_and_reports_bad_input_in_one_line(
    inputs: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "cli.zarr")
    args = ["embed", "--checkpoint", inputs["checkpoint"], "--cube", inputs["cube"], "--out", out]
    assert main([*args, "--batch-size", "9", "--device", "cpu"]) == 0
    assert "embedded 2 scene(s)" in capsys.readouterr().out
    assert xr.open_zarr(out).attrs["hyperkd:window"] == TILE
    assert main([*args[:-1], str(tmp_path / "w.zarr"), "--window", "12"]) == 2
    err = capsys.readouterr().err
    assert "not a multiple of patch size" in err and len(err.strip().splitlines()) == 1
    missing = ["embed", "--checkpoint", str(tmp_path / "none"), "--cube", inputs["cube"]]
    assert main([*missing, "--out", str(tmp_path / "x.zarr")]) == 2
    assert "no finished run" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.zarr")


@pytest.mark.gpu
def test_cuda_run_matches_the_cpu_store(inputs: dict, store: str, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    out = str(tmp_path / "cuda.zarr")
    result = embed_cube(
        EmbedConfig(inputs["checkpoint"], inputs["cube"], out, batch_size=BATCH, device="cuda")
    )
    assert result["device"].startswith("cuda") and result["embedded_now"] == 2
    cuda, cpu = xr.open_zarr(out), xr.open_zarr(store)
    # TF32/cuDNN kernels differ from the CPU's in the last bits; LayerNorm'd tokens are O(1).
    np.testing.assert_allclose(cuda["embedding"].values, cpu["embedding"].values, atol=5e-3)
    np.testing.assert_array_equal(cuda["valid_fraction"].values, cpu["valid_fraction"].values)
