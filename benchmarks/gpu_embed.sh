#!/usr/bin/env bash
# The GPU check of hyperkd embed (issue 15), in one call: the CUDA run of a small factory cube
# equals the CPU run (tests/test_embed.py, marked gpu), then embed/floor on CUDA for the base
# student (benchmarks/embed.py --device cuda).
#
#   bash benchmarks/gpu_embed.sh        # on the GPU machine, from the repo root (~3 min)
#
# Environment: OUT (results folder; default ./gpu-out), PY (default python3). Carried wheels in
# .whl/ (benchmarks/gpu_wheels.sh) are installed first, like benchmarks/gpu_train_step.sh.
# Writes $OUT/embed_test.txt, $OUT/embed_bench.txt and prints their last lines.
set -u
PY=${PY:-python3}
OUT=${OUT:-$PWD/gpu-out}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
mkdir -p "$OUT"
source "$(dirname "$0")/gpu_env.sh"
gpu_install_wheels || { echo "wheels: install failed"; exit 1; }
if ! "$PY" -P -c "import hyperkd.model.embed" >/dev/null 2>&1; then  # the repo, as in gpu_train_step.sh
    gpu_install_repo || { echo "repo: install failed"; exit 1; }
fi
export PYTHONPATH=$PWD/tests${PYTHONPATH:+:$PYTHONPATH}
timeout 150 "$PY" -P -m pytest -q -p no:cacheprovider -m gpu tests/test_embed.py \
    >"$OUT/embed_test.txt" 2>&1
echo "test: $(tail -n 1 "$OUT/embed_test.txt")"
timeout 150 "$PY" benchmarks/embed.py --device cuda --preset base --size 1024 --scenes 2 \
    --batch-size 64 --repeats 3 >"$OUT/embed_bench.txt" 2>&1
tail -n 4 "$OUT/embed_bench.txt"
