#!/usr/bin/env bash
# Wheels for benchmarks/gpu_train_step.sh: the packages the benchmark imports that the GPU
# machine's image lacks (its package list: /work/.library/device/KINDS.md, 2026-11-17), at the
# versions pinned in constraints.txt, for the image's CPython 3.12 on x86-64, into .whl/ (git
# ignores it through .git/info/exclude). Run here, from the repo root, before the device call,
# and carry ".whl" with it.
#
#   bash benchmarks/gpu_wheels.sh            # DRY_RUN=1: only list what would be fetched
#   WHEELS=core bash benchmarks/gpu_wheels.sh   # only what the in-GPU stages need (no tile
#                                               # store: rasterio, pyproj, dask... stay behind)
#   WHEELS=science bash benchmarks/gpu_wheels.sh   # for benchmarks/science_gpu.sh: the modules
#                       # its reduced run loads in every stage (-X importtime logs them), ~1 min
set -eu
PY=${PY:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
mkdir -p .whl
rm -f .whl/modules.txt .whl/*.whl  # only this run's set travels
if [ "${WHEELS:-}" = science ]; then
    tmp=$(mktemp -d)
    BENCH_REDUCED=1 PY="$PY" OUT="$tmp/out" WORK="$tmp/work" WHEELS_DIR="$tmp/none" \
        PYTHONPROFILEIMPORTTIME=1 bash benchmarks/science_gpu.sh >"$tmp/run.log" 2>&1 ||
        { echo "the reduced science run failed: $tmp/out"; exit 1; }
    grep -h '^import time:.*|' "$tmp"/out/*.log "$tmp"/out/*.txt | awk '{print $NF}' |
        sort -u >.whl/modules.txt
    rm -rf "$tmp"
fi
# The distributions whose modules the benchmark loads, minus what the image holds.
"$PY" - >.whl/needed.txt <<'EOF'
import argparse, importlib.metadata as md, os, re, sys, tempfile
from pathlib import Path

sys.path[:0] = ["tests", "benchmarks"]
import train_step  # noqa: E402
from hyperkd.model.train import trainer  # noqa: E402,F401

loaded = set()
if os.environ.get("WHEELS") == "science":  # and what the science run's stages loaded
    loaded = set(Path(".whl/modules.txt").read_text().split())
elif os.environ.get("WHEELS") != "core":
    with tempfile.TemporaryDirectory() as d:  # the store build loads rioxarray & co lazily
        args = argparse.Namespace(fed_size=32, fed_scenes=1, bands=4, patch=8, tile=32)
        train_step.build_tile_store(Path(d) / "t.zarr", args)
image = set(re.findall(r"[\w.-]+", Path("/work/.library/device/KINDS.md").read_text().split(
    "Packages:")[1].split("\n")[0]))
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
image = {norm(n) for n in image}
owners = md.packages_distributions()
dists = {norm(d) for m in loaded | set(sys.modules) for d in owners.get(m.split(".")[0], [])}
pins = dict(ln.split("==") for ln in Path("constraints.txt").read_text().split() if "==" in ln)
pins = {norm(k): v for k, v in pins.items()}
for d in sorted(dists - image - {"hyperkd"}):
    print(f"{d}=={pins.get(d) or md.version(d)}")
EOF
# Loaded only because they are installed here (rasterio's session tries boto3, pandas pytz,
# dask distributed and its deps): left behind, so the carried total stays under the device's
# 64 MiB. The reduced science run passes with these imports blocked (a meta-path finder that
# raises ImportError for them), so each is optional there.
SKIP=${SKIP:-boto3 botocore s3transfer jmespath pytz distributed tornado zict locket cffi pycparser}
grep -v '^tile store' .whl/needed.txt | grep -vE "^($(echo "$SKIP" | tr ' ' '|'))==" \
    >.whl/needed.tmp || true
mv .whl/needed.tmp .whl/needed.txt
echo "$(wc -l <.whl/needed.txt) distributions: $(tr '\n' ' ' <.whl/needed.txt)"
[ "${DRY_RUN:-0}" = 1 ] && exit 0
while read -r spec; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d .whl "$spec" || echo "no wheel for $spec (fetch it by hand)"
done <.whl/needed.txt
du -sh .whl
