"""Endpointer behaviour on real speech (piper) and on non-speech."""

from __future__ import annotations

import numpy as np
import pytest

from agent_runtime.audio.frame import split_frames
from agent_runtime.vad.endpointer import Endpointer, EndpointerConfig, VADEventType


def _events(ep: Endpointer, pcm: np.ndarray):
    out = []
    for frame in split_frames(pcm, 16_000, ep.config.frame_ms):
        out.extend(ep.process(frame))
    return out


def _pad(pcm: np.ndarray, before_s: float, after_s: float) -> np.ndarray:
    z = lambda s: np.zeros(int(16_000 * s), dtype=np.int16)  # noqa: E731
    return np.concatenate([z(before_s), pcm, z(after_s)])


def test_silence_and_noise_never_start_speech() -> None:
    rng = np.random.default_rng(0)
    ep = Endpointer()
    assert _events(ep, np.zeros(16_000 * 2, dtype=np.int16)) == []
    clicks = np.zeros(16_000 * 2, dtype=np.int16)
    clicks[::4000] = 20000  # isolated clicks, shorter than min_speech_ms
    assert _events(ep, clicks) == []
    hum = (300 * rng.standard_normal(16_000)).astype(np.int16)  # quiet background noise
    assert [e for e in _events(Endpointer(EndpointerConfig(aggressiveness=3)), hum)] == []


def test_speech_start_and_stop_timestamps(say) -> None:
    speech = say("Hello, I would like to check my order please.")
    pcm = _pad(speech, 0.5, 0.6)
    ep = Endpointer()
    events = _events(ep, pcm)
    kinds = [e.type for e in events]
    assert kinds[0] is VADEventType.SPEECH_START and kinds[-1] is VADEventType.SPEECH_STOP
    start, stop = events[0].timestamp, events[-1].timestamp
    # piper pads a little silence around speech; the detected span must sit inside the padded clip
    assert 0.4 <= start <= 0.75
    assert 0.5 + len(speech) / 16_000 - 0.35 <= stop <= 0.5 + len(speech) / 16_000 + 0.05


def test_pre_roll_keeps_the_first_syllable(say) -> None:
    speech = say("Yes.")
    ep = Endpointer(EndpointerConfig(pre_roll_ms=300))
    _events(ep, _pad(speech, 1.0, 0.5))
    audio = ep.take_audio()
    # the recording starts pre_roll before the first voiced frame, so it holds all of the word
    assert len(audio) >= len(speech) * 0.9
    assert ep.take_audio().size == 0


def test_pause_shorter_than_stop_silence_keeps_one_run(say) -> None:
    a, b = say("I would like"), say("a pizza")
    gap = np.zeros(int(16_000 * 0.06), dtype=np.int16)
    events = _events(Endpointer(EndpointerConfig(stop_silence_ms=200)), _pad(np.concatenate([a, gap, b]), 0.3, 0.5))
    assert [e.type for e in events] == [VADEventType.SPEECH_START, VADEventType.SPEECH_STOP]


def test_rejects_wrong_frames() -> None:
    ep = Endpointer()
    from agent_runtime.audio.frame import AudioFrame

    with pytest.raises(ValueError):
        ep.process(AudioFrame(np.zeros(480, dtype=np.int16), 16_000))
