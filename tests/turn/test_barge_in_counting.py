"""Barge-in counts the caller's voiced speech (webrtcvad frames) within an episode, not time.

An episode is one VAD run of caller speech over the agent; it ends after `vad.stop_silence_ms` of
silence, and the next sound starts a new count. (webrtcvad's own hangover marks roughly 100 ms after a
sound as voiced too: a 300 ms "mhm" counts about 420 ms.)

A real `Session` with real webrtcvad on synthetic voiced tones, fast scripted engines, in real time."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agent_runtime.metrics.turns import turn_violations
from tests.turn.conftest import fast_config
from tests.turn.fakes import Call, VoicedLengthRecognizer, engines, run, silence, voiced

pytestmark = pytest.mark.slow  # each call runs in real time (a few seconds)


async def _ask_and_wait_for_agent(call: Call) -> float:
    """The caller asks; returns when the agent's reply started to play."""
    _, end = await call.caller.say(voiced(1200))
    started = await call.caller.wait_for_agent_audio(end, 10.0)
    assert started is not None, "the agent never answered"
    await asyncio.sleep(0.5)  # the agent is mid-reply
    return started


def test_two_backchannels_400ms_apart_do_not_interrupt() -> None:
    # A recognizer that needs 0.6 s: the first "mhm" is still being judged when the second starts.
    # Counting time since the barge-in began (the old rule) interrupted here.
    eng = engines(recognizer=VoicedLengthRecognizer(delay_s=0.6))

    async def script(call: Call) -> None:
        await _ask_and_wait_for_agent(call)
        await call.caller.say(np.concatenate([voiced(300), silence(400), voiced(300)]))
        await call.wait_turns(1)

    call = run(fast_config(), eng, script)
    (turn,) = call.session.metrics.turns
    assert call.barge_ins("pause"), "the agent should pause while the caller makes a sound"
    assert call.barge_ins("interrupt") == []
    assert call.barge_ins("resume")
    assert not turn.interrupted
    assert turn.agent_text == eng.llm.reply.strip()  # type: ignore[attr-defined] - the whole reply played
    assert [m.role for m in call.session.history] == ["user", "assistant"]  # the "mhm"s made no turn
    assert turn_violations(turn) == [] and call.session.metrics.violations == []


def test_long_interruption_stops_the_agent() -> None:
    async def script(call: Call) -> None:
        await _ask_and_wait_for_agent(call)
        await call.caller.say(voiced(1500))
        await call.wait_turns(2)
        await call.wait_idle()

    call = run(fast_config(), engines(), script)
    first, second = call.session.metrics.turns
    assert first.interrupted and not second.interrupted
    (pause,) = call.barge_ins("pause")
    (interrupt,) = call.barge_ins("interrupt")
    assert interrupt.data["reason"] == "speech"  # counted to the threshold, not judged by its words
    assert interrupt.timestamp >= pause.timestamp
    # The agent's audio stops at the pause and never comes back before the next reply.
    assert second.first_audio_out is not None
    late = call.agent_audio_between(pause.timestamp + 0.021, second.first_audio_out)
    assert late == [], f"agent audio went on {late[0] - pause.timestamp:.3f} s after the pause"
    assert call.session.history[1].interrupted
    assert all(turn_violations(t) == [] for t in call.session.metrics.turns)
    assert call.session.metrics.violations == []


def test_barge_in_threshold_is_voiced_ms() -> None:
    # The same 300 ms sound interrupts once the threshold is below it.
    config = fast_config(turn={"barge_in_min_speech_ms": 200})

    async def script(call: Call) -> None:
        await _ask_and_wait_for_agent(call)
        await call.caller.say(voiced(300))
        await call.wait_turns(1)

    call = run(config, engines(), script)
    assert call.session.metrics.turns[0].interrupted
    assert [e.data["reason"] for e in call.barge_ins("interrupt")] == ["speech"]


def _pause_delay(config_turn: dict) -> float:
    """Seconds from the caller's speech onset over the agent to the agent's pause."""
    onset: list[float] = []

    async def script(call: Call) -> None:
        await _ask_and_wait_for_agent(call)
        start, _ = await call.caller.say(voiced(1500))
        onset.append(start)
        await call.wait_turns(2)
        await call.wait_idle()

    call = run(fast_config(turn=config_turn), engines(), script)
    pause = call.barge_ins("pause")[0]
    assert call.session.metrics.turns[0].interrupted
    return pause.timestamp - onset[0]


def test_the_agent_pauses_on_the_first_voiced_frames() -> None:
    # turn.barge_in_pause_ms (60) of voiced audio pauses the agent; before, it waited for the
    # endpointer to declare speech (vad.min_speech_ms = 120 ms of voiced audio).
    early = _pause_delay({})
    declared = _pause_delay({"barge_in_pause_ms": 0})
    assert early <= declared - 0.04, (early, declared)  # three 20 ms frames sooner (41 vs 101 ms here)


def test_a_click_pauses_the_agent_only_for_a_moment() -> None:
    # 60 ms of sound: enough to pause, too little for the endpointer to declare speech: the agent
    # resumes at the end of the start window and the whole reply is heard.
    eng = engines()

    async def script(call: Call) -> None:
        await _ask_and_wait_for_agent(call)
        await call.caller.say(voiced(60))
        await call.wait_turns(1)

    call = run(fast_config(), eng, script)
    (turn,) = call.session.metrics.turns
    (pause,) = call.barge_ins("pause")
    (resume,) = call.barge_ins("resume")
    assert 0.15 <= resume.timestamp - pause.timestamp <= 0.35
    assert call.barge_ins("interrupt") == [] and not turn.interrupted
    assert turn.agent_text == eng.llm.reply.strip()  # type: ignore[attr-defined]
