#!/usr/bin/env bash
# `make bench-accel`: the accelerator benchmark set from a fresh copy of the tree.
#
# The interpreter is the first that has avjax's dependencies and whose JAX sees a GPU / TPU:
#   1. $ACCEL_PY if set, else .venv-accel, .venv and python3, as they are;
#   2. python3 with the wheels in .whl/ (`make accel-wheels`, fetched on a machine where pip
#      reaches an index) installed beside it into .accel-site/: for accelerator machines with
#      no network, whose image has JAX but not every package avjax imports;
#   3. a new .venv-accel with the $ACCEL extra (cuda12, cuda13 or tpu; needs a network).
# Then `benchmarks/run_all.py --accel --out $ACCEL_OUT` (one JSON per benchmark, a table).
set -u
cd "$(dirname "$0")/.."
ACCEL=${ACCEL:-cuda12}
ACCEL_OUT=${ACCEL_OUT:-benchmarks/results/run_accel}
WHEELS=.whl
SITE=$PWD/.accel-site
PROBE='import flax, optax, ml_collections, librosa, jax, sys; sys.exit(jax.default_backend() == "cpu")'

sees_accel() { [ -x "$(command -v "$1")" ] && "$1" -c "$PROBE" 2>/dev/null; }

py=""
if [ -n "${ACCEL_PY:-}" ]; then
    if ! sees_accel "$ACCEL_PY"; then
        echo "error: ACCEL_PY=$ACCEL_PY: no avjax dependencies, or its JAX sees no GPU / TPU" >&2
        exit 1
    fi
    py=$ACCEL_PY
fi
if [ -z "$py" ]; then
    for p in .venv-accel/bin/python .venv/bin/python python3; do
        if sees_accel "$p"; then py=$p; break; fi
    done
fi
if [ -z "$py" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "== installing $WHEELS/*.whl beside python3 (into $SITE)"
    if python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" \
        "$WHEELS"/*.whl; then
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        if sees_accel python3; then py=python3; else unset PYTHONPATH; fi
    fi
fi
if [ -z "$py" ]; then
    echo "== installing jax[$ACCEL] into .venv-accel"
    [ -x .venv-accel/bin/python ] || python3 -m venv .venv-accel || exit 1
    .venv-accel/bin/python -m pip install -q --upgrade pip &&
        .venv-accel/bin/python -m pip install -q -c constraints.txt -e ".[$ACCEL]" || exit 1
    sees_accel .venv-accel/bin/python && py=.venv-accel/bin/python
fi
if [ -z "$py" ]; then
    echo "error: no interpreter with avjax's dependencies sees a GPU or TPU" >&2
    exit 1
fi
echo "== $py: $("$py" -c 'import jax; print(jax.devices()[0].device_kind)')"
exec "$py" benchmarks/run_all.py --accel --out "$ACCEL_OUT"
