"""Fixtures for the LLM tests: the model loaded once, and a real `agent-runtime llm-serve` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.llm.local import _pin_worker_threads, default_threads
from agent_runtime.llm.smollm import LocalLM


@pytest.fixture(scope="session")
def local_lm() -> LocalLM:
    # The tests switch precisions explicitly; the baseline is fp32 prefill and fp16 decode copies.
    return LocalLM.load(max_context=1024, decode_dtype="float16", prefill_dtype="float32")


@pytest.fixture(scope="session")
def on_worker() -> Iterator[Callable[..., Any]]:
    """Run a callable on a worker thread with the backend's torch thread count (as in production)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-llm") as pool:
        _pin_worker_threads(pool, default_threads())
        yield lambda fn, *args, **kwargs: pool.submit(fn, *args, **kwargs).result()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (http://127.0.0.1:PORT/v1) of an `agent-runtime llm-serve` subprocess."""
    port = free_port()
    exe = Path(sys.executable).with_name("agent-runtime")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agent_runtime.cli"]
    log_path = tmp_path_factory.mktemp("llm-serve") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*cmd, "llm-serve", "--port", str(port), "--max-context", "1024"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llm-serve exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llm-serve not healthy after 90 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
