"""Turn records cannot lie: one fresh record per reply attempt, and an invariant (no negative stage
time, stages in pipeline order) checked on every record written, logged and counted when broken."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from agent_runtime.bench.instant import InstantSynthesizer
from agent_runtime.metrics.turns import MetricsCollector, TurnMetrics, turn_violations
from agent_runtime.server.app import live_latency
from agent_runtime.server.metrics import ServerMetrics
from agent_runtime.transport.loopback import LoopbackTransport
from agent_runtime.turn.session import Session
from tests.turn.conftest import fast_config
from tests.turn.fakes import Call, DyingSynth, ScriptedLLM, engines, run, silence, voiced

STAGE_KEYS = (
    "asr_final",
    "llm_first_token",
    "tts_first_text",
    "tts_first_audio",
    "end_of_turn",
    "first_audio_out",
)


def _good_turn() -> TurnMetrics:
    t = TurnMetrics("s", 3, user_speech_end=10.0, asr_final=10.1, llm_first_token=10.2, tts_first_text=10.25)
    t.tts_first_audio, t.end_of_turn, t.first_audio_out = 10.3, 10.3, 10.32
    return t


def test_a_consistent_record_has_no_violations() -> None:
    assert turn_violations(_good_turn()) == []
    assert turn_violations(TurnMetrics("s", 1)) == []  # nothing recorded, nothing wrong
    partial = TurnMetrics("s", 1, user_speech_end=1.0, asr_final=1.1, tts_first_text=1.2, first_audio_out=1.4)
    assert turn_violations(partial) == []  # LLM failed: no first token; the rest is still ordered


def test_stale_timestamps_are_violations() -> None:
    t = _good_turn()
    t.tts_first_text = 8.161  # left over from a dropped attempt: "first text chunk to TTS -1839 ms"
    problems = turn_violations(t)
    assert any("tts_first_text" in p and "-1839" in p for p in problems), problems
    t = _good_turn()
    t.tts_first_audio = 10.22  # audio before its text
    assert turn_violations(t) and all(ms is None or ms >= 0 for ms in t.relative_ms().values())
    t = _good_turn()
    t.first_audio_out = 10.29  # played before the decision
    assert any("first_audio_out" in p for p in turn_violations(t))


def test_violations_are_logged_with_the_turn_id_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    bad = _good_turn()
    bad.tts_first_audio = 8.0
    collector = MetricsCollector()
    with caplog.at_level(logging.ERROR, logger="agent_runtime.metrics"):
        collector.record(_good_turn())
        collector.record(bad)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "turn 3" in errors[0].getMessage()
    assert collector.violations == [(3, turn_violations(bad))]
    server = ServerMetrics()
    assert "agent_turn_metrics_violations_total 0" in server.render()
    server.observe_event("turn", {"metrics": _good_turn()})
    server.observe_event("turn", {"metrics": bad})
    assert "agent_turn_metrics_violations_total 1" in server.render()


def test_live_latency_reads_the_session_through_its_public_reply() -> None:
    session = Session(fast_config(), engines(), LoopbackTransport())
    assert session.current_reply is None and live_latency(session) is None
    assert live_latency(None) is None


def _assert_clean(call: Call) -> list[TurnMetrics]:
    turns = call.session.metrics.turns
    assert turns
    for t in turns:
        assert turn_violations(t) == [], (t.turn_id, turn_violations(t))
        assert all(ms is None or ms >= 0 for ms in t.relative_ms().values()), t.relative_ms()
    assert call.session.metrics.violations == []
    return turns


@pytest.mark.slow
def test_dropped_premature_reply_leaves_no_stale_times_or_errors() -> None:
    # The caller pauses 400 ms mid-turn (the turn needs 800 ms of silence to end): the speculative
    # reply runs all the way to TTS audio, with a failing LLM, and is dropped when the caller goes on.
    config = fast_config(turn={"end_of_turn_silence_ms": 800})
    llm = ScriptedLLM(fail_calls=[0])

    async def script(call: Call) -> None:
        await call.caller.say(np.concatenate([voiced(800), silence(400), voiced(800)]))
        await call.wait_turns(1)

    call = run(config, engines(llm=llm), script)
    assert [e.kind for e in call.events].count("premature_reply_dropped") == 1
    assert llm.calls == 2  # the dropped attempt reached the LLM (and failed)
    (turn,) = _assert_clean(call)
    assert turn.turn_id == 1 and turn.premature_replies_dropped == 1
    assert turn.llm_error is None  # the dropped attempt's error stays with it
    assert all(getattr(turn, k) is not None for k in STAGE_KEYS)
    assert turn.tts_first_text >= turn.user_speech_end  # type: ignore[operator]


@pytest.mark.slow
def test_interrupted_turn_records_are_consistent() -> None:
    async def script(call: Call) -> None:
        _, end = await call.caller.say(voiced(1200))
        assert await call.caller.wait_for_agent_audio(end, 10.0) is not None
        await call.caller.say(voiced(1500))
        await call.wait_turns(2)
        await call.wait_idle()

    call = run(fast_config(), engines(), script)
    first, _ = _assert_clean(call)
    assert first.interrupted


@pytest.mark.slow
def test_failed_llm_turn_records_are_consistent() -> None:
    async def script(call: Call) -> None:
        for _ in range(2):
            await call.caller.say(voiced(1000))
            await call.wait_idle()
        await call.wait_turns(2)

    config = fast_config()
    call = run(config, engines(llm=ScriptedLLM(fail_always=True)), script)
    turns = _assert_clean(call)
    assert len(turns) == 2
    assert all(t.llm_error and t.agent_text == config.llm.fallback_line for t in turns)
    assert all(t.llm_first_token is None and t.first_audio_out is not None for t in turns)


@pytest.mark.slow
def test_failed_tts_turn_records_are_consistent() -> None:
    async def script(call: Call) -> None:
        for _ in range(2):
            await call.caller.say(voiced(1000))
            await call.wait_idle()
        await call.wait_turns(2)

    synth: InstantSynthesizer = DyingSynth(seconds_per_char=0.01)
    call = run(fast_config(), engines(synth=synth), script)
    turns = _assert_clean(call)
    assert len(turns) == 2
    assert all(t.tts_error == "TTS worker died" and t.llm_error is None for t in turns)
