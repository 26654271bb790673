#!/usr/bin/env bash
# Install Debian's Chromium (driven over its DevTools protocol) for the browser test
# (tests/server/test_browser.py). Idempotent: does nothing when chromium is already installed.
# Needs root (or sudo) and apt; on other systems install Chromium yourself, the test finds
# `chromium`, `chromium-browser` or `google-chrome` on PATH and is skipped without one.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "[install-browser] chromium already installed: $(chromium --version 2>/dev/null || true)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "[install-browser] need root or sudo to apt-get install chromium" >&2; exit 1; }
  SUDO="sudo"
fi
echo "[install-browser] apt-get install chromium" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >&2
echo "[install-browser] done: $(chromium --version 2>/dev/null || true)" >&2
