"""Installable in parts: the pipeline (search, ingest, preprocess, tiles, verify, open_cube)
never imports torch, timm, numba or prefect, and a model/flow command without its extra fails
with one line naming the extra.

The "not installed" state is made real for one subprocess: a ``sys.meta_path`` finder raises
``ModuleNotFoundError`` for the extras' packages, exactly as an interpreter without them does.
The full check, a fresh venv with ``pip install .`` (no extras) that ingests, opens and verifies
the demo cube, is run by hand (README "Installing only the pipeline").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXTRA_PACKAGES = ("torch", "torchvision", "timm", "safetensors", "matplotlib", "numba", "prefect")

SCRIPT = r"""
import contextlib, importlib.abc, io, json, sys
BLOCKED = set(sys.argv[2].split(","))

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from pathlib import Path
from hyperkd.cli import main
from hyperkd.pipeline.cube import open_cube, verify_cube
from hyperkd.pipeline.synthetic.factory import RegionSpec
from hyperkd.pipeline.synthetic.products import write_region

tmp = Path(sys.argv[1])
write_region(tmp / "region", RegionSpec(size_px=64, n_scenes=1))
cube, tiles = str(tmp / "cube.zarr"), str(tmp / "tiles.zarr")
find = ["--source", str(tmp / "region" / "catalog.json"), "--region", "demo",
        "--start", "2024-06-01", "--end", "2024-06-30"]
runs = {}
def run(name, *argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(argv))
    runs[name] = [rc, err.getvalue().strip().splitlines()[-1:]]
run("search", "search", *find)
run("ingest", "ingest", *find, "--out", cube, "--tile-size", "32")
run("preprocess", "preprocess", "--cube", cube, "--patch-size", "8")
run("tiles", "tiles", "--cube", cube, "--out", tiles, "--tile-size", "16", "--patch-size", "8",
    "--split-block", "32", "--min-valid", "0")
run("verify", "verify", cube)
tree = open_cube(cube)
problems = verify_cube(cube)
run("train", "train", "--tiles", tiles, "--teacher", "none", "--out", str(tmp / "run"), "--steps", "1")
run("pipeline", "pipeline", *find, "--out", str(tmp / "p"))
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"runs": runs, "problems": problems, "leaked": leaked,
                  "scenes": int(tree["enmap"].sizes["time"])}))
"""


def test_pipeline_runs_without_the_model_and_flows_extras(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), ",".join(EXTRA_PACKAGES)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    runs = result["runs"]
    for name in ("search", "ingest", "preprocess", "tiles", "verify"):
        assert runs[name][0] == 0, (name, runs[name])
    assert result["problems"] == [] and result["scenes"] == 1
    assert result["leaked"] == []  # not even a failed attempt left a module behind
    rc, (line,) = runs["train"]
    assert rc == 2 and "hyperkd[model]" in line and "torch" in line, line
    rc, (line,) = runs["pipeline"]
    assert rc == 2 and "hyperkd[flows]" in line, line
