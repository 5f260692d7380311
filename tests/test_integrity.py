"""Integrity: ``hyperkd verify --deep`` finds deleted and corrupted chunks in a cube and in a
tile store; the tile loader refuses a missing chunk; ``--resume`` passes a corrupt checkpoint;
ingest reports scenes without valid pixels as ``empty`` and commits nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _model_fakes import write_small_tile_store

from hyperkd.cli import main
from hyperkd.pipeline.store.integrity import MissingChunkError, chunk_keys, is_chunk_key

TRAIN = ["--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu"]
INGEST = ["--region", "demo", "--start", "2024-06-01", "--end", "2024-08-30", "--tile-size", "32"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small ingested cube and a small tile store, never modified."""
    from hyperkd.pipeline.synthetic.factory import RegionSpec
    from hyperkd.pipeline.synthetic.products import write_region

    root = tmp_path_factory.mktemp("integrity")
    write_region(root / "region", RegionSpec(size_px=64, n_scenes=1))
    cube = root / "cube.zarr"
    assert main(["ingest", "--source", str(root / "region"), *INGEST, "--out", str(cube)]) == 0
    tiles = Path(write_small_tile_store(str(root / "tiles.zarr")))
    return {"cube": cube, "tiles": tiles}


def _copy(src: Path, tmp: Path) -> Path:
    dst = tmp / src.name
    shutil.copytree(src, dst)
    return dst


def _chunk(store: Path, array: str, index: int = 0) -> Path:
    files = sorted(p for p in (store / array / "c").rglob("*") if p.is_file())
    return files[index]


@pytest.mark.parametrize(
    ("kind", "array"),
    [("cube", "enmap/reflectance"), ("cube", "enmap/valid"), ("tiles", "student")],
)
@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_verify_deep_finds_a_damaged_chunk(
    stores: dict[str, Path], tmp_path: Path, kind: str, array: str, damage: str, capsys
) -> None:
    store = _copy(stores[kind], tmp_path)
    assert main(["verify", str(store), "--deep"]) == 0
    assert "sound (every chunk read)" in capsys.readouterr().out
    chunk = _chunk(store, array, 1)
    key = chunk.relative_to(store).as_posix()
    if damage == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(b"\x00garbage" * 16)
    capsys.readouterr()
    assert main(["verify", str(store), "--deep"]) == 1
    out = capsys.readouterr().out
    expected = f"chunk {key} is missing" if damage == "delete" else f"chunk {key} does not decode"
    assert expected in out, out
    assert "1 problem(s)" in out


def test_chunk_keys_follow_the_default_encoding() -> None:
    doc = {
        "shape": [2, 3, 65, 64],
        "chunk_grid": {"configuration": {"chunk_shape": [1, 3, 32, 32]}},
    }
    keys = chunk_keys("enmap/reflectance", doc)
    assert len(keys) == 2 * 1 * 3 * 2 and keys[0] == "enmap/reflectance/c/0/0/0/0"
    assert keys[-1] == "enmap/reflectance/c/1/0/2/1"
    assert (
        chunk_keys("x", {"shape": [0, 4], "chunk_grid": {"configuration": {"chunk_shape": [1, 4]}}})
        == []
    )
    assert is_chunk_key("student/c/3/0/0/0") and not is_chunk_key("student/zarr.json")
    assert not is_chunk_key("c/zarr.json") and is_chunk_key("index/split/c/0")


def test_the_loader_refuses_a_missing_chunk(stores: dict[str, Path], tmp_path: Path) -> None:
    """A deleted student chunk used to reach the trainer as nodata marked valid (-47..-172)."""
    from hyperkd.model.data.dataset import TileDataset

    store = _copy(stores["tiles"], tmp_path)
    ds = TileDataset(str(store), split=None)
    first = ds[0]
    assert torch.isfinite(first["student"]).all() and first["student"].abs().max() < 20
    (store / "student" / "c" / "0" / "0" / "0" / "0").unlink()
    fresh = TileDataset(str(store), split=None)
    with pytest.raises(MissingChunkError, match=r"chunk student/c/0/0/0/0 .* is missing"):
        fresh[0]
    assert torch.equal(fresh[1]["student"], ds[1]["student"])  # the others still read


def test_resume_falls_back_past_a_corrupt_optimizer_checkpoint(
    stores: dict[str, Path], tmp_path: Path, caplog
) -> None:
    from hyperkd.model.train.checkpoint import resume_point

    run = tmp_path / "run"
    argv = ["train", "--tiles", str(stores["tiles"]), "--out", str(run), "--loss", "mse", *TRAIN]
    assert main([*argv, "--steps", "3", "--checkpoint-every", "1"]) == 0
    steps = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert steps == ["step-00000002", "step-00000003"]
    latest = run / "checkpoints" / "step-00000003" / "optimizer.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # torn: the header promises more
    (run / "config.json").unlink()
    (run / "model.safetensors").unlink()
    folder, loaded = resume_point(run)  # type: ignore[misc]
    assert folder.name == "step-00000002" and loaded["state"]["step"] == 2
    caplog.clear()
    assert main([*argv, "--steps", "3", "--checkpoint-every", "1", "--resume"]) == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "step-00000003 does not load" in said and "previous good one, step-00000002" in said
    assert json.loads((run / "config.json").read_text())["kind"] == "student"


def test_resume_without_any_good_checkpoint_is_one_line(
    stores: dict[str, Path], tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    argv = ["train", "--tiles", str(stores["tiles"]), "--out", str(run), "--loss", "mse", *TRAIN]
    assert main([*argv, "--steps", "1", "--checkpoint-every", "1"]) == 0
    for f in (run / "checkpoints").glob("step-*/optimizer.safetensors"):
        f.write_bytes(b"junk")
    capsys.readouterr()
    assert main([*argv, "--steps", "2", "--resume"]) == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_an_all_cloud_scene_is_reported_empty_and_not_written(tmp_path: Path, capsys) -> None:
    """Every EnMAP pixel flagged cloudy: `empty`, its HLS pair skipped, and no cube left."""
    import rasterio

    from hyperkd.pipeline.synthetic.factory import RegionSpec
    from hyperkd.pipeline.synthetic.products import write_region

    root = tmp_path / "region"
    write_region(root, RegionSpec(size_px=32, n_scenes=1))
    for tif in (root / "ENMAP_HSI_L2A").glob("*/*QL_QUALITY_CLOUD_COG.TIF"):
        with rasterio.open(tif, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as f:
            f.write(np.ones((f.count, f.height, f.width), dtype=f.dtypes[0]))
    out = tmp_path / "cube.zarr"
    argv = ["ingest", "--source", str(root), *INGEST, "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr().out
    assert "  empty  enmap" in captured and "fewer than 1" in captured
    assert "0 written" in captured and "1 empty (not written)" in captured
    assert "HLS skipped (EnMAP pair not in the cube)" in captured
    assert not out.exists()


def test_stac_proj_fields_that_disagree_with_the_file_are_warned_and_ignored(
    tmp_path: Path, caplog
) -> None:
    """An item's ``proj:shape`` of 200000 x 200000 used to change the cube grid silently."""
    import xarray as xr

    from hyperkd.pipeline.synthetic.factory import RegionSpec
    from hyperkd.pipeline.synthetic.products import write_region

    root = tmp_path / "region"
    write_region(root, RegionSpec(size_px=32, n_scenes=1))
    item_path = next((root / "ENMAP_HSI_L2A").glob("*/*.json"))
    doc = json.loads(item_path.read_text())
    for fields in (doc["properties"], *doc["assets"].values()):
        if "proj:shape" in fields:
            fields["proj:shape"] = [200000, 200000]
    item_path.write_text(json.dumps(doc))
    out = tmp_path / "cube.zarr"
    assert main(["ingest", "--source", str(root), *INGEST, "--out", str(out)]) == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"item {doc['id']}: its proj: fields" in said and "trusting the file" in said
    enmap = xr.open_zarr(out, group="enmap")
    assert (enmap.sizes["y"], enmap.sizes["x"]) == (32, 32)


def test_verify_cube_checks_every_paired_enmap(stores: dict[str, Path], tmp_path: Path) -> None:
    import zarr

    from hyperkd.pipeline.cube import verify_cube

    cube = _copy(stores["cube"], tmp_path)
    assert verify_cube(str(cube)) == []
    pairs = zarr.open_array(str(cube / "hls" / "paired_enmap"), mode="r+")
    pairs[0] = "ENMAP_GONE"
    hls = str(zarr.open_array(str(cube / "hls" / "scene_id"), mode="r")[0])
    assert f"hls scene {hls} is paired with EnMAP scene 'ENMAP_GONE', which is not in the cube" in (
        verify_cube(str(cube))
    )


def test_a_training_run_killed_before_its_first_checkpoint_is_ours(tmp_path: Path) -> None:
    from hyperkd.pipeline.store.guard import check_output

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    check_output(tmp_path / "run", "student")
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files that are not a hyperkd output"):
        check_output(tmp_path / "run", "student")
    (tmp_path / "theirs").mkdir()  # a file of the log's name that the trainer did not write
    (tmp_path / "theirs" / "metrics.jsonl").write_text("epoch,accuracy\n1,0.5\n")
    with pytest.raises(ValueError, match="holds files that are not a hyperkd output"):
        check_output(tmp_path / "theirs", "student")
    assert (tmp_path / "theirs" / "metrics.jsonl").read_text() == "epoch,accuracy\n1,0.5\n"


def test_a_folder_holding_only_a_lock_is_a_cube_being_created(tmp_path: Path) -> None:
    from hyperkd.pipeline.store.guard import check_output, store_kind
    from hyperkd.pipeline.store.location import LOCK_KEY, CubeStore

    (tmp_path / "new.zarr").mkdir()
    (tmp_path / "new.zarr" / LOCK_KEY).write_text("{}")
    assert store_kind(CubeStore(str(tmp_path / "new.zarr"))) == "empty"
    check_output(tmp_path / "new.zarr", "cube")
    (tmp_path / "new.zarr" / "enmap").mkdir()  # killed before the first commit
    (tmp_path / "new.zarr" / "enmap" / "zarr.json").write_text(
        json.dumps(
            {"zarr_format": 3, "node_type": "group", "attributes": {"hyperkd:group": "enmap"}}
        )
    )
    assert store_kind(CubeStore(str(tmp_path / "new.zarr"))) == "cube"
    (tmp_path / "new.zarr" / ".git").mkdir()
    with pytest.raises(ValueError, match="holds files that are not a hyperkd output"):
        check_output(tmp_path / "new.zarr", "cube")


@pytest.mark.slow  # ~20 s on the shared 2-core machine: many small PUTs through s3fs 0.4
def test_verify_deep_and_the_guard_on_s3(s3_server: dict[str, str], s3_bucket: str, capsys) -> None:
    """The same checks on object storage (moto's S3 server on loopback), on a 4-tile store."""
    from tile_helpers import make_scene

    from hyperkd.pipeline.store.guard import OutputError, check_output
    from hyperkd.pipeline.store.location import CubeStore
    from hyperkd.pipeline.tiles.build import TileConfig, write_tile_store

    url = f"{s3_bucket}/tiles.zarr"
    cfg = TileConfig(
        tile_size=32, patch_size=8, split_fractions=(1.0, 0.0, 0.0), allow_empty_splits=True
    )
    write_tile_store([make_scene(64, 64, patch=8)], url, cfg, storage_options=s3_server)
    s3 = CubeStore(url, s3_server)
    options = json.dumps(s3_server)
    assert main(["verify", url, "--deep", "--storage-options", options]) == 0
    key = "student/c/1/0/0/0"  # the second tile
    s3.fs.rm(s3.path(key))
    capsys.readouterr()
    assert main(["verify", url, "--deep", "--storage-options", options]) == 1
    assert f"chunk {key} is missing" in capsys.readouterr().out
    with pytest.raises(OutputError, match="holds a tiles store, not a cube"):
        check_output(url, "cube", [], s3_server)
    with pytest.raises(OutputError, match="overlaps the input"):
        check_output(f"{s3_bucket}/tiles.zarr/inner", "tiles", [url], s3_server)
