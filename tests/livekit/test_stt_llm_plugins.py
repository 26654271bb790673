"""The STT and LLM plugins through livekit-agents' own `recognize()` and `LLMStream`."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("livekit.agents", reason="livekit-agents is not installed (deploy/setup.sh installs it)")
pytest.importorskip("livekit.plugins.agent_runtime", reason="livekit-plugins-agent-runtime is not installed")

from livekit import rtc
from livekit.agents import APIConnectionError, llm, stt
from livekit.plugins import agent_runtime

from agent_runtime.errors import BackendError
from agent_runtime.llm.base import LLMBackend


def _frames(pcm: np.ndarray, rate: int, channels: int = 1, frame_ms: int = 20) -> list[rtc.AudioFrame]:
    n = rate * frame_ms // 1000
    data = np.repeat(pcm[:, None], channels, axis=1) if channels > 1 else pcm[:, None]
    return [
        rtc.AudioFrame(data[i : i + n].tobytes(), rate, channels, len(data[i : i + n]))
        for i in range(0, len(data), n)
    ]


async def test_stt_recognizes_frames_at_any_rate(whisper, say) -> None:
    from agent_runtime.audio.resample import resample

    plugin = agent_runtime.STT(recognizer=whisper)
    assert not plugin.capabilities.streaming
    pcm48 = resample(say("Please book a table for two."), 16_000, 48_000)
    event = await plugin.recognize(_frames(pcm48, 48_000, channels=2))
    assert event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    text = event.alternatives[0].text.lower()
    assert "table" in text and "two" in text, text


async def test_stt_silence_is_empty(whisper) -> None:
    plugin = agent_runtime.STT(recognizer=whisper)
    event = await plugin.recognize(_frames(np.zeros(16_000, dtype=np.int16), 16_000))
    assert event.alternatives[0].text == ""


class _Recorder(LLMBackend):
    name = "recorder"

    def __init__(self, reply: list[str] | None = None, fail: bool = False) -> None:
        self.reply = reply or ["Hello", " there", "!"]
        self.fail = fail
        self.seen = None
        self.closed = False

    async def stream_chat(self, messages, options):
        self.seen = (list(messages), options)
        if self.fail:
            raise BackendError("model exploded")
        try:
            for delta in self.reply:
                yield delta
        finally:
            self.closed = True


def _ctx() -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="Be brief.")
    ctx.add_message(role="user", content="Hi!")
    ctx.add_message(role="assistant", content="Hello, how can I", interrupted=True)
    ctx.add_message(role="developer", content="Answer in English.")
    ctx.add_message(role="user", content="What time is it?")
    return ctx


async def test_llm_maps_chat_context_and_streams_chunks() -> None:
    backend = _Recorder()
    plugin = agent_runtime.LLM(backend=backend, max_tokens=42)
    chunks = [chunk async for chunk in plugin.chat(chat_ctx=_ctx())]
    assert "".join(c.delta.content for c in chunks if c.delta) == "Hello there!"
    assert all(c.delta.role == "assistant" for c in chunks if c.delta)
    messages, options = backend.seen
    assert [(m.role, m.content, m.interrupted) for m in messages] == [
        ("system", "Be brief.", False),
        ("user", "Hi!", False),
        ("assistant", "Hello, how can I", True),
        ("system", "Answer in English.", False),
        ("user", "What time is it?", False),
    ]
    assert options.max_tokens == 42
    assert backend.closed


async def test_llm_backend_error_is_livekit_error() -> None:
    plugin = agent_runtime.LLM(backend=_Recorder(fail=True))
    stream = plugin.chat(chat_ctx=_ctx())
    with pytest.raises(APIConnectionError, match="model exploded"):
        async for _ in stream:
            pass


async def test_llm_registered_backend_by_name() -> None:
    pytest.importorskip("agent_runtime_echo_llm", reason="the echo LLM plugin (plugins/echo_llm) is not installed")
    plugin = agent_runtime.LLM(backend="echo", backend_options={"delay_s": 0.0})
    text = "".join([c.delta.content async for c in plugin.chat(chat_ctx=_ctx()) if c.delta and c.delta.content])
    assert "time" in text.lower()
    await plugin.aclose()


@pytest.mark.slow
async def test_llm_local_smollm2_streams() -> None:
    plugin = agent_runtime.LLM(backend="local", max_tokens=24)
    await plugin.warmup()
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="Say hello in one short sentence.")
    chunks = [c async for c in plugin.chat(chat_ctx=ctx)]
    assert len(chunks) >= 2  # streamed, not one blob
    assert "".join(c.delta.content for c in chunks if c.delta).strip()
    await plugin.aclose()
