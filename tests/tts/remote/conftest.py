"""Remote TTS tests: real `agent-runtime tts-serve` subprocesses on loopback.

Servers run on a private event loop in a background thread (their stdout is drained there), so one
server serves many tests while each test runs its own `asyncio.run`. Torch runs on one thread, as
in tests/s2pro (CPU bit-exactness of the S2-Pro comparisons is defined for one thread); the S2-Pro
server gets OMP_NUM_THREADS=1 for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from loadtest.server import Proc, start_tts_serve
from tests.conftest import REPO_ROOT

PIPER_TTS = {"engine": "piper", "options": {"noise_scale": 0.0, "noise_w_scale": 0.0}}
S2PRO_OPTIONS = {
    "checkpoint": "tests/fixtures/s2pro/tiny",
    "codec": "tests/fixtures/s2pro/codec_tiny.pth",
    "codec_config": "tests/fixtures/s2pro/codec_tiny.json",
    "seed": 7,
    "threads": 1,  # the model thread's count (module-scoped synthesizers are built before _one_thread runs)
}
S2PRO_TTS = {"engine": "s2pro", "options": S2PRO_OPTIONS}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ServerFarm:
    """Starts, kills and stops tts-serve processes from any thread (on its own loop)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tts-serve-farm", daemon=True)
        self.thread.start()
        self.procs: list[Proc] = []
        self._n = 0

    def _call(self, coro: Any, timeout: float = 180.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(
        self, tts: dict[str, Any], tts_server: dict[str, Any] | None = None, env: dict | None = None
    ) -> Proc:
        self._n += 1
        path = self.workdir / f"tts-serve-{self._n}.yaml"
        path.write_text(yaml.safe_dump({"tts": tts, "tts_server": tts_server or {}}))
        proc = self._call(start_tts_serve(config=path, env=env))
        self.procs.append(proc)
        return proc

    def kill(self, proc: Proc) -> None:
        """SIGKILL: the server dies without a word (its connections drop)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        self._call(proc.proc.wait(), 30)

    def stop(self, proc: Proc) -> None:
        self._call(proc.stop(), 60)

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                self.stop(proc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="session")
def farm(tmp_path_factory) -> Iterator[ServerFarm]:
    assert (REPO_ROOT / "loadtest" / "server.py").is_file()
    farm = ServerFarm(tmp_path_factory.mktemp("tts-serve"))
    yield farm
    farm.close()


@pytest.fixture(scope="session")
def piper_server(farm: ServerFarm) -> Proc:
    """One shared piper server (deterministic voice); tests must not kill it."""
    return farm.start(PIPER_TTS, {"max_streams": 64})


@pytest.fixture(scope="session")
def s2pro_server(farm: ServerFarm) -> Proc:
    return farm.start(S2PRO_TTS, env={"OMP_NUM_THREADS": "1"})


def get_json(url: str) -> dict[str, Any]:
    import json

    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted(p for p in (m.group(2) or "").split(",") if p))
        if got == want:
            return float(m.group(3))
    return 0.0


REPLY_DELTAS = [
    "Sure, I can", " help with that. We op", "en at nine tomorrow morning", " and close at six",
    " in the evening. Is there anything", " else I can do for you?",
]  # fmt: skip


async def speak(synth, deltas: list[str] = REPLY_DELTAS, **open_kw) -> list[tuple[str, Any]]:
    """Push `deltas` as an LLM would, flush, and collect (segment text, int16 audio) per segment."""
    import numpy as np

    stream = synth.open_stream(**open_kw)
    for delta in deltas:
        stream.push_text(delta)
        await asyncio.sleep(0)
    stream.flush()
    segments: dict[int, tuple[str, list]] = {}
    async for chunk in stream:
        text, blocks = segments.setdefault(chunk.segment_id, (chunk.text, []))
        assert chunk.text == text
        blocks.append(chunk.audio)
    return [(text, np.concatenate(blocks)) for _, (text, blocks) in sorted(segments.items())]
