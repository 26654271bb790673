"""S2ProSynthesizer on the tiny fixture checkpoint and codec: continuation, codec streaming,
cancellation, sharing one engine, the event loop, options. Random weights: the audio is noise."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agent_runtime.audio.frame import float_to_pcm16
from agent_runtime.errors import ConfigError
from agent_runtime.tts.registry import create_synthesizer
from agent_runtime.tts.s2pro.engine import naive_generate
from agent_runtime.tts.s2pro.local_backend import LocalUtterance
from agent_runtime.tts.s2pro.voices import VoiceLibrary
from tests.s2pro.synth_support import PARAMS, audio_of, make_synth, speak, tiny_codec, tiny_engine, wide_codec

TEXT = "Well, let me check that for you. Our store opens at 9:30 on weekdays and at ten on Saturdays. Bye!"


async def test_continuation_equals_one_shot(s2pro_fixtures: Path) -> None:
    """Segments continue one stream (KV reused) and stream through the codec chunk by chunk; the
    result equals the reference's one-shot multi-turn generation of the same segments, decoded
    by the codec in one piece."""
    engine, codec = tiny_engine(s2pro_fixtures), tiny_codec(s2pro_fixtures)
    synth = make_synth(engine, codec, seed=11, max_frames_per_segment=10, first_chunk_frames=2, chunk_frames=3)
    chunks = await speak(synth, TEXT, deltas=True)
    texts = [c.text for c in chunks if c.segment_final]
    assert texts == ["Well,", "let me check that for you. Our store opens at 9:30 on weekdays and at ten on Saturdays.", "Bye!"]
    assert [c.segment_id for c in chunks] == sorted(c.segment_id for c in chunks)

    gen = torch.Generator().manual_seed(11)
    prompt = engine.builder.system_turn(None)
    codes = []
    for text in texts:
        prompt = torch.cat([prompt, engine.builder.user_turn(text)], dim=1)
        full = naive_generate(engine.model, prompt, engine.im_end_id, PARAMS, 10, gen)
        seg = full[1:, prompt.shape[1] : -1]
        codes.append(seg)
        prompt = torch.cat([prompt, engine.builder.assistant_codes_end(seg)], dim=1)
    one_shot = codec.decode(torch.cat(codes, dim=1))[0, 0].numpy()
    got = audio_of(chunks)
    expected = float_to_pcm16(one_shot)
    assert got.shape == expected.shape
    assert np.abs(got.astype(np.int32) - expected).max() <= 1  # fp32 kernel order only
    # every segment's audio is complete before the next one starts: boundaries map to frames
    for seg_id, seg in enumerate(codes):
        n = sum(len(c.audio) for c in chunks if c.segment_id == seg_id)
        assert n == seg.shape[1] * codec.frame_length


async def test_cancel_stops_within_one_frame(s2pro_fixtures: Path) -> None:
    synth = make_synth(tiny_engine(s2pro_fixtures), wide_codec(s2pro_fixtures), seed=1, max_frames_per_segment=400)
    stream = synth.open_stream()
    stream.push_text("This is a long sentence that would take four hundred frames to speak.")
    stream.flush()
    got = 0
    async for chunk in stream:
        got += len(chunk.audio)
        if got:
            utterance = stream._utterance
            await stream.cancel()
            break
    assert isinstance(utterance, LocalUtterance)
    await asyncio.sleep(0.3)  # let any frame in flight finish
    assert utterance.frames_at_cancel is not None
    assert utterance.frames_generated - utterance.frames_at_cancel <= 1  # at most the frame in flight
    assert utterance.frames_generated < 50
    assert [c async for c in stream] == []  # nothing comes after cancel


async def test_sessions_share_one_engine_without_interference(s2pro_fixtures: Path) -> None:
    """Concurrent replies on one engine: each reply's audio is what it would be alone."""
    synth = make_synth(tiny_engine(s2pro_fixtures), tiny_codec(s2pro_fixtures), seed=5, max_frames_per_segment=8)
    texts = ["Hello there, how are you today?", "Sure, we open at nine. See you soon!", "Hello there, how are you today?"]
    alone = [audio_of(await speak(synth, t)) for t in texts]
    together = await asyncio.gather(*(speak(synth, t, deltas=True) for t in texts))
    for a, chunks in zip(alone, together, strict=True):
        np.testing.assert_array_equal(audio_of(chunks), a)
    np.testing.assert_array_equal(alone[0], alone[2])  # same seed, same text, same audio
    assert not np.array_equal(alone[0][: len(alone[1])], alone[1][: len(alone[0])])


async def test_event_loop_is_never_blocked(s2pro_fixtures: Path) -> None:
    synth = make_synth(tiny_engine(s2pro_fixtures), tiny_codec(s2pro_fixtures), seed=2, max_frames_per_segment=40)
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.005)
            lags.append(time.monotonic() - t - 0.005)

    tick = asyncio.create_task(ticker())
    started = time.monotonic()
    await asyncio.gather(*(speak(synth, f"Reply number {i}, with a few words to say.") for i in range(3)))
    busy = time.monotonic() - started
    stop.set()
    await tick
    # ~240 frames of model work; a blocked loop would show one lag of a whole segment
    assert busy > 0.3 and max(lags) < 0.15, (busy, max(lags))


async def test_speaker_tag_carries_to_later_segments(s2pro_fixtures: Path) -> None:
    synth = make_synth(tiny_engine(s2pro_fixtures), tiny_codec(s2pro_fixtures), seed=3, max_frames_per_segment=4)
    utt = synth.open_utterance()
    assert isinstance(utt, LocalUtterance)
    assert utt._segment_text("Plain text.") == "Plain text."
    assert utt._segment_text("<|speaker:1|>Hi there.") == "<|speaker:1|>Hi there."
    assert utt._segment_text("And more.") == "<|speaker:1|>And more."
    assert utt._segment_text("<|speaker:0|>Me now.") == "<|speaker:0|>Me now."
    chunks = await speak(synth, "<|speaker:1|>Hello there, my friend. And how are you doing on this fine day?")
    assert {c.text for c in chunks} == {"<|speaker:1|>Hello there, my friend.", "And how are you doing on this fine day?"}


def test_options_and_voices(s2pro_fixtures: Path, tmp_path: Path) -> None:
    base = {"checkpoint": str(s2pro_fixtures / "tiny"), "codec": str(s2pro_fixtures / "codec_tiny.pth"),
            "codec_config": str(s2pro_fixtures / "codec_tiny.json")}  # fmt: skip
    with pytest.raises(ConfigError, match="unknown s2pro option"):
        create_synthesizer("s2pro", {**base, "checkpiont": "x"})
    with pytest.raises(ConfigError, match="needs checkpoint"):
        create_synthesizer("s2pro", {"codec": base["codec"]})
    with pytest.raises(ConfigError, match="unknown backend"):
        create_synthesizer("s2pro", {**base, "backend": "sglang"})
    with pytest.raises(ConfigError, match="compile_fast must be auto, true or false"):
        create_synthesizer("s2pro", {**base, "compile_fast": "yes"})
    with pytest.raises(ConfigError, match="compile_fast needs a CUDA device"):
        create_synthesizer("s2pro", {**base, "compile_fast": True})  # auto (the default) is off on CPU
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            create_synthesizer("s2pro", {**base, "device": "cuda"})
    with pytest.raises(ConfigError, match="no voice named"):
        create_synthesizer("s2pro", {**base, "voice": "nobody", "voice_library": str(tmp_path)})
    library = VoiceLibrary(tmp_path)
    codes = np.random.default_rng(0).integers(0, 32, size=(4, 12))
    library.add("alice", codes, "A short reference transcript.")
    library.add("wrong", codes[:3], "Three codebooks only.")
    with pytest.raises(ConfigError, match="codebooks"):
        create_synthesizer("s2pro", {**base, "voice": "wrong", "voice_library": str(tmp_path)})
    synth = create_synthesizer(
        "s2pro", {**base, "voice": "alice", "voice_library": str(tmp_path), "seed": 1, "max_frames_per_segment": 4,
                  "chunker_config": {"later_min_chars": 80}},
    )  # fmt: skip
    try:
        assert synth.sample_rate == 44_100 and synth.name == "s2pro"
        assert synth.backend.voice.voice_id == "alice"
        assert synth.chunker_config.later_min_chars == 80
        synth.warmup()  # the voice prefix is prefilled and cached
        assert synth.backend.engine.prefix_misses == 1
        audio = audio_of(asyncio.run(speak(synth, "Hello from Alice.")))
        assert audio.size > 0 and np.abs(audio).max() > 0
    finally:
        synth.close()


async def test_errors_on_the_model_thread_reach_the_reply(s2pro_fixtures: Path) -> None:
    synth = make_synth(tiny_engine(s2pro_fixtures), tiny_codec(s2pro_fixtures), seed=4, max_frames_per_segment=6)

    def broken(_codes):
        raise ValueError("codec exploded")

    utt = synth.open_utterance()
    utt.decoder.push = broken  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="codec exploded"):
        list(utt.synthesize("Hello there, my friend."))
    original = synth.open_utterance

    def open_broken():
        u = original()
        u.decoder.push = broken
        return u

    synth.open_utterance = open_broken  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="codec exploded"):
        await speak(synth, "Hello there, my friend.")
    # the engine is still serving other replies
    synth.open_utterance = original  # type: ignore[method-assign]
    assert len(audio_of(await speak(synth, "Still working."))) > 0
