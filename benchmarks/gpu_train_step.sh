#!/usr/bin/env bash
# The GPU run of the training-step benchmark (issue 16), in one call, within BUDGET_S seconds:
# base at batch 32 and 256, eager and compiled (HyperKD / MAE, MFU; compiled at 256 with the SSIM
# blur as stencils and as matrix products), and the real trainer fed by
# the tile loader against the same trainer on batches already on the GPU (fed/in_gpu), on a
# tile store built here from the repo's test scene factory.
#
#   bash benchmarks/gpu_train_step.sh            # on the GPU machine, from the repo root
#   BENCH_REDUCED=1 bash benchmarks/gpu_train_step.sh   # the same stages, tiny sizes, any CPU
#
# Environment: OUT (results folder; default ./gpu-out), PY (default python3), BUDGET_S (default
# 290): a stage starts only if its usual time is left, and is cut off at the budget;
# BENCH_STAGES: the stages to run (names as below; default all). Carried
# wheels in .whl/ (benchmarks/gpu_wheels.sh makes them) are installed first, then the repo.
# Writes $OUT/summary.txt (one line per stage: its last line, or why it was skipped), one log
# per stage and $OUT/gpu.txt; prints the summary last.
set -u
start=$(date +%s)
PY=${PY:-python3}
OUT=${OUT:-$PWD/gpu-out}
BUDGET=${BUDGET_S:-290}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DO_NOT_TRACK=1
mkdir -p "$OUT"
: >"$OUT/summary.txt"
note() { echo "$*" | tee -a "$OUT/summary.txt"; }

# --- dependencies: the device image has torch, timm, numba, xarray; the rest travels as wheels
source "$(dirname "$0")/gpu_env.sh"
gpu_install_wheels .whl || { note "wheels: install failed"; exit 1; }
probe() { # the device, and whether the repo imports (one interpreter start: they are slow)
    "$PY" -P - >"$OUT/gpu.txt" 2>&1 <<'EOF'  # -P: the repo root would shadow the install
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs")
import hyperkd.model.train.tasks  # noqa: F401
try:  # can this machine build a tile store (rioxarray, rasterio...)? Else: in-GPU stages only
    import rioxarray, hyperkd.pipeline.tiles.build, hyperkd.model.train.trainer  # noqa: E401,F401
    print("fed: ok")
except ImportError as exc:
    print("fed: no,", exc)
EOF
}
fed_ok() { grep -q "^fed: ok" "$OUT/gpu.txt"; }
if ! probe; then
    gpu_install_repo || { note "repo: install failed"; exit 1; }
    probe || { note "imports failed: $(tail -1 "$OUT/gpu.txt")"; exit 1; }
fi
command -v nvidia-smi >/dev/null && nvidia-smi >>"$OUT/gpu.txt" 2>&1
note "device: $(head -2 "$OUT/gpu.txt" | tr '\n' ' ')"

# --- sizes: the real ones, or a reduced run that shows the script works on a CPU
TILES=${TILES:-/tmp/hyperkd-bench-tiles.zarr}
if [ "${BENCH_REDUCED:-0}" = 1 ]; then
    common=(--presets tiny --bands 8 --tile 32 --patch 8 --threads 1)
    small=(--batch 2 --steps 1 --warmup 1 --repeats 1)
    large=(--batch 4 --steps 1 --warmup 1 --repeats 1)
    fed=(--fed --tiles "$TILES" --fed-scenes 2 --fed-size 64 --fed-steps 2 --fed-warmup 1 --fed-workers 0)
    need=(5 5 5 5)
else
    common=(--presets base)
    small=(--batch 32 --steps 10 --warmup 3 --repeats 3)
    large=(--batch 256 --steps 5 --warmup 2 --repeats 3)
    # 8 scenes of 512 px -> 128 tiles of 128 px: 4 batches of 32 per epoch
    fed=(--fed --tiles "$TILES" --fed-scenes 8 --fed-size 512 --fed-steps 30 --fed-warmup 5)
    need=(60 40 90 60)
fi

stage() { # name, seconds it usually needs, train_step.py arguments...
    local name=$1 want=$2 left rc
    shift 2
    if [ -n "${BENCH_STAGES:-}" ] && [[ " $BENCH_STAGES " != *" $name "* ]]; then
        return
    fi
    left=$((BUDGET - ($(date +%s) - start)))
    if [ "$left" -lt "$want" ]; then
        note "$name: skipped, ${left} s left (needs ~${want} s)"
        return
    fi
    timeout "$left" "$PY" benchmarks/train_step.py "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    note "$name (rc $rc, $(($(date +%s) - start)) s): $(grep -v '^\s*$' "$OUT/$name.log" | tail -1)"
}

if ! fed_ok; then
    note "fed stages run without --fed: the tile store cannot be built here (missing wheels)"
    fed=(--no-fed)
fi
stage b32-eager-fed "${need[0]}" "${common[@]}" "${small[@]}" "${fed[@]}"
stage b256-eager "${need[1]}" "${common[@]}" "${large[@]}" --no-fed
stage b256-compiled "${need[2]}" "${common[@]}" "${large[@]}" --compile --no-fed
stage b256-compiled-matrix "${need[2]}" "${common[@]}" "${large[@]}" --compile --compiled-blur matrix --no-fed
stage b32-compiled-fed "${need[3]}" "${common[@]}" "${small[@]}" --compile "${fed[@]}"
note "total: $(($(date +%s) - start)) s"
echo "---"
cat "$OUT/summary.txt"
