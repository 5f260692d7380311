"""Bad input from a careless user or a hostile catalog (issue 17, part A), table-driven.

Each case runs the real command line and asserts its exit code, its one-line message, and
that nothing was deleted, replaced or committed where it should not be.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from _model_fakes import write_small_tile_store

from hyperkd.cli import main
from hyperkd.pipeline.cube import verify_cube
from hyperkd.pipeline.synthetic.factory import RegionSpec
from hyperkd.pipeline.synthetic.products import write_region
from hyperkd.pipeline.tiles.verify import verify_tiles

INGEST = ["--region", "demo", "--start", "2024-06-01", "--end", "2024-08-30", "--tile-size", "32"]
TRAIN = ["--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A demo catalog, its cube (one EnMAP scene and its HLS pair), a tile store, a student."""
    root = tmp_path_factory.mktemp("world")
    demo = root / "region"
    write_region(demo, RegionSpec(size_px=64, n_scenes=1))
    cube = root / "data" / "cube.zarr"
    assert main(["ingest", "--source", str(demo), *INGEST, "--out", str(cube)]) == 0
    (root / "data" / "neighbour.txt").write_text("keep me")
    tiles = Path(write_small_tile_store(str(root / "tiles.zarr")))
    student = root / "student"
    train = ["train", "--tiles", str(tiles), "--out", str(student), "--steps", "2", "--loss"]
    assert main([*train, "mse", *TRAIN]) == 0
    return {"root": root, "demo": demo, "cube": cube, "tiles": tiles, "student": student}


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) with its bytes: "nothing was touched"."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.name.startswith(".hyperkd.lock")
    }


@dataclass(frozen=True)
class Case:
    """One bad invocation: ``argv(world, tmp)``; what must stay as it was; the message."""

    name: str
    argv: Callable[[dict[str, Path], Path], list[str]]
    message: str
    keep: Callable[[dict[str, Path], Path], list[Path]] = lambda w, t: []
    setup: Callable[[dict[str, Path], Path], None] = lambda w, t: None
    absent: Callable[[dict[str, Path], Path], list[Path]] = lambda w, t: []
    code: int = 2


def _folder_with_files(w: dict[str, Path], t: Path) -> None:
    (t / "mine").mkdir()
    (t / "mine" / "thesis.tex").write_text("years of work")
    (t / "mine" / "config.json").write_text('{"not": "a run"}')


def _tiles_cmd(cube: Path, out: Path | str) -> list[str]:
    return ["tiles", "--cube", str(cube), "--out", str(out), "--tile-size", "32"]


def _ingest_cmd(w: dict[str, Path], out: Path | str, *extra: str) -> list[str]:
    return ["ingest", "--source", str(w["demo"]), *INGEST, "--out", str(out), *extra]


def _bad_catalog(w: dict[str, Path], t: Path, edit: Callable[[dict], None]) -> None:
    """A copy of the demo catalog with every item edited by ``edit``."""
    shutil.copytree(w["demo"], t / "cat")
    for path in (t / "cat").rglob("*.json"):
        doc = json.loads(path.read_text())
        if doc.get("type") == "Feature":
            edit(doc)
            path.write_text(json.dumps(doc))


def _set_cloud(doc: dict) -> None:
    doc["properties"]["eo:cloud_cover"] = "lots"


def _set_datetime(doc: dict) -> None:
    doc["properties"]["datetime"] = "last tuesday"


def _loop_catalog(w: dict[str, Path], t: Path) -> None:
    """A catalog whose child is itself, through a second catalog (a link loop)."""
    (t / "loop").mkdir()
    a = {"type": "Catalog", "stac_version": "1.0.0", "id": "a", "description": "a",
         "links": [{"rel": "child", "href": "./b.json"}]}  # fmt: skip
    b = {"type": "Catalog", "stac_version": "1.0.0", "id": "b", "description": "b",
         "links": [{"rel": "child", "href": "./catalog.json"}]}  # fmt: skip
    (t / "loop" / "catalog.json").write_text(json.dumps(a))
    (t / "loop" / "b.json").write_text(json.dumps(b))


def _tiny_bbox(w: dict[str, Path]) -> str:
    """A 1e-7 degree box in the middle of the demo's EnMAP scene."""
    item = next((w["demo"] / "ENMAP_HSI_L2A").glob("*/*.json"))
    x0, y0, x1, y1 = json.loads(item.read_text())["bbox"]
    x, y = (x0 + x1) / 2, (y0 + y1) / 2
    return f"{x},{y},{x + 1e-7},{y + 1e-7}"


def _broken_run(w: dict[str, Path], t: Path) -> None:
    shutil.copytree(w["student"], t / "run", ignore=shutil.ignore_patterns("checkpoints"))
    (t / "run" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage, not tensors")


def _no_teacher_store(w: dict[str, Path], t: Path) -> None:
    """A tile store written without a teacher array (a store of another tool or version)."""
    shutil.copytree(w["tiles"], t / "tiles.zarr")
    shutil.rmtree(t / "tiles.zarr" / "teacher")
    root = json.loads((t / "tiles.zarr" / "zarr.json").read_text())
    (root.get("consolidated_metadata") or {}).get("metadata", {}).pop("teacher", None)
    (t / "tiles.zarr" / "zarr.json").write_text(json.dumps(root))


CASES = [
    # -- outputs never destroy what is not ours ------------------------------------------------
    Case("tiles-out-foreign-folder", lambda w, t: _tiles_cmd(w["cube"], t / "mine"),
         "holds files that are not a hyperkd output", lambda w, t: [t / "mine"],
         _folder_with_files),
    Case("tiles-out-is-the-cube", lambda w, t: _tiles_cmd(w["cube"], w["cube"]),
         "overlaps the input", lambda w, t: [w["cube"]]),
    Case("tiles-out-is-the-cube-parent", lambda w, t: _tiles_cmd(w["cube"], w["cube"].parent),
         "overlaps the input", lambda w, t: [w["cube"].parent]),
    Case("tiles-out-inside-the-cube", lambda w, t: _tiles_cmd(w["cube"], w["cube"] / "t.zarr"),
         "overlaps the input", lambda w, t: [w["cube"]], absent=lambda w, t: [w["cube"] / "t.zarr"]),
    Case("tiles-out-is-a-file", lambda w, t: _tiles_cmd(w["cube"], w["cube"].parent / "neighbour.txt"),
         "is not a folder", lambda w, t: [w["cube"].parent]),
    Case("tiles-out-is-a-cube", lambda w, t: _tiles_cmd(t / "cube2.zarr", w["cube"]),
         "holds a cube store, not a tile store", lambda w, t: [w["cube"]],
         lambda w, t: shutil.copytree(w["cube"], t / "cube2.zarr")),
    Case("tiles-out-under-a-file",
         lambda w, t: [*_tiles_cmd(w["cube"], t / "f.txt" / "t.zarr"), "--allow-empty-splits"],
         "Not a directory", lambda w, t: [t / "f.txt"], lambda w, t: (t / "f.txt").write_text("x")),
    Case("tiles-empty-val-and-test-splits", lambda w, t: _tiles_cmd(w["cube"], t / "t.zarr"),
         "the val and test splits came out empty (4 tiles): pass a smaller --split-block",
         absent=lambda w, t: [t / "t.zarr"]),
    Case("ingest-out-foreign-folder", lambda w, t: _ingest_cmd(w, t / "mine"),
         "holds files that are not a hyperkd output", lambda w, t: [t / "mine"],
         _folder_with_files, absent=lambda w, t: [t / "mine" / "zarr.json"]),
    Case("ingest-out-is-the-catalog", lambda w, t: _ingest_cmd(w, w["demo"]),
         "overlaps the input", lambda w, t: [w["demo"]],
         absent=lambda w, t: [w["demo"] / "zarr.json", w["demo"] / ".hyperkd.lock"]),
    Case("ingest-out-is-a-tile-store", lambda w, t: _ingest_cmd(w, w["tiles"]),
         "holds a tiles store, not a cube", lambda w, t: [w["tiles"]]),
    Case("train-out-foreign-folder",
         lambda w, t: ["train", "--tiles", str(w["tiles"]), "--out", str(t / "mine"), "--steps", "1", "--loss", "mse", *TRAIN],
         "holds files that are not a hyperkd output", lambda w, t: [t / "mine"], _folder_with_files),
    Case("train-out-is-the-tile-store",
         lambda w, t: ["train", "--tiles", str(w["tiles"]), "--out", str(w["tiles"]), "--steps", "1", "--loss", "mse", *TRAIN],
         "overlaps the input", lambda w, t: [w["tiles"]]),
    Case("train-teacher-out-is-a-student-run",
         lambda w, t: ["train-teacher", "--tiles", str(w["tiles"]), "--out", str(w["student"]), "--steps", "1", *TRAIN],
         "holds a student run, not a teacher run", lambda w, t: [w["student"]]),
    Case("evaluate-out-is-the-checkpoint",
         lambda w, t: ["evaluate", "--checkpoint", str(w["student"]), "--tiles", str(w["tiles"]), "--out", str(w["student"]), "--device", "cpu"],
         "overlaps the input", lambda w, t: [w["student"]]),
    # -- one-line errors -----------------------------------------------------------------------
    Case("unreadable-safetensors",
         lambda w, t: ["evaluate", "--checkpoint", str(t / "run"), "--tiles", str(w["tiles"]), "--out", str(t / "ev"), "--device", "cpu"],
         "holds an unreadable run: SafetensorError", setup=_broken_run, absent=lambda w, t: [t / "ev" / "metrics.json"]),
    Case("tile-store-without-teacher",
         lambda w, t: ["train-teacher", "--tiles", str(t / "tiles.zarr"), "--out", str(t / "run"), "--steps", "1", *TRAIN],
         "has no array ['teacher']", setup=_no_teacher_store, absent=lambda w, t: [t / "run" / "config.json"]),
    Case("cloud-cover-not-a-number",
         lambda w, t: ["ingest", "--source", str(t / "cat"), *INGEST, "--max-cloud", "20", "--out", str(t / "c.zarr")],
         "eo:cloud_cover is 'lots', not a number", setup=lambda w, t: _bad_catalog(w, t, _set_cloud),
         absent=lambda w, t: [t / "c.zarr"]),
    Case("malformed-datetime",
         lambda w, t: ["ingest", "--source", str(t / "cat"), *INGEST, "--out", str(t / "c.zarr")],
         "does not resolve to a STAC object (ValueError", setup=lambda w, t: _bad_catalog(w, t, _set_datetime),
         absent=lambda w, t: [t / "c.zarr"]),
    Case("catalog-link-loop",
         lambda w, t: ["search", "--source", str(t / "loop"), *INGEST[:6]],
         "loop", setup=_loop_catalog),
    Case("bbox-smaller-than-a-pixel",
         lambda w, t: [*_ingest_cmd(w, t / "c.zarr")[:3], "--region", _tiny_bbox(w), *INGEST[2:], "--out", str(t / "c.zarr")],
         "smaller than one", absent=lambda w, t: [t / "c.zarr"]),
    Case("verify-not-a-store", lambda w, t: ["verify", str(w["demo"])],
         "neither a hyperkd cube nor a tile store", lambda w, t: [w["demo"]]),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(
    case: Case, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case.setup(world, tmp_path)
    kept = {p: snapshot(p) for p in case.keep(world, tmp_path)}
    capsys.readouterr()
    assert main(case.argv(world, tmp_path)) == case.code
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    assert case.message in err[-1], err[-1]
    for path, files in kept.items():
        assert snapshot(path) == files, f"{path} changed"
    for path in case.absent(world, tmp_path):
        assert not path.exists(), f"{path} was written"
    assert verify_cube(str(world["cube"])) == []  # the inputs stay sound
    assert verify_tiles(str(world["tiles"])) == []


def test_the_guard_lets_a_store_of_its_own_kind_be_replaced(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """The other side of the rule: an older tile store, or an empty folder, is replaced."""
    from hyperkd.pipeline.store.guard import check_output

    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", "tiles", [world["cube"]])
    check_output(world["tiles"], "tiles", [world["cube"]])
    check_output(world["cube"], "cube", [world["demo"]])
    check_output(world["student"], "student", [world["tiles"]])
    check_output(f"memory://{world['cube']}", "tiles", [world["cube"]])  # another protocol
    with pytest.raises(ValueError, match="overlaps") as refused:  # no secret in the message
        check_output("memory://b/t.zarr?sig=SECRET", "tiles", ["memory://b/t.zarr/x?sig=SECRET"])
    assert "SECRET" not in str(refused.value)


def test_lock_timeout_is_one_line(world: dict[str, Path], tmp_path: Path, capsys) -> None:
    from hyperkd.pipeline.store.location import CubeStore, locked

    cube = tmp_path / "cube.zarr"
    shutil.copytree(world["cube"], cube)
    before = snapshot(cube)
    with locked(CubeStore(str(cube))):
        code = main([*_ingest_cmd(world, cube), "--lock-timeout", "0.2"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "is being written by" in err and "--lock-timeout" in err
    assert snapshot(cube) == before


def test_permission_denied_for_out_is_one_line(world: dict[str, Path], tmp_path: Path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    locked_dir = tmp_path / "ro"
    locked_dir.mkdir()
    locked_dir.chmod(0o555)
    try:
        code = main(_tiles_cmd(world["cube"], locked_dir / "tiles.zarr"))
    finally:
        locked_dir.chmod(0o755)
    assert code == 2
    assert "Permission denied" in capsys.readouterr().err.strip().splitlines()[-1]
    assert list(locked_dir.iterdir()) == []


def test_evaluate_refuses_non_finite_metrics(world: dict[str, Path], tmp_path: Path, capsys):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "nan-run"
    shutil.copytree(world["student"], run, ignore=shutil.ignore_patterns("checkpoints"))
    weights = {
        k: torch.full_like(v, float("nan")) for k, v in load_file(run / "model.safetensors").items()
    }
    save_file(weights, run / "model.safetensors")
    argv = ["evaluate", "--checkpoint", str(run), "--tiles", str(world["tiles"]), "--out"]
    assert main([*argv, str(tmp_path / "ev"), "--device", "cpu"]) == 2
    assert "not finite" in capsys.readouterr().err
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_user_errors_are_one_line_and_bugs_are_not() -> None:
    """The CLI's classification (root ignores permissions, so this is checked directly)."""
    from hyperkd.cli import user_error
    from hyperkd.pipeline.store.location import CubeLockedError

    assert user_error(PermissionError(13, "Permission denied", "/data/out")) == (
        "Permission denied: /data/out"
    )
    assert user_error(NotADirectoryError(20, "Not a directory", "/f.txt/t")) == (
        "Not a directory: /f.txt/t"
    )
    locked = user_error(CubeLockedError("cube c is being written by h:1"))
    assert locked is not None and "--lock-timeout" in locked
    assert user_error(RecursionError("maximum recursion depth exceeded")) is not None
    assert user_error(KeyError("teacher")) is None  # a bug: the traceback is kept
    assert user_error(ZeroDivisionError()) is None
