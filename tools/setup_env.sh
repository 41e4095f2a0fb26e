#!/usr/bin/env bash
# Build (or verify) the project's one environment in .venv/ at the repo root.
#
# Idempotent: when the stamp matches the requirement files and the environment
# passes tools/check_env.py, it exits in seconds.
#
# mmcv 2.1.0 ships only as source on the registry; its wheel is built once with
# compiled CPU ops (about 9 minutes on 2 cores) and cached outside the repo in
#   ${MMMETAFORMER_CACHE:-~/.cache/mmmetaformer}/wheels/torch-2.5.1/
# A pre-built wheel is picked up from any directory in PIP_FIND_LINKS or from
# ../shared/wheels, if present.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${MMMETAFORMER_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.5.1
MMCV_VERSION=2.1.0
CACHE=${MMMETAFORMER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmmetaformer}
WHEEL_CACHE=$CACHE/wheels/torch-$TORCH_VERSION
STAMP=$VENV/.mmmetaformer-env-stamp

log() { printf '[setup_env] %s\n' "$*"; }

want_stamp=$(cat tools/setup_env.sh requirements/*.txt setup.py | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ]; then
    if "$VENV/bin/python" tools/check_env.py --quiet; then
        log "environment in $VENV is up to date"
        exit 0
    fi
    log "environment check failed; repairing"
fi

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
CONSTRAINTS=(-c requirements/constraints.txt)

# Directories that may already hold an mmcv wheel built against this torch.
find_dirs=("$WHEEL_CACHE")
for d in ${PIP_FIND_LINKS:-}; do [ -d "$d" ] && find_dirs+=("$d"); done
[ -d "$ROOT/../shared/wheels" ] && find_dirs+=("$ROOT/../shared/wheels")

log "installing build tools and torch $TORCH_VERSION"
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" "setuptools<70" wheel ninja
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" -r requirements/torch.txt

mmcv_wheel=""
for d in "${find_dirs[@]}"; do
    for w in "$d"/mmcv-"$MMCV_VERSION"-*.whl; do
        [ -f "$w" ] && { mmcv_wheel=$w; break 2; }
    done
done
if [ -z "$mmcv_wheel" ]; then
    log "no cached mmcv $MMCV_VERSION wheel; building it with compiled ops (about 9 min on 2 cores)"
    mkdir -p "$WHEEL_CACHE"
    build_dir=$(mktemp -d)
    # No build isolation: an isolated build silently drops mmcv._ext.
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" wheel -q --no-build-isolation --no-deps \
        "mmcv==$MMCV_VERSION" -w "$build_dir"
    mv "$build_dir"/mmcv-"$MMCV_VERSION"-*.whl "$WHEEL_CACHE"/
    rm -rf "$build_dir"
    mmcv_wheel=$(ls "$WHEEL_CACHE"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)
fi
log "using mmcv wheel $mmcv_wheel"

log "installing the OpenMMLab stack, timm and test tools"
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" "$mmcv_wheel" \
    -r requirements/mminstall.txt -r requirements/runtime.txt -r requirements/tests.txt
# mmpretrain is only a reference implementation for tests; its own pins would pull
# a different mmcv, so it goes in without dependencies (plus what it imports).
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" --no-deps -r requirements/optional.txt
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" -r requirements/mmpretrain_imports.txt
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" --no-deps -e .

"$VENV/bin/python" tools/check_env.py
echo "$want_stamp" > "$STAMP"
log "environment ready: $VENV"
