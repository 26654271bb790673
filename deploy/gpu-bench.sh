#!/usr/bin/env bash
# GPU checks and benchmarks of the S2-Pro engine, for a machine with CUDA (none of this runs in CI):
# the gpu-marked tests, then bench-dual-ar and bench-synth at the full S2-Pro shapes (4.56B
# parameters, random weights, bf16). Each step's output goes to OUT_DIR/<step>.txt.
#
#   deploy/gpu-bench.sh [OUT_DIR] [STEP ...]
#       steps: tests dual-ar dual-ar-compiled batched synth synth-compiled (default: all)
#
# PYTHON (default python3) must have a CUDA build of torch and this package importable
# (`pip install -e .` in that environment, or PYTHONPATH=.).
set -uo pipefail
OUT=${1:-out/gpu}
shift || true
STEPS=${*:-tests dual-ar dual-ar-compiled batched synth synth-compiled}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
S2PRO_SHAPES=(--dim 2560 --heads 32 --kv-heads 8 --head-dim 128 --intermediate 9728 --slow-layers 36 --fast-layers 4)

step() {
    local name=$1
    shift
    echo "== $name: $*"
    local started=$SECONDS
    "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s" | tee -a "$OUT/$name.txt"
}

nvidia-smi -L | tee "$OUT/device.txt"
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/device.txt"
for s in $STEPS; do
    case $s in
        tests) step tests "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/s2pro/test_dual_ar_gpu.py ;;
        dual-ar) step dual-ar "$PY" -m agent_runtime.cli s2pro bench-dual-ar --preset s2pro --dtype bf16 \
            --device cuda --threads 0 --frames 32 --naive-frames 8 ;;
        dual-ar-compiled) step dual-ar-compiled "$PY" -m agent_runtime.cli s2pro bench-dual-ar --preset s2pro \
            --dtype bf16 --device cuda --threads 0 --frames 32 --naive-frames 8 --compile --compile-slow ;;
        batched) step batched "$PY" -m agent_runtime.cli s2pro bench-dual-ar --preset s2pro --dtype bf16 \
            --device cuda --threads 0 --frames 16 --naive-frames 2 --streams 8 ;;
        synth) step synth "$PY" -m agent_runtime.cli s2pro bench-synth --device cuda --dtype bf16 --threads 0 \
            "${S2PRO_SHAPES[@]}" ;;
        synth-compiled) step synth-compiled "$PY" -m agent_runtime.cli s2pro bench-synth --device cuda --dtype bf16 \
            --threads 0 --compile --compile-slow "${S2PRO_SHAPES[@]}" ;;
        *) echo "unknown step $s (tests dual-ar dual-ar-compiled batched synth synth-compiled)" >&2; exit 2 ;;
    esac
done
