#!/usr/bin/env bash
# The GPU-scale science run (issue 13, item 5), in one call, within BUDGET_S seconds: build the
# demo data on the machine (scene factory -> hyperkd ingest -> hyperkd tiles, no Prefect),
# pretrain the tiny teacher (hyperkd train-teacher), then benchmarks/science.py's three arms
# (masking, distillation with a trained and a random teacher, full HyperKD) over three seeds,
# in bf16 autocast on CUDA (the trainer's); prints the table, and the MFU of benchmarks/
# train_step.py's tiny HyperKD step at the same tile, patch and batch (its full 218-band
# embedding, not the students' 16 spectral components), eager and compiled.
#
# Here, from the repo root, first (makes .whl/: 59 wheels, 62 MiB on 2026-11-28, the repo ~2 MB;
# the device has no registry and takes 64 MiB):
#   WHEELS=science bash benchmarks/gpu_wheels.sh
# then the device tool's `run` with carry [".whl"] and timeout_s 600:
#   BUDGET_S=450 OUT=$OUT bash benchmarks/science_gpu.sh
# and, on any CPU, the same stages at tiny sizes (tests/test_science_gpu_script.py):
#   BENCH_REDUCED=1 bash benchmarks/science_gpu.sh
#
# Environment: OUT (results folder; default ./science-gpu-out), PY (default python3), WORK
# (data and runs; default /tmp/hyperkd-science), BUDGET_S (default 450): a stage starts only if
# its usual time is left and is cut off at the budget; SIZE, STEPS, BATCH, TEACHER_STEPS,
# TEACHER_BATCH, SEEDS, STUDENTS (default: every arm), COMPILE (1: students and teacher
# compiled) override the sizes below; WHEELS_DIR (default .whl) holds the wheels. Writes
# $OUT/summary.txt (one line per stage: its last line, or why it was skipped), one log per stage,
# $OUT/gpu.txt and $OUT/science_table.md; prints the summary last.
set -u
start=$(date +%s)
PY=${PY:-python3}
OUT=${OUT:-$PWD/science-gpu-out}
WORK=${WORK:-/tmp/hyperkd-science}
BUDGET=${BUDGET_S:-450}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
mkdir -p "$OUT" "$WORK"
: >"$OUT/summary.txt"
note() { echo "$*" | tee -a "$OUT/summary.txt"; }

# --- dependencies: the device image has torch, timm, xarray...; the rest travels as wheels
WHEELS_DIR=${WHEELS_DIR:-.whl}
source "$(dirname "$0")/gpu_env.sh"
gpu_install_wheels "$WHEELS_DIR" || { note "wheels: install failed"; exit 1; }
probe() { # the device, and whether every stage's imports load (one interpreter start)
    "$PY" -P - >"$OUT/gpu.txt" 2>&1 <<'EOF'  # -P: the repo root would shadow the install
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs")
import rioxarray, pyproj, hyperkd.cli  # noqa: E401,F401
import hyperkd.pipeline.synthetic.products, hyperkd.pipeline.tiles.build  # noqa: E401,F401
import hyperkd.model.train.runs, hyperkd.model.evaluate.reconstruction  # noqa: E401,F401
EOF
}
if ! probe; then
    gpu_install_repo || { note "repo: install failed"; exit 1; }
    probe || { note "imports failed: $(tail -1 "$OUT/gpu.txt")"; exit 1; }
fi
command -v nvidia-smi >/dev/null && nvidia-smi >>"$OUT/gpu.txt" 2>&1
note "device: $(head -2 "$OUT/gpu.txt" | tr '\n' ' ')"
cuda=$(grep -q "^NVIDIA" "$OUT/gpu.txt" && echo 1 || echo 0)

# --- sizes: the real ones (estimates for one H200), or a reduced run that shows the script
# works on a CPU. Compile is off by default on the GPU: 9 x 3 short runs of a tiny model would
# each pay its own compile, more than it saves (gpu_train_step.sh's compiled stage alone took
# minutes); the mfu stages time eager against compiled on the same step, so the next run can say.
if [ "${BENCH_REDUCED:-0}" = 1 ]; then
    : "${SIZE:=small}" "${STEPS:=2}" "${BATCH:=2}" "${TEACHER_STEPS:=2}" "${TEACHER_BATCH:=2}"
    : "${SEEDS:=0}" "${STUDENTS:=random kld-random}" "${COMPILE:=0}"
    device=(--device cpu) workers=2
    need=(30 60 60 30 60)
else
    # large: 1024 px, 2 scenes -> 217 train / 34 val / 43 test tiles of 64 px (medium gives 50
    # train tiles, 11 test: too few to tell students apart). The data took ~95 s on 2 busy CPU
    # cores. Estimates, not readings: tiny at 64 tokens is launch-bound on an H200 (~60 MAE,
    # ~25 HyperKD steps/s eager, RESULTS.md), so 9 students x 300 steps + evaluation ~2 min a
    # seed: two seeds surely, the third if the first two left room.
    : "${SIZE:=large}" "${STEPS:=300}" "${BATCH:=64}" "${TEACHER_STEPS:=1000}"
    : "${TEACHER_BATCH:=64}" "${SEEDS:=0 1 2}" "${STUDENTS:=}" "${COMPILE:=0}"
    device=(--device "$([ "$cuda" = 1 ] && echo cuda || echo auto)")
    workers=6  # 2 EnMAP + 4 HLS scenes at once: the machine has 16 cores
    need=(60 90 60 40 60)
fi
compiled=() teacher_compile=(--no-compile)
[ "$COMPILE" = 1 ] && compiled=(--compile) teacher_compile=(--compile)
REGION=$WORK/region-$SIZE
CUBE=$WORK/cube-$SIZE.zarr
TILES=$WORK/tiles-$SIZE.zarr
TEACHER=$WORK/teacher-$SIZE-$TEACHER_STEPS-$TEACHER_BATCH
RUNS=$WORK/science-$SIZE-$STEPS-$BATCH-c$COMPILE

stage() { # name, seconds it usually needs, command...
    local name=$1 want=$2 left rc
    shift 2
    left=$((BUDGET - ($(date +%s) - start)))
    if [ "$left" -lt "$want" ]; then
        note "$name: skipped, ${left} s left (needs ~${want} s)"
        return 1
    fi
    timeout "$left" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    note "$name (rc $rc, $(($(date +%s) - start)) s): $(tr '\r' '\n' <"$OUT/$name.log" |
        grep -v '^\s*$' | tail -1)"
    return $rc
}
HK=("$PY" -P -m hyperkd)  # timeout runs programs, not shell functions

# The demo region's bbox and dates, as flows/demo.py's demo_region derives them (no Prefect),
# and the demo's optimizer and peak lr for the teacher (science.py's defaults for the students).
where() {
    "$PY" -P - "$SIZE" <<'EOF'
import sys
from datetime import timedelta
from hyperkd import defaults
from hyperkd.pipeline.synthetic.factory import SIZES, RegionSpec
from hyperkd.pipeline.synthetic.stac import footprint_lonlat
spec = RegionSpec(size_px=SIZES[sys.argv[1]])
ring = footprint_lonlat(spec.crs_epsg, spec.enmap_transform, (spec.size_px, spec.size_px))
lon, lat = [p[0] for p in ring], [p[1] for p in ring]
d = spec.enmap_dates
print(f"{min(lon)},{min(lat)},{max(lon)},{max(lat)}",
      (min(d) - timedelta(days=10)).date(), (max(d) + timedelta(days=10)).date(), defaults.DEMO_LR, defaults.DEMO_OPTIMIZER)
EOF
}

# --- the data, built here (re-runs reuse what is there: demo-data and ingest are idempotent)
stage region "${need[0]}" "${HK[@]}" demo-data --out "$REGION" --size "$SIZE" || exit 1
read -r bbox day0 day1 lr optimizer < <(where) || { note "region: no bbox"; exit 1; }
stage ingest "${need[1]}" "${HK[@]}" ingest --source "$REGION/catalog.json" --region "$bbox" \
    --start "$day0" --end "$day1" --out "$CUBE" --tile-size 64 --workers "$workers" || exit 1
labels=()
for t in "$REGION"/truth/*.tif; do labels+=(--labels "$(basename "$t" .tif)=$t"); done
[ -d "$TILES" ] || stage tiles "${need[2]}" "${HK[@]}" tiles --cube "$CUBE" --out "$TILES" \
    --tile-size 64 --patch-size 8 --split-block 128 "${labels[@]}" || exit 1
note "tiles: $("$PY" -P -c 'import sys, zarr; print(zarr.open_group(sys.argv[1], mode="r").attrs["splits"])' "$TILES" 2>&1 | tail -1)"
[ -f "$TEACHER/model.safetensors" ] || stage teacher "${need[3]}" "${HK[@]}" train-teacher \
    --tiles "$TILES" --out "$TEACHER" --preset tiny --steps "$TEACHER_STEPS" \
    --batch-size "$TEACHER_BATCH" --lr "$lr" --optimizer "$optimizer" --no-progress "${device[@]}" "${teacher_compile[@]}" ||
    exit 1

# --- the three arms, one seed more per call (finished runs are reused), so a budget that runs
# out leaves the table of the seeds done; the step's MFU after the first seed.
mfu() { # name, seconds, train_step.py arguments: the tiny HyperKD step at this batch
    stage "$1" "$2" "$PY" benchmarks/train_step.py --presets tiny --tile 64 --patch 8 \
        --batch "$BATCH" --steps 20 --warmup 5 --repeats 3 --no-fed "${@:3}"
}
who=()
# shellcheck disable=SC2206  # word lists on purpose
[ -n "$STUDENTS" ] && who=(--students $STUDENTS)
done_seeds=() want=${need[4]}
for seed in $SEEDS; do
    done_seeds+=("$seed")
    t0=$(date +%s)
    stage "science-${#done_seeds[@]}seed" "$want" "$PY" benchmarks/science.py --tiles "$TILES" \
        --teacher "$TEACHER" --teacher-preset tiny --out "$RUNS" --steps "$STEPS" \
        --batch-size "$BATCH" --seeds "${done_seeds[@]}" "${who[@]}" "${device[@]}" \
        "${compiled[@]}" --md "$OUT/science_table.md" || break
    want=$(($(date +%s) - t0))  # the next seed costs about what this one did
    if [ "${#done_seeds[@]}" = 1 ] && [ "$cuda" = 1 ]; then mfu mfu 40 "${compiled[@]}"; fi
done
# Does compile pay? The same step compiled, if the seeds left room (its compile takes a while).
[ "$cuda" = 1 ] && [ "$COMPILE" = 0 ] && mfu mfu-compiled 90 --compile
echo "--- $OUT/science_table.md"
cat "$OUT/science_table.md" 2>/dev/null
note "total: $(($(date +%s) - start)) s"
echo "---"
cat "$OUT/summary.txt"
