"""Piper engine: voice resolution, options, streaming structure, cancellation, sharing."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from agent_runtime.errors import ConfigError, ModelLoadError
from agent_runtime.tts import piper_engine
from agent_runtime.tts.base import TTSChunk
from agent_runtime.tts.piper_engine import (
    PiperSynthesizer,
    PiperUtterance,
    clean_text_for_piper,
    resolve_piper_voice,
)

THREE_SENTENCES = "Sure, I can help. It left on Monday. It comes on Friday."


def test_packaged_voice_is_the_default(piper: PiperSynthesizer) -> None:
    model, config = resolve_piper_voice(None)
    assert model.name == "en_US-joe-medium.onnx" and config.name == "en_US-joe-medium.onnx.json"
    assert piper.model_path == model and piper.sample_rate == 22_050 and piper.name == "piper"


def test_voice_path_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such piper voice"):
        resolve_piper_voice(tmp_path / "nobody.onnx")
    (tmp_path / "v.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="config not found"):
        resolve_piper_voice(tmp_path / "v.onnx")
    (tmp_path / "v.onnx.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="cannot load piper voice") as info:
        PiperSynthesizer(tmp_path)  # a directory holding one voice
    assert "\n" not in str(info.value)


def test_option_errors() -> None:
    with pytest.raises(ConfigError, match="lenght_scale"):
        PiperSynthesizer.from_options(lenght_scale=1.2)
    with pytest.raises(ConfigError, match="speed or length_scale"):
        PiperSynthesizer.from_options(speed=1.2, length_scale=0.8)


def test_speed_option_shortens_speech(piper: PiperSynthesizer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(piper_engine, "_load_voice", lambda *a, **k: (piper.voice, piper.split))  # reuse the loaded voice
    fast = PiperSynthesizer.from_options(speed=1.5, noise=0.0, noise_w=0.0, volume=0.5)
    cfg = fast.syn_config
    assert (cfg.length_scale, cfg.noise_scale, cfg.noise_w_scale) == (pytest.approx(1 / 1.5), 0.0, 0.0)
    text = "The quick brown fox jumps."
    fast_audio, normal_audio = fast.synthesize_text(text), piper.synthesize_text(text)
    assert 0.55 < len(fast_audio) / len(normal_audio) < 0.8
    loud = PiperSynthesizer.from_options(speed=1.5, noise=0.0, noise_w=0.0).synthesize_text(text)
    assert float(np.abs(loud).max()) < 1.0  # not clipped, so volume is a plain factor
    np.testing.assert_allclose(fast_audio, 0.5 * loud, atol=1e-6)


def test_text_cleaning() -> None:
    assert clean_text_for_piper("[laugh] Sure,  **really** sure.") == "Sure, really sure."
    assert clean_text_for_piper("Dr. Smith and Mrs. Jones") == "Doctor Smith and Missus Jones"
    assert clean_text_for_piper("say [[ h ə l oʊ ]] now") == "say [[ h ə l oʊ ]] now"
    assert clean_text_for_piper("[sigh]") == ""


def test_sentences_stream_in_chunks_and_deterministic(piper: PiperSynthesizer) -> None:
    assert piper.streams_sentences
    blocks = list(PiperUtterance(piper).synthesize(THREE_SENTENCES))
    first_chunk = piper.stream_first_frames * 256  # samples per latent frame of the 22.05 kHz voice
    assert len(blocks) > 3 and len(blocks[0]) == first_chunk and all(b.dtype == np.float32 for b in blocks)
    assert max(float(np.abs(b).max()) for b in blocks) <= 1.0
    again = list(PiperUtterance(piper).synthesize(THREE_SENTENCES))
    assert all(np.array_equal(a, b) for a, b in zip(blocks, again, strict=True))
    assert list(PiperUtterance(piper).synthesize("[laugh]")) == []


def test_whole_sentences_when_streaming_is_off(piper: PiperSynthesizer) -> None:
    whole = PiperSynthesizer(noise_scale=0.0, noise_w_scale=0.0, stream_first_frames=0)
    assert not whole.streams_sentences
    blocks = list(PiperUtterance(whole).synthesize(THREE_SENTENCES))
    assert len(blocks) == 3 and all(len(b) > 0.4 * whole.sample_rate for b in blocks)
    assert all(float(np.abs(b).max()) == pytest.approx(1.0) for b in blocks)  # piper's peak normalisation
    # The same audio as the streamed path up to one gain (the streamed one is not normalised per sentence).
    streamed = np.concatenate(list(PiperUtterance(piper).synthesize("It left on Monday.")))
    (block,) = PiperUtterance(whole).synthesize("It left on Monday.")
    assert float(np.abs(streamed).max()) < 1.0  # not clipped
    np.testing.assert_allclose(streamed / np.abs(streamed).max(), block, atol=5e-5)
    with pytest.raises(ConfigError, match="stream_first_frames"):
        PiperSynthesizer(stream_first_frames=-1)


def test_utterance_cancel_stops_before_the_next_sentence(piper: PiperSynthesizer) -> None:
    utterance = PiperUtterance(piper)
    blocks = utterance.synthesize(THREE_SENTENCES)
    assert len(next(blocks)) > 0
    utterance.cancel()
    assert list(blocks) == []
    assert list(utterance.synthesize("Anything more?")) == []


async def _next_chunk(iterator) -> TTSChunk:
    return await asyncio.wait_for(anext(iterator), timeout=60)


async def test_stream_first_chunk_before_the_text_is_complete(piper: PiperSynthesizer) -> None:
    stream = piper.open_stream()
    chunks = aiter(stream)
    for word in ["I", "can", "help", "with", "that,", "just"]:
        stream.push_text(word + " ")
    first = await _next_chunk(chunks)  # nothing flushed, most of the text not even written yet
    assert (first.segment_id, first.text, first.segment_final) == (0, "I can help with that,", False)
    assert first.sample_rate == 22_050 and first.audio.dtype == np.int16 and len(first.audio) > 0
    stream.push_text("a moment. Your order left our warehouse on Monday. It comes Friday.")
    stream.flush()
    rest = [c async for c in chunks]
    events = [(c.segment_id, c.text, c.segment_final, len(c.audio) > 0) for c in [first, *rest]]
    assert events[1] == events[0]  # the first clause came in more than one chunk
    runs = [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]  # one entry per run of chunks
    assert runs == [
        (0, "I can help with that,", False, True),
        (0, "I can help with that,", True, False),
        (1, "just a moment. Your order left our warehouse on Monday.", False, True),
        (1, "just a moment. Your order left our warehouse on Monday.", True, False),
        (2, "It comes Friday.", False, True),
        (2, "It comes Friday.", True, False),
    ]
    times = [c.created_at for c in [first, *rest]]
    assert times == sorted(times)


async def test_stream_cancel_stops_further_chunks(piper: PiperSynthesizer) -> None:
    stream = piper.open_stream()
    stream.push_text(THREE_SENTENCES + " " + THREE_SENTENCES)
    stream.flush()
    chunks = aiter(stream)
    first = await _next_chunk(chunks)
    assert first.segment_id == 0
    await stream.cancel()
    assert [c async for c in chunks] == []
    assert stream.push_text("More text. ") == 0 and stream.flush() == 0


@pytest.mark.slow
def test_shared_voice_is_safe_across_threads(piper: PiperSynthesizer) -> None:
    texts = ["One, two, three.", "Four, five, six."]
    expected = [piper.synthesize_text(t) for t in texts]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = piper.synthesize_text(texts[i % 2])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(np.array_equal(results[i], expected[i % 2]) for i in range(4))
