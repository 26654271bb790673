# Two commands matter: `make demo` (set up + a voice call you can hear) and `make test` (set up + tests).
.PHONY: setup demo test test-fast lint bench

setup:
	@bash deploy/setup.sh

demo: setup
	.venv/bin/agent-runtime demo --out out/demo_call.wav

test: setup
	.venv/bin/ruff check .
	HF_HUB_OFFLINE=1 .venv/bin/pytest -q -m "not gpu"

test-fast: setup
	HF_HUB_OFFLINE=1 .venv/bin/pytest -q -m "not slow and not gpu"

lint: setup
	.venv/bin/ruff check .

bench: setup
	.venv/bin/agent-runtime bench voice
	.venv/bin/agent-runtime bench overhead
