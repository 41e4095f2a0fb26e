#!/usr/bin/env bash
# The CUDA checks in one run: tests/test_cuda.py, then the CUDA backbone
# benchmark, with every table in one file. Sized for under 8 minutes on
# one GPU: each of the three steps is cut at 150 s. The benchmark runs
# the four timm families at 224x224 (batch 128) and 800x1216 (batch 2),
# ours eager/fused against timm eager in bf16 autocast with the training
# step and its peak memory, then ours compiled against timm compiled for
# PoolFormer-S12 and ConvFormer-S18 at 224x224 (compiling takes most of
# that step's time). Last, where TensorRT's trtexec is on PATH, an
# engine is built from the toy RetinaNet and Mask R-CNN exported by
# mmmetaformer.export (random weights; skipped with a line otherwise).
#
#   bash tools/analysis/gpu_check.sh [OUTPUT.md] [--dry-run]
#
# OUTPUT.md defaults to gpu_check.md. --dry-run prints the commands only.
# Exit status: 2 for bad arguments or no GPU, else the first failing
# step's status (every step still runs).
set -u

usage() {
    echo "usage: bash tools/analysis/gpu_check.sh [OUTPUT.md] [--dry-run]" >&2
    exit 2
}

out=gpu_check.md
dry_run=0
positional=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        -h|--help) usage ;;
        -*) echo "error: unknown option '$arg'; valid: --dry-run" >&2; exit 2 ;;
        *)
            positional=$((positional + 1))
            [ "$positional" -gt 1 ] && { echo "error: one OUTPUT.md at most, got '$arg' too" >&2; exit 2; }
            out="$arg" ;;
    esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-python}"
venv_python="$root/.venv-${STACK:-current}/bin/python"
[ -x "$venv_python" ] && [ -z "${PYTHON:-}" ] && python="$venv_python"

tests=("$python" -m pytest -q -p no:cacheprovider "$root/tests/test_cuda.py")
bench=("$python" "$root/tools/analysis/benchmark_backbone.py" --device cuda
       --amp bf16 --models poolformer_s12 poolformerv2_s12 convformer_s18
       caformer_s18 --sizes 224x224@128 800x1216@2
       --columns eager fused timm --runs 10 --warmup 3
       --json "${out%.md}.json")
compiled=("$python" "$root/tools/analysis/benchmark_backbone.py" --device cuda
          --amp bf16 --models poolformer_s12 convformer_s18
          --sizes 224x224@128 --columns eager compiled timm timm_compiled
          --modes eval --runs 10 --warmup 3
          --json "${out%.md}_compiled.json")

# TensorRT: a file with dynamic shapes needs an optimisation profile
# (min/opt/max of the input 'image').
trt_dir="${TMPDIR:-/tmp}/mmmetaformer_trt"
trt_export=("$python" -c "
import sys; sys.path.insert(0, '$root')
from mmmetaformer_tools.launch import load_config
from mmmetaformer.export.exporter import export_model
for name in ('retinanet_poolformer_s12_toy_coco', 'mask_rcnn_poolformer_s12_toy_coco'):
    cfg, scope = load_config('$root/configs/toy/' + name + '.py')
    export_model(cfg, scope, None, '$trt_dir/' + name + '.onnx', (128, 128), verify=False)
")
trtexec_cmd() {  # trtexec_cmd NAME
    echo trtexec --onnx="$trt_dir/$1.onnx" --saveEngine="$trt_dir/$1.engine" \
        --minShapes=image:1x3x64x64 --optShapes=image:1x3x128x128 \
        --maxShapes=image:2x3x256x256
}
trt_models=(retinanet_poolformer_s12_toy_coco mask_rcnn_poolformer_s12_toy_coco)

if [ "$dry_run" = 1 ]; then
    echo "${tests[*]}"
    echo "${bench[*]}"
    echo "${compiled[*]}"
    for name in "${trt_models[@]}"; do trtexec_cmd "$name"; done
    exit 0
fi

if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: no CUDA device visible to $python" >&2
    exit 2
fi

status=0
{
    echo "# GPU check, $(date -u +%Y-%m-%d)"
    echo
    echo "- GPU: $("$python" -c 'import torch; print(torch.cuda.get_device_name())')"
    echo "- commands:"
    echo "  - ${tests[*]}"
    echo "  - ${bench[*]}"
    echo "  - ${compiled[*]}"
    echo
    echo "## CUDA tests"
    echo
    echo '```'
} > "$out"
timeout 150 "${tests[@]}" 2>&1 | tail -n 40 | tee -a "$out"
rc=${PIPESTATUS[0]}
[ "$status" = 0 ] && status=$rc
echo '```' >> "$out"
for step in bench compiled; do
    echo >> "$out"
    declare -n cmd="$step"
    timeout 150 "${cmd[@]}" 2>&1 | tee -a "$out"
    rc=${PIPESTATUS[0]}
    [ "$status" = 0 ] && status=$rc
done
{
    echo
    echo "## TensorRT engines from the exported ONNX files"
    echo
    echo '```'
} >> "$out"
if command -v trtexec > /dev/null; then
    mkdir -p "$trt_dir"
    timeout 150 "${trt_export[@]}" 2>&1 | tail -n 5 | tee -a "$out"
    rc=${PIPESTATUS[0]}
    [ "$status" = 0 ] && status=$rc
    for name in "${trt_models[@]}"; do
        trtexec_cmd "$name" | tee -a "$out"
        # shellcheck disable=SC2046  # the command's words
        timeout 150 $(trtexec_cmd "$name") 2>&1 | tail -n 8 | tee -a "$out"
        rc=${PIPESTATUS[0]}
        [ "$status" = 0 ] && status=$rc
    done
else
    echo "trtexec not found on PATH: TensorRT engine step skipped" | tee -a "$out"
fi
echo '```' >> "$out"
echo "wrote $out (status $status)"
exit "$status"
