"""A whole call (real VAD, Whisper, SmolLM2) whose agent speaks through a piper `tts-serve`: the
caller hears the same reply, sample for sample, as with piper in process."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agent_runtime.config import CallerTurn
from agent_runtime.demo.run import CallerLine, run_call
from agent_runtime.tts.remote.synthesizer import RemoteSynthesizer
from agent_runtime.turn.session import Engines
from tests.turn.conftest import fast_config


def _agent_audio(result) -> np.ndarray:
    frames = [pcm for _, pcm in result.session.transport.agent_track.frames]
    return np.concatenate(frames) if frames else np.zeros(0, np.int16)


@pytest.mark.slow
def test_call_over_remote_tts_equals_local(real_engines, say, piper_server) -> None:
    line = CallerLine(
        CallerTurn(text="What time do you open tomorrow?"), [say("What time do you open tomorrow?")]
    )
    config = fast_config()

    local = asyncio.run(run_call(config, real_engines, [line]))

    async def remote_call():
        synth = RemoteSynthesizer([piper_server.url])
        engines = Engines(real_engines.recognizer, real_engines.llm, synth)
        try:
            return await run_call(config, engines, [line])
        finally:
            await synth.aclose()

    remote = asyncio.run(remote_call())
    (lt,), (rt,) = local.metrics.turns, remote.metrics.turns
    assert rt.agent_text and rt.agent_text == lt.agent_text
    assert not rt.interrupted and rt.tts_error is None
    assert [m.content for m in remote.session.history] == [m.content for m in local.session.history]
    a, b = _agent_audio(remote), _agent_audio(local)
    assert np.abs(a).max() > 1000
    assert np.array_equal(np.trim_zeros(a), np.trim_zeros(b))
