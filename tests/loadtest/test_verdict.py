"""What the caller heard -> samples; samples -> per-level SLO verdicts."""

from __future__ import annotations

import numpy as np

from loadtest.analysis import analyze_call
from loadtest.callers.base import Leg
from loadtest.scenario import Measure
from loadtest.script import CallRecord, Utterance
from loadtest.slo import SLO, verdict


class FakeLeg(Leg):
    kind = "fake"

    async def connect(self, base_url: str, timeout: float) -> None: ...
    async def say(self, pcm16k: np.ndarray) -> tuple[float, float]: return 0.0, 0.0
    async def hang_up(self) -> None: ...


def _leg(audible: list[tuple[float, float]], until: float) -> FakeLeg:
    """Frames every 20 ms from 0 to `until`; loud inside the (start, end) spans."""
    leg = FakeLeg()
    for t in np.arange(0, until, 0.02):
        loud = any(a <= t < b for a, b in audible)
        leg.record(np.full(960, 5000 if loud else 0, dtype=np.int16), float(t))
    return leg


def test_voice_to_voice_gaps_and_barge_in() -> None:
    # caller speaks 1.0-2.0; agent replies 2.5-4.0 with a 0.5 s hole at 3.0; caller barges in at 3.6,
    # agent stops at 3.8; caller stops 4.6; agent answers at 5.0
    leg = _leg([(2.5, 3.0), (3.5, 3.8), (5.0, 6.0)], until=7.0)
    rec = CallRecord(0, 1, "fake", 0.0, status="ok", ended=7.0)
    rec.leg = leg
    rec.utterances = [Utterance(0, 1.0, 2.0, True), Utterance(1, 3.6, 4.6, True, barge_in=True)]
    first, second = analyze_call(rec, Measure(stop_quiet_ms=300, underrun_min_ms=300), 0.0)
    assert abs(first["voice_to_voice_ms"] - 500) <= 20
    assert first["gaps"] == 1 and abs(first["gap_ms"] - 480) <= 40
    assert abs(second["barge_in_ms"] - 200) <= 40  # last loud frame at 3.78 + 20 ms
    assert abs(second["voice_to_voice_ms"] - 400) <= 20


def test_no_reply_and_barge_in_after_the_agent_stopped() -> None:
    leg = _leg([(2.5, 3.0)], until=6.0)
    rec = CallRecord(0, 1, "fake", 0.0, status="ok", ended=6.0)
    rec.leg = leg
    rec.utterances = [Utterance(0, 1.0, 2.0, True), Utterance(1, 4.0, 5.0, True, barge_in=True)]
    first, second = analyze_call(rec, Measure(), 0.0)
    assert first["voice_to_voice_ms"] is not None
    assert second["voice_to_voice_ms"] is None and second["barge_in_ms"] is None and not second["barge_in"]


def _level(c: int, p95: float, dropped: int = 0) -> dict:
    stats = {"n": 10, "p50": p95 / 2, "p95": p95, "p99": p95}
    return {"concurrency": c, "voice_to_voice_ms": stats, "barge_in_ms": {"n": 0, "p95": None},
            "barge_ins_expected": 0, "dropped_calls": dropped, "failed_calls": 0, "unanswered_rate": 0.0,
            "underrun_rate": 0.0}


def test_verdict_finds_the_max_concurrency() -> None:
    slo = SLO(voice_to_voice_p95_ms=800)
    levels = [_level(1, 400), _level(2, 600), _level(4, 900), _level(8, 700)]
    v = verdict(slo, levels)
    assert not v.ok and v.max_concurrency_at_slo == 2 and "at 4 calls: voice-to-voice p95 900 ms > 800 ms" in v.line
    assert verdict(slo.model_copy(update={"min_concurrency": 2}), levels).ok
    assert verdict(slo, levels[:2]).ok
    v = verdict(SLO(), [_level(1, 100, dropped=1)])
    assert not v.ok and v.max_concurrency_at_slo == 0 and "1 dropped calls" in v.line
