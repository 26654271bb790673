"""The TTS plugin through livekit-agents' own `SynthesizeStream` / `ChunkedStream` machinery."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import numpy as np
import pytest

pytest.importorskip("livekit.agents", reason="livekit-agents is not installed (deploy/setup.sh installs it)")
pytest.importorskip("livekit.plugins.agent_runtime", reason="livekit-plugins-agent-runtime is not installed")

from livekit.agents import Plugin, tts
from livekit.plugins import agent_runtime

from agent_runtime.tts.base import SynthesisStream, Synthesizer, TTSChunk

FIRST = "The weather today is lovely, "
REST = "and the sun is shining over the green hills. We should go for a long walk after lunch."


def _words(text: str) -> list[str]:
    return [w.strip(".,!?;:'\"").lower() for w in text.split() if w.strip(".,!?;:'\"")]


def _overlap(expected: str, heard: str) -> float:
    want, got = _words(expected), set(_words(heard))
    return sum(w in got for w in want) / max(1, len(want))


class CancelSpy(Synthesizer):
    """Our contract around a real engine, recording which streams were cancelled."""

    name = "spy"

    def __init__(self, inner: Synthesizer) -> None:
        self.inner = inner
        self.sample_rate = inner.sample_rate
        self.streams: list[_SpyStream] = []

    def open_stream(self, chunking=None, *, max_segment_chars=None, options=None) -> SynthesisStream:
        stream = _SpyStream(self.inner.open_stream(chunking, max_segment_chars=max_segment_chars, options=options))
        self.streams.append(stream)
        return stream


class _SpyStream(SynthesisStream):
    def __init__(self, inner: SynthesisStream) -> None:
        self.inner = inner
        self.cancelled = False
        self.chunks = 0
        self.pushed = ""

    def push_text(self, text: str) -> int:
        self.pushed += text
        return self.inner.push_text(text)

    def flush(self) -> int:
        return self.inner.flush()

    async def cancel(self) -> None:
        self.cancelled = True
        await self.inner.cancel()

    async def __aiter__(self) -> AsyncIterator[TTSChunk]:  # type: ignore[override]
        async for chunk in self.inner:
            self.chunks += 1
            yield chunk


@pytest.fixture(scope="module")
def piper_tts(piper_voice):
    return CancelSpy(piper_voice)


def test_plugin_is_registered_like_livekit_plugins() -> None:
    titles = [p.title for p in Plugin.registered_plugins]
    assert "livekit.plugins.agent_runtime" in titles
    t = agent_runtime.TTS.__mro__
    assert tts.TTS in t


async def test_stream_speaks_before_text_is_complete_and_whisper_hears_it(piper_tts, transcribe) -> None:
    plugin = agent_runtime.TTS(synthesizer=piper_tts)
    assert plugin.capabilities.streaming
    assert plugin.sample_rate == piper_tts.sample_rate and plugin.num_channels == 1
    frames = []
    async with plugin.stream() as stream:
        stream.push_text(FIRST)  # only the first clause
        first = await asyncio.wait_for(stream.__anext__(), timeout=60)
        frames.append(first.frame)
        # audio exists while the rest of the reply is still unwritten
        assert not stream._input_ch.closed
        for word in REST.split(" "):
            stream.push_text(word + " ")
        stream.end_input()
        async for ev in stream:
            frames.append(ev.frame)
            assert ev.frame.sample_rate == plugin.sample_rate
        segments = stream.segments
    assert len(segments) >= 2 and segments[0].startswith("The weather today is lovely")
    pcm = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
    heard = transcribe(pcm, plugin.sample_rate)
    assert _overlap(FIRST + REST, heard) >= 0.8, heard
    await plugin.aclose()


async def test_segments_reported_as_timed_transcripts(piper_tts) -> None:
    from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT

    plugin = agent_runtime.TTS(synthesizer=piper_tts)
    timed = []
    async with plugin.stream() as stream:
        stream.push_text(FIRST + REST)
        stream.end_input()
        async for ev in stream:
            timed.extend(ev.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT) or [])
    assert "".join(timed).split() == (FIRST + REST).split()
    starts = [t.start_time for t in timed]
    assert starts[0] == 0.0 and starts == sorted(starts) and len(starts) >= 2


async def test_aclose_mid_reply_cancels_our_stream(piper_tts) -> None:
    plugin = agent_runtime.TTS(synthesizer=piper_tts)
    stream = plugin.stream()
    stream.push_text(FIRST + REST + " " + REST)
    await asyncio.wait_for(stream.__anext__(), timeout=60)
    ours = piper_tts.streams[-1]
    await stream.aclose()
    assert ours.cancelled
    produced = ours.chunks
    await asyncio.sleep(0.5)
    assert ours.chunks == produced  # nothing more was synthesised


async def test_synthesize_whole_text(piper_tts, transcribe) -> None:
    plugin = agent_runtime.TTS(synthesizer=piper_tts)
    frame = await plugin.synthesize("Good morning. Nice to meet you.").collect()
    assert frame.duration > 0.5
    pcm = np.frombuffer(frame.data, dtype=np.int16)
    assert _overlap("Good morning. Nice to meet you.", transcribe(pcm, frame.sample_rate)) >= 0.8


def test_unsupported_voice_is_refused_up_front(piper_voice) -> None:
    with pytest.raises(ValueError, match="voice"):
        agent_runtime.TTS(synthesizer=piper_voice, voice="nobody")


class _SlowWarmup(CancelSpy):
    def __init__(self, inner: Synthesizer) -> None:
        super().__init__(inner)
        self.release = threading.Event()
        self.warmups = 0

    def warmup(self) -> None:
        self.warmups += 1
        self.release.wait(30)


async def test_prewarm_on_the_loop_runs_once_off_the_loop(piper_voice) -> None:
    """LiveKit calls `prewarm()` on the event loop at every activity start: it must not block."""
    synth = _SlowWarmup(piper_voice)
    plugin = agent_runtime.TTS(synthesizer=synth)
    plugin.prewarm()  # returns while the warm-up is still blocked in its thread
    plugin.prewarm()
    assert plugin._warm.future is not None and not plugin._warm.future.done()
    synth.release.set()
    await plugin._warm.future
    assert synth.warmups == 1
