"""Per-stream `SpeechOptions` on the S2-Pro local backend: a stream opened with an option gives
exactly what a backend configured that way gives, and leaves the shared backend as it was."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from agent_runtime.audio.frame import float_to_pcm16
from agent_runtime.tts.base import SpeechOptions, UnsupportedSpeechOption, VoiceSample
from agent_runtime.tts.s2pro.codec_bench import random_decode_codec
from agent_runtime.tts.s2pro.codec_config import CodecConfig
from agent_runtime.tts.s2pro.local_backend import LocalBackend, LocalSettings, load_voice
from agent_runtime.tts.s2pro.prompt import VoiceReference
from agent_runtime.tts.s2pro.sampling import SamplingParams
from agent_runtime.tts.s2pro.synthesizer import S2ProSynthesizer
from agent_runtime.tts.s2pro.voices import VoiceLibrary
from tests.s2pro.synth_support import PARAMS, audio_of, tiny_codec, tiny_engine

TEXT = "Hello there, how are you today?"
REF_TEXT = "A short reference transcript."
SETTINGS = {"params": PARAMS, "seed": 1, "max_frames_per_segment": 8}


def synth_of(fixtures: Path, voice: VoiceReference | None = None, library: Path | None = None, codec=None,
             **settings) -> S2ProSynthesizer:
    """A synthesizer on the shared fixture engine (plain settings: SETTINGS, overridden by `settings`)."""
    codec = codec if codec is not None else tiny_codec(fixtures)
    backend = LocalBackend(tiny_engine(fixtures), codec, voice, LocalSettings(**{**SETTINGS, **settings}), library)
    return S2ProSynthesizer(backend)


async def speak(synth: S2ProSynthesizer, options: SpeechOptions | None = None, text: str = TEXT) -> np.ndarray:
    stream = synth.open_stream(options=options)
    stream.push_text(text)
    stream.flush()
    return audio_of([chunk async for chunk in stream])


async def test_sampling_options_equal_a_backend_with_those_settings(s2pro_fixtures: Path) -> None:
    synth = synth_of(s2pro_fixtures)
    got = await speak(synth, SpeechOptions(seed=5, temperature=0.5, top_k=10))
    want = await speak(synth_of(s2pro_fixtures, params=SamplingParams(0.5, PARAMS.top_p, 10), seed=5))
    assert got.size > 0
    np.testing.assert_array_equal(got, want)
    got = await speak(synth, SpeechOptions(top_p=0.5, seed=2))
    np.testing.assert_array_equal(got, await speak(synth_of(s2pro_fixtures, params=SamplingParams(0.8, 0.5, 30), seed=2)))


async def test_max_new_tokens_is_the_segment_frame_cap(s2pro_fixtures: Path) -> None:
    synth = synth_of(s2pro_fixtures)
    got = await speak(synth, SpeechOptions(max_new_tokens=4))
    want = await speak(synth_of(s2pro_fixtures, max_frames_per_segment=4))
    np.testing.assert_array_equal(got, want)
    assert len(got) < len(await speak(synth))


async def test_options_do_not_leak_into_the_next_plain_stream(s2pro_fixtures: Path) -> None:
    synth = synth_of(s2pro_fixtures)
    plain = await speak(synth)
    other = await speak(synth, SpeechOptions(seed=9, temperature=1.2, top_p=0.95, max_new_tokens=6))
    assert not np.array_equal(plain, other)
    np.testing.assert_array_equal(await speak(synth), plain)
    assert synth.backend.settings == LocalSettings(**SETTINGS)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(await speak(synth, SpeechOptions()), plain)  # no field set: the defaults


async def test_voice_option_equals_a_backend_loaded_with_that_voice(s2pro_fixtures: Path, tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    rng = np.random.default_rng(0)
    library.add("x", rng.integers(0, 32, size=(4, 12)), REF_TEXT)
    library.add("y", rng.integers(0, 32, size=(4, 9)), "Another voice.")
    library.add("wrong", rng.integers(0, 32, size=(3, 9)), "Three codebooks only.")
    synth = synth_of(s2pro_fixtures, library=tmp_path)
    engine = tiny_engine(s2pro_fixtures)
    got = await speak(synth, SpeechOptions(voice="x"))
    want = await speak(synth_of(s2pro_fixtures, voice=load_voice("x", tmp_path)))
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, await speak(synth, SpeechOptions(voice="y")))
    misses = engine.prefix_misses
    np.testing.assert_array_equal(await speak(synth, SpeechOptions(voice="x", seed=1)), got)
    assert engine.prefix_misses == misses  # the voice prefix was prefilled once
    assert synth.backend.voice is None  # type: ignore[attr-defined]
    for name, reason in (("nobody", "no voice named"), ("wrong", "codebooks"), ("../x", "invalid voice name")):
        with pytest.raises(UnsupportedSpeechOption, match=reason) as info:
            synth.open_stream(options=SpeechOptions(voice=name))
        assert info.value.field == "voice"


async def test_reference_codes_equal_a_voice_with_those_codes(s2pro_fixtures: Path) -> None:
    codes = np.load(s2pro_fixtures / "reference_codes.npy")
    synth = synth_of(s2pro_fixtures)
    options = SpeechOptions(references=(VoiceSample(REF_TEXT, codes=codes),), seed=3)
    got = await speak(synth, options)
    want = await speak(synth_of(s2pro_fixtures, voice=VoiceReference.create(REF_TEXT, codes), seed=3))
    np.testing.assert_array_equal(got, want)
    two = (VoiceSample(REF_TEXT, codes=codes), VoiceSample("Second one.", codes=codes[:, :4]))
    want_two = VoiceReference.create([REF_TEXT, "Second one."], [codes, codes[:, :4]])
    np.testing.assert_array_equal(
        await speak(synth, SpeechOptions(references=two)), await speak(synth_of(s2pro_fixtures, voice=want_two))
    )
    for bad, reason in (
        ((VoiceSample(REF_TEXT, codes=codes[:3]),), "4 codebooks"),
        ((VoiceSample(REF_TEXT, codes=codes + 40),), r"\[0, 32\)"),
        ((VoiceSample(REF_TEXT),), "neither codes nor audio"),
        ((), "empty"),
        ((VoiceSample(REF_TEXT, audio=np.zeros(100, dtype=np.float32)),), "sample rate"),
    ):
        with pytest.raises(UnsupportedSpeechOption, match=reason) as info:
            synth.open_stream(options=SpeechOptions(references=bad))
        assert info.value.field == "references"
    with pytest.raises(UnsupportedSpeechOption, match="not both"):
        synth.open_stream(options=SpeechOptions(voice="x", references=(VoiceSample(REF_TEXT, codes=codes),)))


def small_frame_codec(fixtures: Path):
    """The tiny codec's layout with a 2048-sample frame (a 3 s reference is 65 frames, which fits
    the tiny model's context) and a 32-entry semantic codebook (the tiny model's), random weights."""
    d = json.loads((fixtures / "codec_tiny.json").read_text())
    d.update(hop_length=512, frame_length=2048)
    d["encoder"]["rates"] = [8, 8, 8]
    d["decoder"].update(rates=[8, 8, 8], block_channels=[16, 8, 4], dim=32, residual_dilations=[1])
    d["quantizer"]["semantic_codebook_size"] = 32
    return random_decode_codec(CodecConfig.from_dict(d), "cpu", torch.float32)


async def test_reference_audio_equals_a_voice_made_by_the_voice_tool(s2pro_fixtures: Path, tmp_path: Path) -> None:
    """Audio at 16 kHz is resampled and encoded (on the model thread) as `voice add` does it; the
    stream then equals a backend loaded with the voice the tool stored. A repeated reference is
    encoded and prefilled once."""
    codec = small_frame_codec(s2pro_fixtures)
    rate = 16000
    t = np.arange(int(3.2 * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    sf.write(tmp_path / "ref.wav", wave, rate, subtype="PCM_16")
    samples, _ = sf.read(tmp_path / "ref.wav", dtype="float32")  # what the tool reads: PCM16 as float
    VoiceLibrary(tmp_path / "lib").add_from_audio("ref", tmp_path / "ref.wav", REF_TEXT, codec)
    synth = synth_of(s2pro_fixtures, codec=codec, max_frames_per_segment=5)
    options = SpeechOptions(references=(VoiceSample(REF_TEXT, audio=samples, sample_rate=rate),))
    got = await speak(synth, options)
    want = await speak(synth_of(s2pro_fixtures, voice=load_voice("ref", tmp_path / "lib"), codec=codec,
                                max_frames_per_segment=5))
    assert got.size > 0
    np.testing.assert_array_equal(got, want)
    backend = synth.backend
    engine = tiny_engine(s2pro_fixtures)
    misses = engine.prefix_misses
    np.testing.assert_array_equal(await speak(synth, options), got)
    assert backend.references_encoded == 1 and engine.prefix_misses == misses  # type: ignore[attr-defined]


async def test_audio_references_are_encoded_off_the_event_loop(s2pro_fixtures: Path, monkeypatch) -> None:
    """`open_stream` does no codec work; the encoding runs on the engine's model thread."""
    codec = small_frame_codec(s2pro_fixtures)
    synth = synth_of(s2pro_fixtures, codec=codec, max_frames_per_segment=3)
    backend = synth.backend
    threads: list[str] = []
    encode = type(codec).encode

    def spy(self, audio):
        import threading

        threads.append(threading.current_thread().name)
        return encode(self, audio)

    monkeypatch.setattr(type(codec), "encode", spy)
    audio = (0.1 * np.sin(np.arange(8000) / 7)).astype(np.float32)  # 0.5 s at 16 kHz: 11 frames
    stream = synth.open_stream(options=SpeechOptions(references=(VoiceSample(REF_TEXT, audio=audio, sample_rate=16000),)))
    assert threads == []
    stream.push_text(TEXT)
    stream.flush()
    chunks = [c async for c in stream]
    assert chunks and threads == ["s2pro-engine"]
    assert backend.references_encoded == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "field", "reason"),
    [
        (SpeechOptions(repetition_penalty=1.1), "repetition_penalty", "RAS"),
        (SpeechOptions(speed=1.5), "speed", "speaking-rate"),
        (SpeechOptions(temperature=2.5), "temperature", "temperature must be in"),
        (SpeechOptions(top_p=0.0), "top_p", "top_p must be in"),
        (SpeechOptions(top_k=0), "top_k", ">= 1"),
        (SpeechOptions(top_k=2.5), "top_k", "integer"),  # type: ignore[arg-type]
        (SpeechOptions(seed=-1), "seed", "non-negative"),
        (SpeechOptions(max_new_tokens=0), "max_new_tokens", "from 1"),
    ],
)
async def test_unsupported_options_raise_from_open_stream(s2pro_fixtures: Path, options, field, reason) -> None:
    synth = synth_of(s2pro_fixtures)
    with pytest.raises(UnsupportedSpeechOption, match=reason) as info:
        synth.open_stream(options=options)
    assert info.value.field == field


async def test_a_backend_without_options_refuses_them(s2pro_fixtures: Path) -> None:
    class Plain:
        name = "plain"
        sample_rate = 44100

        def open_utterance(self):
            return tiny_engine  # never used by this test

    synth = S2ProSynthesizer(Plain())  # type: ignore[arg-type]
    with pytest.raises(UnsupportedSpeechOption) as info:
        synth.open_stream(options=SpeechOptions(seed=1))
    assert info.value.field == "seed"
    assert synth.open_utterance_for(SpeechOptions()) is tiny_engine


def test_sync_synthesize_with_options(s2pro_fixtures: Path) -> None:
    """The blocking form (tools) honours the same options."""
    synth = synth_of(s2pro_fixtures)
    utt = synth.open_utterance_for(SpeechOptions(seed=5, max_new_tokens=4))
    got = np.concatenate([b for b in utt.synthesize(TEXT)])
    utt.close()
    want = asyncio.run(speak(synth_of(s2pro_fixtures, seed=5, max_frames_per_segment=4)))
    np.testing.assert_array_equal(float_to_pcm16(got), want)
