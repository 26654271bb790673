"""Per-stream `SpeechOptions` on piper: speed and a multi-speaker voice's speaker; the rest refused."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from agent_runtime.tts import piper_engine
from agent_runtime.tts.base import SpeechOptions, UnsupportedSpeechOption, VoiceSample
from agent_runtime.tts.piper_engine import PiperSynthesizer

TEXT = "The quick brown fox jumps over the lazy dog."


async def speak(synth: PiperSynthesizer, options: SpeechOptions | None = None) -> np.ndarray:
    stream = synth.open_stream(options=options)
    stream.push_text(TEXT)
    stream.flush()
    blocks = [chunk.audio for chunk in [c async for c in stream] if len(chunk.audio)]
    return np.concatenate(blocks)


@pytest.mark.slow
async def test_speed_option_halves_the_samples_for_this_stream_only(piper: PiperSynthesizer) -> None:
    normal = await speak(piper)
    fast = await speak(piper, SpeechOptions(speed=2.0))
    assert 0.45 < len(fast) / len(normal) < 0.65  # about half (VITS pads each sentence a little)
    np.testing.assert_array_equal(await speak(piper), normal)  # the shared engine is unchanged
    assert piper.syn_config.length_scale is None


async def test_speed_option_equals_the_engine_configured_with_that_speed(
    piper: PiperSynthesizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(piper_engine, "_load_voice", lambda *a, **k: (piper.voice, piper.split))  # reuse the loaded voice
    configured = PiperSynthesizer(speed=1.5, noise_scale=0.0, noise_w_scale=0.0)
    np.testing.assert_array_equal(await speak(piper, SpeechOptions(speed=1.5)), await speak(configured))


@pytest.mark.parametrize("speed", [0.0, 0.2, 4.5, -1.0])
async def test_speed_out_of_range_is_refused(piper: PiperSynthesizer, speed: float) -> None:
    with pytest.raises(UnsupportedSpeechOption) as info:
        piper.open_stream(options=SpeechOptions(speed=speed))
    assert info.value.field == "speed" and "0.25" in info.value.reason


async def test_voice_on_the_single_speaker_voice_is_refused(piper: PiperSynthesizer) -> None:
    with pytest.raises(UnsupportedSpeechOption) as info:
        piper.open_stream(options=SpeechOptions(voice="alice"))
    assert info.value.field == "voice" and "single speaker" in info.value.reason


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (SpeechOptions(temperature=0.5), "temperature"),
        (SpeechOptions(seed=1), "seed"),
        (SpeechOptions(references=(VoiceSample("hi", codes=np.zeros((1, 1), dtype=np.int64)),)), "references"),
        (SpeechOptions(speed=1.0, top_k=3), "top_k"),
    ],
)
async def test_other_fields_are_refused(piper: PiperSynthesizer, options: SpeechOptions, field: str) -> None:
    with pytest.raises(UnsupportedSpeechOption) as info:
        piper.open_stream(options=options)
    assert info.value.field == field


def test_voice_picks_a_speaker_of_a_multi_speaker_voice(piper: PiperSynthesizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A (faked) multi-speaker config: names and ids resolve to the speaker id of this utterance only."""
    config = dataclasses.replace(piper.voice.config, num_speakers=3, speaker_id_map={"amy": 0, "bob": 1, "cat": 2})
    monkeypatch.setattr(piper_engine, "_load_voice", lambda *a, **k: (SimpleNamespace(config=config), None))
    synth = PiperSynthesizer(speaker_id="amy")
    assert synth.open_utterance_for(SpeechOptions(voice="bob"))._config.speaker_id == 1  # type: ignore[attr-defined]
    assert synth.open_utterance_for(SpeechOptions(voice="2"))._config.speaker_id == 2  # type: ignore[attr-defined]
    assert synth.syn_config.speaker_id == 0
    for bad in ("dan", "7"):
        with pytest.raises(UnsupportedSpeechOption, match="no speaker"):
            synth.open_utterance_for(SpeechOptions(voice=bad))
