"""Endpointer behaviour on real speech (piper) and on non-speech."""

from __future__ import annotations

import numpy as np
import pytest

from agent_runtime.audio.frame import split_frames
from agent_runtime.audio.level import audible_span
from agent_runtime.config import VADConfig
from agent_runtime.vad.endpointer import Endpointer, EndpointerConfig, VADEventType
from agent_runtime.vad.evaluate import Case, add_noise, run_endpointer


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
    # piper pads each clip with ~50-170 ms of silence: trim it, so the pause really is 60 ms
    a, b = _trimmed(say, "I would like"), _trimmed(say, "a pizza")
    gap = np.zeros(int(16_000 * 0.06), dtype=np.int16)
    events = _events(
        Endpointer(EndpointerConfig(stop_silence_ms=200)), _pad(np.concatenate([a, gap, b]), 0.3, 0.5)
    )
    assert [e.type for e in events] == [VADEventType.SPEECH_START, VADEventType.SPEECH_STOP]


def test_rejects_wrong_frames() -> None:
    ep = Endpointer()
    from agent_runtime.audio.frame import AudioFrame

    with pytest.raises(ValueError):
        ep.process(AudioFrame(np.zeros(480, dtype=np.int16), 16_000))


# -- end of speech: dated at the last audible sound (issue 14) ----------------------------------------


def _trimmed(say, text: str) -> np.ndarray:
    pcm = say(text)
    a, b = audible_span(pcm)
    return pcm[int(a * 16_000) : int(b * 16_000)]


def _stops(events) -> list[float]:
    return [e.timestamp for e in events if e.type is VADEventType.SPEECH_STOP]


@pytest.mark.parametrize(
    "text", ["Can I return a jacket that I bought last week?", "My account number is four five six seven."]
)
def test_end_of_speech_is_dated_at_the_last_audible_sound(say, text: str) -> None:
    speech = _trimmed(say, text)  # ends with its last 10 ms frame above -45 dBFS
    true_end = 0.5 + len(speech) / 16_000
    pcm = _pad(speech, 0.5, 0.8)
    energy = _stops(_events(Endpointer(), pcm))
    webrtc = _stops(_events(Endpointer(EndpointerConfig(end_of_speech="webrtcvad")), pcm))
    assert abs(energy[-1] - true_end) <= 0.040, (energy, true_end)
    assert webrtc[-1] - true_end > energy[-1] - true_end  # webrtcvad's voiced tail runs on (~120 ms)


def test_a_250_ms_mid_sentence_pause_is_not_a_turn_end(say) -> None:
    a, b = _trimmed(say, "I would like to check"), _trimmed(say, "the status of my order.")
    pause = np.zeros(int(16_000 * 0.25), dtype=np.int16)
    pcm = _pad(np.concatenate([a, pause, b]), 0.6, 1.2)
    resumed = 0.6 + (len(a) + len(pause)) / 16_000
    end = resumed + len(b) / 16_000
    case = Case("pause", pcm, end, [])
    outcome = run_endpointer(EndpointerConfig(), pcm, case, end_of_turn_ms=300)
    assert not outcome.false_end  # the turn manager's 300 ms never elapsed inside the pause
    assert outcome.end is not None and abs(outcome.end - end) <= 0.040
    events = _events(Endpointer(), pcm)
    starts = [e.timestamp for e in events if e.type is VADEventType.SPEECH_START]
    assert any(abs(s - resumed) <= 0.040 for s in starts), (starts, resumed)  # resumed at once, not 120 ms on


def test_the_whole_utterance_is_still_recorded(say) -> None:
    speech = _trimmed(say, "Could you send the receipt to my email?")
    ep = Endpointer()
    events = _events(ep, _pad(speech, 0.5, 0.6))
    assert events[-1].type is VADEventType.SPEECH_STOP
    assert len(ep.take_audio()) >= len(speech)  # only the timing moved: ASR still gets every sample


def test_in_heavy_noise_the_gate_steps_aside(say) -> None:
    # At 10 dB SNR the quiet parts of speech sink below any energy gate: webrtcvad alone decides.
    speech = _trimmed(say, "What time does the store open on Sunday?")
    pcm = add_noise(_pad(speech, 0.6, 1.2), 10.0, seed=3)
    gated = _events(Endpointer(), pcm)
    plain = _events(Endpointer(EndpointerConfig(end_of_speech="webrtcvad")), pcm)
    assert len(_stops(gated)) <= len(_stops(plain)) + 1


def test_config_keys_reach_the_endpointer() -> None:
    cfg = EndpointerConfig.from_config(
        VADConfig(end_of_speech="webrtcvad", tail_drop_db=30, resume_window_ms=0)
    )
    assert (cfg.end_of_speech, cfg.tail_drop_db, cfg.resume_window_ms) == ("webrtcvad", 30, 0)
    assert EndpointerConfig.from_config(VADConfig()) == EndpointerConfig()
    with pytest.raises(ValueError):
        Endpointer(EndpointerConfig(end_of_speech="silero"))  # type: ignore[arg-type]
