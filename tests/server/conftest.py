"""A call server on 127.0.0.1 with instant engines, and a caller's voice, for the server tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import pytest

from agent_runtime.asr.base import Transcript
from agent_runtime.bench.instant import InstantLLM, InstantRecognizer, InstantSynthesizer
from agent_runtime.config import load_config
from agent_runtime.server.app import CallServer
from agent_runtime.server.slowloris import start_http
from agent_runtime.turn.session import Engines

SENTENCE = "What time do you open tomorrow?"
LONG_REPLY = " ".join(["We are open from nine in the morning until six in the evening, every day but Sunday."] * 4)


class HearingRecognizer(InstantRecognizer):
    """Instant recognizer that remembers how much caller audio each turn handed it."""

    def __init__(self) -> None:
        super().__init__(SENTENCE)
        self.heard_seconds: list[float] = []

    def transcribe(self, audio: np.ndarray) -> Transcript:
        self.heard_seconds.append(len(audio) / self.sample_rate)
        return super().transcribe(audio)


def make_engines(reply: str | None = None) -> Engines:
    llm = InstantLLM(reply) if reply else InstantLLM()
    return Engines(recognizer=HearingRecognizer(), llm=llm, synthesizer=InstantSynthesizer())


@dataclass
class Running:
    server: CallServer
    url: str

    async def wait_idle(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.server.calls:
                await asyncio.sleep(0.05)


@asynccontextmanager
async def running_server(
    server_overrides: dict | None = None,
    *,
    engines: Engines | None = None,
    load: Callable[[], Engines] | None = None,
    environ: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[Running]:
    cfg = load_config(None, {"server": {"loopback_only": True, **(server_overrides or {})}})
    eng = engines or make_engines()
    server = CallServer(cfg, load or (lambda: eng), host=host, environ=environ or {})
    runner = await start_http(server.app, "127.0.0.1", 0, header_timeout_s=cfg.server.header_timeout_s)
    port = runner.addresses[0][1]
    try:
        if load is None:
            async with asyncio.timeout(5):
                while server.engines is None:
                    await asyncio.sleep(0.01)
        yield Running(server, f"http://127.0.0.1:{port}")
    finally:
        await server.drain(1.0)
        await runner.cleanup()


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """The caller's sentence: piper speech, int16 at 16 kHz (with 0.8 s of trailing silence)."""
    from agent_runtime.demo.run import synthesize_text
    from agent_runtime.tts.registry import create_synthesizer

    out: list[np.ndarray] = []

    def work() -> None:
        synth = create_synthesizer("piper", {})
        out.append(asyncio.run(synthesize_text(synth, SENTENCE)))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return np.concatenate([out[0], np.zeros(12_800, dtype=np.int16)])
