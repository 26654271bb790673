"""Fast, scripted engines and synthetic caller sounds for driving a real `Session` (real webrtcvad,
real-time loopback transport) where the test is about the turn manager, not the models."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from agent_runtime.asr.base import Recognizer, Transcript
from agent_runtime.bench.instant import InstantSynthesizer
from agent_runtime.config import AppConfig
from agent_runtime.demo.caller import SimulatedCaller
from agent_runtime.errors import BackendError
from agent_runtime.llm.base import ChatMessage, GenerationOptions, LLMBackend
from agent_runtime.transport.loopback import LoopbackTransport
from agent_runtime.tts.base import UtteranceSynth
from agent_runtime.turn.session import Engines, Session, SessionEvent

RATE = 16_000
QUESTION = "What time do you open tomorrow?"
LONG_REPLY = (
    "We open at nine tomorrow morning, and we stay open until six in the evening, "
    "with the bakery counter closing a little earlier, at about half past four."
)


def voiced(ms: int, f0: float = 140.0) -> np.ndarray:
    """A harmonic tone that webrtcvad calls speech in every frame (int16, 16 kHz)."""
    t = np.arange(RATE * ms // 1000) / RATE
    x = sum((1.0 / k) * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 8))
    return (x / np.abs(x).max() * 9000).astype(np.int16)


def silence(ms: int) -> np.ndarray:
    return np.zeros(RATE * ms // 1000, dtype=np.int16)


class VoicedLengthRecognizer(Recognizer):
    """Hears a backchannel in audio with little sound in it and the question otherwise.

    `delay_s` models a recognizer that takes a while (whisper on a busy CPU)."""

    def __init__(self, *, backchannel_below_s: float = 0.7, delay_s: float = 0.0) -> None:
        super().__init__()
        self.backchannel_below_s = backchannel_below_s
        self.delay_s = delay_s

    def transcribe(self, audio: np.ndarray) -> Transcript:
        if self.delay_s:
            time.sleep(self.delay_s)
        loud_s = float(np.count_nonzero(np.abs(audio) > 0.01)) / self.sample_rate
        text = "" if loud_s == 0 else ("mhm" if loud_s < self.backchannel_below_s else QUESTION)
        return Transcript(text, len(audio) / self.sample_rate)


class ScriptedLLM(LLMBackend):
    """Streams `reply` word by word; call number i (from 0) fails first if `fail_calls` holds i."""

    name = "scripted"

    def __init__(
        self, reply: str = LONG_REPLY, *, fail_calls: Sequence[int] = (), fail_always: bool = False
    ) -> None:
        self.reply = reply
        self.fail_calls = set(fail_calls)
        self.fail_always = fail_always
        self.calls = 0

    async def stream_chat(
        self, messages: Sequence[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[str]:
        call = self.calls
        self.calls += 1
        if self.fail_always or call in self.fail_calls:
            raise BackendError("scripted LLM failure")
        for word in self.reply.split(" "):
            await asyncio.sleep(0)
            yield word + " "


class DyingUtterance(UtteranceSynth):
    """Speaks a reply's first segment through `inner`; then the engine dies."""

    def __init__(self, inner: UtteranceSynth) -> None:
        self.inner = inner
        self.segments = 0

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        self.segments += 1
        if self.segments > 1:
            raise RuntimeError("TTS worker died")
        yield from self.inner.synthesize(text)

    def cancel(self) -> None:
        self.inner.cancel()


class DyingSynth(InstantSynthesizer):
    """Tone TTS whose engine dies after the reply's first segment."""

    def open_utterance(self) -> UtteranceSynth:
        return DyingUtterance(super().open_utterance())


def engines(
    recognizer: Recognizer | None = None,
    llm: LLMBackend | None = None,
    synth: InstantSynthesizer | None = None,
) -> Engines:
    return Engines(
        recognizer or VoicedLengthRecognizer(),
        llm or ScriptedLLM(),
        synth or InstantSynthesizer(seconds_per_char=0.03),  # about 4.5 s of agent audio for LONG_REPLY
    )


@dataclass
class Call:
    session: Session
    caller: SimulatedCaller
    transport: LoopbackTransport
    events: list[SessionEvent] = field(default_factory=list)

    def barge_ins(self, phase: str) -> list[SessionEvent]:
        return [e for e in self.events if e.kind == "barge_in" and e.data["phase"] == phase]

    async def wait_turns(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.session.metrics.turns) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert len(self.session.metrics.turns) >= n, (
            f"{len(self.session.metrics.turns)} turns filed, wanted {n}"
        )

    async def wait_idle(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.session.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def agent_audio_between(self, t0: float, t1: float) -> list[float]:
        """Start times of non-silent agent frames that start in (t0, t1)."""
        return [
            s
            for s, pcm in self.transport.agent_track.frames
            if t0 < s < t1 and np.abs(pcm).max(initial=0) > 64
        ]


def run(config: AppConfig, eng: Engines, script: Callable[[Call], Awaitable[None]]) -> Call:
    """Run a call in real time: the script talks through `call.caller`; then the caller hangs up."""

    async def main() -> Call:
        transport = LoopbackTransport(output_sample_rate=RATE)
        events: list[SessionEvent] = []
        session = Session(config, eng, transport, on_event=events.append, session_id="t")
        call = Call(session, SimulatedCaller(transport), transport, events)
        await call.caller.start()
        task = asyncio.create_task(call.session.run())
        try:
            await asyncio.sleep(0.2)
            await script(call)
        finally:
            await call.caller.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, 10.0)
        return call

    return asyncio.run(main())
