"""The turn manager on the real engines (webrtcvad, faster-whisper, SmolLM2, piper), in real time."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from agent_runtime.config import CallerTurn
from agent_runtime.demo.run import CallerLine, run_call
from agent_runtime.turn.session import Engines
from tests.turn.conftest import fast_config


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def _line(say, text: str, **kw) -> CallerLine:
    turn = CallerTurn(text=text, **kw)
    parts = [t.strip() for t in text.split("|")] if kw.get("pause_ms") else [text]
    return CallerLine(turn, [say(p) for p in parts])


def _transcribe(engines: Engines, pcm: np.ndarray) -> str:
    return engines.recognizer.transcribe(pcm.astype(np.float32) / 32768).text


@pytest.mark.slow
def test_one_turn_end_to_end(real_engines, say) -> None:
    config = fast_config()
    result = asyncio.run(run_call(config, real_engines, [_line(say, "What time do you open tomorrow?")]))
    assert len(result.metrics.turns) == 1
    turn = result.metrics.turns[0]
    assert _words(turn.user_text) == _words("What time do you open tomorrow?")
    assert turn.agent_text and not turn.interrupted
    # every stage was reached, in a sensible order
    assert turn.user_speech_end < turn.end_of_turn <= turn.first_audio_out
    assert turn.asr_final is not None and turn.llm_first_token is not None and turn.tts_first_audio is not None
    # the reply is real speech: the agent channel transcribes back to words of the reply
    agent = result.recording[:, 1]
    assert np.abs(agent).max() > 1000
    heard = set(_words(_transcribe(real_engines, agent)))
    said = set(_words(turn.agent_text))
    assert len(heard & said) >= 0.5 * len(said)
    # the history holds both sides
    assert [m.role for m in result.session.history] == ["user", "assistant"]


@pytest.mark.slow
def test_pause_mid_sentence_gets_no_premature_reply(real_engines, say) -> None:
    config = fast_config()
    line = _line(say, "Hi, I'd like to know | what time you open tomorrow.", pause_ms=700)
    result = asyncio.run(run_call(config, real_engines, [line]))
    assert len(result.metrics.turns) == 1, [t.user_text for t in result.metrics.turns]
    turn = result.metrics.turns[0]
    assert "open tomorrow" in " ".join(_words(turn.user_text))
    assert "like to know" in " ".join(_words(turn.user_text))
    # nothing was played to the caller before the caller finished the sentence
    utt = result.utterances[0]
    assert turn.first_audio_out > utt.end


@pytest.mark.slow
def test_barge_in_stops_playout_and_keeps_heard_text(real_engines, say) -> None:
    config = fast_config(llm={"max_tokens": 80, "system_prompt": "You are a shop assistant. Answer in detail, with at least three sentences."})
    lines = [
        _line(say, "Can you tell me everything about your return policy?"),
        _line(say, "Sorry, do you deliver on weekends?", interrupt_after_ms=1000),
    ]
    events = []
    result = asyncio.run(run_call(config, real_engines, lines))
    events = result.events
    first = result.metrics.turns[0]
    assert first.interrupted
    interrupt = next(e for e in events if e.kind == "barge_in" and e.data["phase"] == "interrupt")
    pause = next(e for e in events if e.kind == "barge_in" and e.data["phase"] == "pause")
    # playout stopped within one 20 ms frame of the pause decision: no agent frame starts later
    # (until the next reply begins)
    second_start = result.metrics.turns[1].first_audio_out if len(result.metrics.turns) > 1 else float("inf")
    late = [
        start
        for start, pcm in result.session.transport.agent_track.frames
        if pause.timestamp + 0.021 < start < second_start and np.abs(pcm).max() > 0
    ]
    assert late == [], f"agent audio continued {late[0] - pause.timestamp:.3f}s after the pause"
    assert interrupt.timestamp >= pause.timestamp
    # the history keeps only what was heard, marked interrupted
    assistant = result.session.history[1]
    assert assistant.role == "assistant" and assistant.interrupted
    full = _words(result.session.history[1].content)
    assert 0 < len(full) < len(_words(first.agent_text)) + 1
    assert len(result.metrics.turns) == 2 and "weekends" in " ".join(_words(result.metrics.turns[1].user_text))


@pytest.mark.slow
def test_non_speech_makes_no_turn(real_engines) -> None:
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(16_000) * 200).astype(np.int16)
    line = CallerLine(CallerTurn(text="noise"), [noise])
    config = fast_config(demo={"max_reply_wait_s": 2.0})
    result = asyncio.run(run_call(config, real_engines, [line]))
    assert result.metrics.turns == []
    assert result.session.history == []


@pytest.mark.slow
def test_48khz_stereo_caller_is_resampled(real_engines, say) -> None:
    result = asyncio.run(
        run_call(fast_config(), real_engines, [_line(say, "Do you deliver on weekends?")], mic_rate=48_000, mic_channels=2)
    )
    (turn,) = result.metrics.turns
    assert _words(turn.user_text) == _words("Do you deliver on weekends?")
