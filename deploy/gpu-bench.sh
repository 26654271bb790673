#!/usr/bin/env bash
# GPU checks and benchmarks of the S2-Pro engines, for a machine with CUDA (none of this runs in CI):
# the gpu-marked tests of the pooled serving engine, bench-serve (the pooled engine under Poisson
# call arrivals, full S2-Pro shapes: 4.56B parameters, random weights, bf16), the single-stream
# engine's gpu tests; older benchmarks on request. Each step's output goes to OUT_DIR/<step>.txt
# (bench-serve also writes OUT_DIR/bench-serve.json after every level, so a step cut short keeps what it measured); OUT_DIR/device.txt has the card (nvidia-smi),
# torch and the commit ("commit unknown" without a git checkout).
#
#   deploy/gpu-bench.sh [OUT_DIR] [STEP ...]
#       steps: serve-tests bench-serve tests (the default, < 8 min on one H100/H200)
#              bench-serve-profile dual-ar dual-ar-compiled batched synth synth-compiled
#              tts-wire (issue 12: S2-Pro shapes, random weights, in process vs behind tts-serve)
#       SERVE_DURATION (default 10): seconds of call arrivals per concurrency level of bench-serve
#
# PYTHON (default python3) must have a CUDA build of torch. The script runs from the checkout (this
# package is imported from it) and first checks that PYTHON can import what the steps need; where
# the machine's image lacks some of it and has no network (the lent GPU machines: no pydantic, soxr,
# soundfile, pytest-asyncio), run deploy/gpu-wheels.sh where PyPI is reachable and carry its .whl/
# folder with the checkout: the wheels found in GPU_WHEELS (default .whl) are installed into a
# temporary folder put on PYTHONPATH. A failed check stops the script before any GPU work.
set -uo pipefail
OUT=${1:-out/gpu}
shift || true
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.." || exit 2
STEPS=${*:-serve-tests bench-serve tests}
ALL_STEPS="serve-tests bench-serve tests bench-serve-profile dual-ar dual-ar-compiled batched synth synth-compiled tts-wire"
SERVE_DURATION=${SERVE_DURATION:-10}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
WHEELS=${GPU_WHEELS:-.whl}
NEEDED=numpy,yaml,pydantic,soxr,soundfile,aiohttp,tokenizers,safetensors,pytest,pytest_asyncio
S2PRO_SHAPES=(--dim 2560 --heads 32 --kv-heads 8 --head-dim 128 --intermediate 9728 --slow-layers 36 --fast-layers 4)

# step NAME LIMIT_S CMD...: run CMD (killed after LIMIT_S seconds), output to OUT/NAME.txt
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s" | tee -a "$OUT/$name.txt"
}

if ! "$PY" -c "import $NEEDED" 2>/dev/null && compgen -G "$WHEELS/*.whl" >/dev/null; then
    site=${TMPDIR:-/tmp}/agent-runtime-gpu-site
    echo "== installing the $(ls "$WHEELS"/*.whl | wc -l) wheels of $WHEELS into $site (PYTHONPATH)"
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$site" "$WHEELS"/*.whl
    export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import $NEEDED; import agent_runtime.cli"; then
    echo "gpu-bench: $PY cannot import what the steps need (above). Without network there, run" \
        "deploy/gpu-wheels.sh where PyPI is reachable and carry its .whl/ with the checkout" \
        "(GPU_WHEELS names another folder)." >&2
    exit 2
fi

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || nvidia-smi -L
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
    echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    date -u +"date %Y-%m-%dT%H:%M:%SZ"
} 2>&1 | tee "$OUT/device.txt"
SERVE=("$PY" -m agent_runtime.cli s2pro bench-serve --preset s2pro --dtype bf16 --device cuda --codec full)
for s in $STEPS; do
    case $s in
        serve-tests) step serve-tests 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/s2pro/serving ;;
        bench-serve) step bench-serve 270 "${SERVE[@]}" --concurrency 1 8 32 64 128 160 max \
            --duration "$SERVE_DURATION" --json "$OUT/bench-serve.json" ;;
        bench-serve-profile) step bench-serve-profile 150 "${SERVE[@]}" --concurrency 1 32 --duration 5 --profile \
            --max-streams 32 --json "$OUT/bench-serve-profile.json" ;;
        tests) step tests 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/s2pro/test_dual_ar_gpu.py ;;
        dual-ar) step dual-ar 300 "$PY" -m agent_runtime.cli s2pro bench-dual-ar --preset s2pro --dtype bf16 \
            --device cuda --threads 0 --frames 32 --naive-frames 8 ;;
        dual-ar-compiled) step dual-ar-compiled 300 "$PY" -m agent_runtime.cli s2pro bench-dual-ar --preset s2pro \
            --dtype bf16 --device cuda --threads 0 --frames 32 --naive-frames 8 --compile --compile-slow ;;
        batched) step batched 300 "$PY" -m agent_runtime.cli s2pro bench-dual-ar --preset s2pro --dtype bf16 \
            --device cuda --threads 0 --frames 16 --naive-frames 2 --streams 8 ;;
        synth) step synth 300 "$PY" -m agent_runtime.cli s2pro bench-synth --device cuda --dtype bf16 --threads 0 \
            "${S2PRO_SHAPES[@]}" ;;
        synth-compiled) step synth-compiled 300 "$PY" -m agent_runtime.cli s2pro bench-synth --device cuda --dtype bf16 \
            --threads 0 --compile --compile-slow "${S2PRO_SHAPES[@]}" ;;
        tts-wire) step tts-wire 300 "$PY" -m agent_runtime.cli bench tts-wire --config configs/s2pro-random.yaml \
            --streams 1 4 16 --rounds 3 --json-out "$OUT/tts-wire.json" ;;
        *) echo "unknown step $s ($ALL_STEPS)" >&2; exit 2 ;;
    esac
done
