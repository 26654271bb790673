#!/usr/bin/env bash
# Download, here (where PyPI is reachable), the wheels that deploy/gpu-bench.sh needs on a GPU machine
# whose image lacks them and which has no network: deploy/gpu-wheels.txt, for that machine's Python
# (PYVER, default 3.12) on x86-64 Linux, into DIR (default .whl, git-ignored). Carry DIR to the GPU
# machine with the checkout; gpu-bench.sh installs from it (GPU_WHEELS=DIR) before its first step.
#
#   deploy/gpu-wheels.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PYVER=${PYVER:-3.12}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
grep -v '^\s*#' deploy/gpu-wheels.txt | grep -v '^\s*$' | while read -r req; do
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version "$PYVER" --implementation cp "${platforms[@]}" -d "$DIR" "$req"
done
echo "$(ls "$DIR"/*.whl | wc -l) wheels in $DIR ($(du -sh "$DIR" | cut -f1)) for Python $PYVER:"
ls "$DIR"
