"""Voice to voice at the client: from the caller's last audible sound, next to the server's figure."""

from __future__ import annotations

import numpy as np

from agent_runtime.audio.level import last_audible_end
from loadtest.analysis import analyze_call
from loadtest.callers.base import Leg
from loadtest.callers.webrtc import WebRTCLeg
from loadtest.report import text_summary
from loadtest.scenario import Measure
from loadtest.script import CallRecord, Utterance


class FakeLeg(Leg):
    kind = "fake"

    async def connect(self, base_url: str, timeout: float) -> None: ...
    async def say(self, pcm16k: np.ndarray) -> tuple[float, float]:
        return 0.0, 0.0
    async def hang_up(self) -> None: ...


def _speech_then_quiet(speech_s: float, quiet_s: float, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(rate * speech_s)) / rate
    loud = (8000 * np.sin(2 * np.pi * 200 * t)).astype(np.int16)
    return np.concatenate([loud, np.full(int(rate * quiet_s), 20, dtype=np.int16)])  # a faint tail (-64 dBFS)


def test_last_audible_block_ignores_a_faint_tail() -> None:
    pcm = _speech_then_quiet(0.5, 0.2)
    assert abs(last_audible_end(pcm, 16_000) - 0.5) < 0.011
    assert last_audible_end(np.zeros(1600, np.int16), 16_000) is None


def test_a_leg_dates_the_end_of_speech_at_the_last_audible_sound() -> None:
    pcm = _speech_then_quiet(0.5, 0.2)  # 200 ms of inaudible tail after the speech
    assert abs(FakeLeg().speech_end(pcm, 10.0, 10.7) - 10.5) < 0.011


async def test_the_webrtc_leg_uses_the_departure_of_the_frames_it_sent() -> None:
    leg = WebRTCLeg()
    try:
        loud, quiet = np.full(960, 6000, np.int16), np.zeros(960, np.int16)
        for t, pcm in [(5.00, loud), (5.02, loud), (5.04, quiet), (5.06, quiet)]:
            leg.peer.mic.on_frame_out(t, pcm)  # nothing kept outside `say`
        assert leg.speech_end(np.zeros(0, np.int16), 4.9, 5.08) == 5.08
        leg._sent = []
        for t, pcm in [(5.00, loud), (5.02, loud), (5.04, quiet), (5.06, quiet)]:
            leg.peer.mic.on_frame_out(t, pcm)
        leg._last_sent, leg._sent = leg._sent, None  # as `say` leaves it
        assert abs(leg.speech_end(np.zeros(0, np.int16), 4.9, 5.08) - 5.04) < 1e-6
    finally:
        await leg.hang_up()


def test_voice_to_voice_counts_from_the_caller_speech_end() -> None:
    leg = FakeLeg()
    for t in np.arange(0, 4.0, 0.02):
        leg.record(np.full(960, 5000 if 2.5 <= t < 3.0 else 0, dtype=np.int16), float(t))
    rec = CallRecord(0, 1, "fake", 0.0, status="ok", ended=4.0)
    rec.leg = leg
    rec.utterances = [Utterance(0, 1.0, 2.0, True, speech_end=1.9), Utterance(1, 5.0, 6.0, False)]
    (sample,) = analyze_call(rec, Measure(), 0.0)
    assert abs(sample["voice_to_voice_ms"] - 600) <= 20  # 2.5 - 1.9, not 2.5 - 2.0
    rec.utterances = [Utterance(0, 1.0, 2.0, True)]  # a leg that cannot tell: the last frame's departure
    (sample,) = analyze_call(rec, Measure(), 0.0)
    assert abs(sample["voice_to_voice_ms"] - 500) <= 20


def test_the_summary_shows_the_server_figure_next_to_the_client_one() -> None:
    stats = {"n": 3, "p50": 700.0, "p95": 900.0, "p99": 950.0, "mean": 720.0, "max": 950.0}
    level = {
        "calls": 3, "concurrency": 1, "voice_to_voice_ms": stats, "barge_in_ms": {"p95": None},
        "failed_calls": 0, "dropped_calls": 0, "underrun_rate": 0.0, "server_rss_mb": {"max": 500.0},
        "slo_ok": True, "server_voice_to_voice_ms": {"n": 3, "p50": 520.0, "p95": 610.0},
    }  # fmt: skip
    doc = {"target": "agent-runtime", "mode": "webrtc", "url": "http://127.0.0.1:1", "scenario": {"name": "x"},
           "levels": [level], "stopped_early": None}  # fmt: skip
    text = text_summary(doc)
    header, row = text.splitlines()[1:3]
    assert "server" in header
    assert row.split()[2:6] == ["700", "900", "950", "520"]  # client p50/p95/p99, then the server's p50
