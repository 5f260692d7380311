# Sourced by the benchmarks/gpu_*.sh scripts (bash): the two steps that make hyperkd importable
# on the device machine, whose image lacks some of its dependencies. Both need PY and OUT set.
#
#   gpu_install_wheels [DIR]   the wheels carried in DIR (default .whl, from gpu_wheels.sh) into
#                              /tmp/site, put first on PYTHONPATH; nothing to do without wheels
#   gpu_install_repo           hyperkd itself into /tmp/hyperkd-site (log: $OUT/install.log), for
#                              an image where `python -P -c "import hyperkd..."` fails
#
# Each returns non-zero when pip fails; the caller says so in its own words and exits.

gpu_install_wheels() {
    local dir=${1:-.whl}
    compgen -G "$dir/*.whl" >/dev/null || return 0
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$dir"/*.whl || return 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
}

gpu_install_repo() {
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
        --target /tmp/hyperkd-site . >"$OUT/install.log" 2>&1 || return 1
    export PYTHONPATH=/tmp/hyperkd-site:${PYTHONPATH:-}
}
