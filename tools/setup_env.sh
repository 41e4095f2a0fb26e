#!/usr/bin/env bash
# Build (or verify) the project's environment for one tested stack.
#
#   bash tools/setup_env.sh [current|classic]      (default: $STACK, else current)
#
# The stacks are pip constraint files in requirements/stacks/ (README
# "Supported versions"). Each gets its own virtual environment, .venv-<stack>/
# at the repo root (override with MMMETAFORMER_VENV).
#
# Idempotent: when the stamp matches the requirement files and the environment
# passes tools/check_env.py, it exits in seconds.
#
# mmcv 2.1.0 ships only as source; its wheel is built once per torch version
# with compiled CPU ops (about 9 minutes on 2 cores) and cached outside the repo in
#   ${MMMETAFORMER_CACHE:-~/.cache/mmmetaformer}/wheels/torch-<version>/
# A pre-built wheel is picked up from any directory in PIP_FIND_LINKS or from
# ../shared/wheels/torch-<version>/, if present.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STACK=${1:-${STACK:-current}}
STACK_FILE=requirements/stacks/$STACK.txt
if [ ! -f "$STACK_FILE" ]; then
    valid=$(cd requirements/stacks && ls *.txt | sed 's/\.txt$//' | tr '\n' ' ')
    echo "[setup_env] unknown stack '$STACK'; choose one of: $valid" >&2
    exit 2
fi
VENV=${MMMETAFORMER_VENV:-$ROOT/.venv-$STACK}
PYTHON=${PYTHON:-python3}
pinned() { sed -n "s/^$1==\([^ #]*\).*/\1/p" "$STACK_FILE"; }
TORCH_VERSION=$(pinned torch)
MMCV_VERSION=$(pinned mmcv)
CACHE=${MMMETAFORMER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmmetaformer}
WHEEL_CACHE=$CACHE/wheels/torch-$TORCH_VERSION
STAMP=$VENV/.mmmetaformer-env-stamp

log() { printf '[setup_env:%s] %s\n' "$STACK" "$*"; }

want_stamp=$(cat tools/setup_env.sh "$STACK_FILE" requirements/*.txt setup.py | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ]; then
    if "$VENV/bin/python" tools/check_env.py --quiet; then
        log "environment in $VENV is up to date"
        exit 0
    fi
    log "environment check failed; repairing"
fi

if [ ! -x "$VENV/bin/python" ]; then
    # The registry's torch wheels carry CUDA libraries: an environment takes
    # about 6 GB. Say so up front instead of failing half-way with ENOSPC.
    free_kb=$(df -Pk "$(dirname "$VENV")" | awk 'NR==2 {print $4}')
    if [ "${free_kb:-0}" -lt $((7 * 1024 * 1024)) ]; then
        log "warning: $((free_kb / 1024 / 1024)) GB free next to $VENV; an environment needs about 6 GB"
    fi
    log "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
CONSTRAINTS=(-c "$STACK_FILE")

# Directories that may already hold an mmcv wheel built against this torch.
find_dirs=("$WHEEL_CACHE")
for d in ${PIP_FIND_LINKS:-}; do [ -d "$d" ] && find_dirs+=("$d"); done
[ -d "$ROOT/../shared/wheels/torch-$TORCH_VERSION" ] && find_dirs+=("$ROOT/../shared/wheels/torch-$TORCH_VERSION")

log "installing build tools and torch $TORCH_VERSION"
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" setuptools wheel ninja
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" torch torchvision

# The C++ standard mmcv's ops compile with. mmcv 2.1.0's setup.py hard-codes
# -std=c++17 for every torch newer than 1.12 (and torch's BuildExtension then
# drops its own flag); torch >= 2.13's headers require C++20.
cxx_standard=$("$VENV/bin/python" - "$TORCH_VERSION" <<'PY'
import sys
major, minor = (int(p) for p in sys.argv[1].split('.')[:2])
print('c++20' if (major, minor) >= (2, 13) else 'c++17')
PY
)

mmcv_wheel=""
for d in "${find_dirs[@]}"; do
    for w in "$d"/mmcv-"$MMCV_VERSION"-*.whl; do
        [ -f "$w" ] && { mmcv_wheel=$w; break 2; }
    done
done
if [ -z "$mmcv_wheel" ]; then
    log "no cached mmcv $MMCV_VERSION wheel for torch $TORCH_VERSION; building it with compiled ops ($cxx_standard, about 9 min on 2 cores)"
    mkdir -p "$WHEEL_CACHE"
    build_dir=$(mktemp -d)
    "${PIP[@]}" download -q --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$build_dir"
    tar -xzf "$build_dir"/mmcv-"$MMCV_VERSION".tar.gz -C "$build_dir"
    src=$build_dir/mmcv-$MMCV_VERSION
    if [ "$cxx_standard" != c++17 ]; then
        grep -q -- "-std=c++17" "$src/setup.py" || { log "mmcv's setup.py has no -std=c++17 to replace"; exit 1; }
        sed -i "s/-std=c++17/-std=$cxx_standard/g" "$src/setup.py"
    fi
    # No build isolation: an isolated build silently drops mmcv._ext.
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" wheel -q --no-build-isolation --no-deps \
        "$src" -w "$build_dir/out"
    mv "$build_dir"/out/mmcv-"$MMCV_VERSION"-*.whl "$WHEEL_CACHE"/
    rm -rf "$build_dir"
    mmcv_wheel=$(ls "$WHEEL_CACHE"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)
fi
log "using mmcv wheel $mmcv_wheel"

log "installing the OpenMMLab stack, timm, test and lint tools"
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" "$mmcv_wheel" \
    -r requirements/mminstall.txt -r requirements/runtime.txt -r requirements/tests.txt \
    -r requirements/lint.txt
# mmpretrain is only a reference implementation for tests; its own pins would pull
# a different mmcv, so it goes in without dependencies (plus what it imports).
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" --no-deps -r requirements/optional.txt
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" -r requirements/mmpretrain_imports.txt
# No build isolation: the environment has the setuptools setup.py needs.
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" --no-deps --no-build-isolation -e .

"$VENV/bin/python" tools/check_env.py
echo "$want_stamp" > "$STAMP"
log "environment ready: $VENV"
