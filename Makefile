# Two commands matter: `make demo` (set up + a voice call you can hear) and `make test` (set up + tests).
# `make test` also installs Debian's chromium for the browser test (deploy/install-browser.sh).
.PHONY: setup browser demo test test-fast lint bench

setup:
	@bash deploy/setup.sh

browser:
	@bash deploy/install-browser.sh

demo: setup
	.venv/bin/agent-runtime demo --out out/demo_call.wav

test: setup browser
	.venv/bin/ruff check .
	HF_HUB_OFFLINE=1 .venv/bin/pytest -q -n 2 -m "not gpu" --durations=15

test-fast: setup
	HF_HUB_OFFLINE=1 .venv/bin/pytest -q -n 2 -m "not slow and not gpu"

lint: setup
	.venv/bin/ruff check .

bench: setup
	.venv/bin/agent-runtime bench voice
	.venv/bin/agent-runtime bench overhead
	.venv/bin/agent-runtime bench media
