"""Playout starvation: silence the caller hears inside a reply because the next audio was not ready.

The reply accounts it per turn (`extra.playout_starved_ms`, next to `extra.playout_ms`) and the server
exports both as counters, so the load harness can tell TTS falling behind playout from pauses that
are part of the audio. A real `Session` in real time with scripted engines."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from agent_runtime.bench.instant import InstantSynthesizer
from agent_runtime.server.metrics import ServerMetrics
from agent_runtime.tts.base import UtteranceSynth
from tests.turn.conftest import fast_config
from tests.turn.fakes import Call, ScriptedLLM, engines, run, voiced

pytestmark = pytest.mark.slow  # each call runs in real time (a few seconds)

REPLY = "Yes, we open at nine tomorrow morning and we close at six in the evening."


class _LateSecondSegment(UtteranceSynth):
    """A tone per segment; the second segment's audio comes `delay_s` late (a TTS falling behind)."""

    def __init__(self, rate: int, delay_s: float) -> None:
        self.rate, self.delay_s, self.segments = rate, delay_s, 0

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        self.segments += 1
        if self.segments == 2:
            time.sleep(self.delay_s)
        t = np.arange(int(self.rate * 0.03 * len(text))) / self.rate
        yield (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


class _LateSynth(InstantSynthesizer):
    def __init__(self, delay_s: float) -> None:
        super().__init__(seconds_per_char=0.03)
        self.delay_s = delay_s

    def open_utterance(self) -> UtteranceSynth:
        return _LateSecondSegment(self.sample_rate, self.delay_s)


def _one_turn(delay_s: float) -> dict[str, float]:
    async def script(call: Call) -> None:
        await call.caller.say(voiced(1200))
        await call.wait_turns(1)

    call = run(fast_config(), engines(llm=ScriptedLLM(REPLY), synth=_LateSynth(delay_s)), script)
    (turn,) = call.session.metrics.turns
    assert turn.agent_text.strip() == REPLY and not turn.interrupted
    metrics = ServerMetrics()
    metrics.observe_turn(turn)
    exported = metrics.render()
    assert "agent_playout_seconds_total" in exported and "agent_playout_starved_seconds_total" in exported
    return turn.extra


def test_a_late_segment_is_counted_as_starvation() -> None:
    extra = _one_turn(delay_s=0.8)
    # "Yes," (0.12 s of audio) plays, then the rest arrives up to 0.8 s after it was asked for (the
    # synthesis may start before the end-of-turn decision, while the audio is still held back)
    assert 200 <= extra["playout_starved_ms"] <= 800, extra
    assert extra["playout_ms"] >= 0.03 * len(REPLY) * 1000 * 0.9


def test_a_tts_that_keeps_up_starves_nothing() -> None:
    extra = _one_turn(delay_s=0.0)
    assert extra.get("playout_starved_ms", 0.0) < 60, extra
    assert extra["playout_ms"] >= 0.03 * len(REPLY) * 1000 * 0.9
