#!/usr/bin/env bash
# Scale-out ingest on a machine with idle cores (issue 18): benchmarks/ingest.py --scale-out
# (serial, 2 local threads, 1 and 2 dask workers, 8 scenes of 256 px) on the 16-core device
# host, where the two workers do not share two busy cores as on the dev machine. No GPU is
# used; the device host is only the nearest machine with idle cores.
#
#   bash benchmarks/gpu_ingest.sh        # on the device machine, from the repo root (~2 min)
#
# Environment: OUT (results folder; default ./gpu-out), PY (default python3). Carried wheels in
# .whl/ (benchmarks/gpu_wheels.sh: the ingest needs rasterio, odc-stac, zarr, dask and
# distributed among them) are installed first, like benchmarks/gpu_embed.sh.
# Writes $OUT/ingest_scale_out.txt and prints its last lines.
set -u
PY=${PY:-python3}
OUT=${OUT:-$PWD/gpu-out}
export PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
mkdir -p "$OUT"
source "$(dirname "$0")/gpu_env.sh"
gpu_install_wheels || { echo "wheels: install failed"; exit 1; }
if ! "$PY" -P -c "import hyperkd.pipeline.ingest.parallel" >/dev/null 2>&1; then
    gpu_install_repo || { echo "repo: install failed"; exit 1; }
fi
"$PY" -P -c "import distributed, odc.stac, rasterio, zarr, hyperkd.pipeline.ingest.parallel" \
    || { echo "missing packages: carry their wheels in .whl/"; exit 1; }
nproc
timeout 400 "$PY" -P benchmarks/ingest.py --scale-out --repeats 3 >"$OUT/ingest_scale_out.txt" 2>&1
grep -v "distributed\." "$OUT/ingest_scale_out.txt" | tail -n 8
