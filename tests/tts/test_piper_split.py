"""The piper voice graph cut in two: chunked decoding equals the whole graph; the cut is cached."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from agent_runtime.tts import piper_split
from agent_runtime.tts.piper_engine import PiperSynthesizer, _model_inputs
from agent_runtime.tts.piper_split import CONTEXT_FRAMES, chunk_bounds, load_split_graph, split_voice_graph


def test_chunks_cover_the_sentence_growing_to_the_cap() -> None:
    bounds = list(chunk_bounds(1000, 24, largest=384))
    assert bounds[0] == (0, 24) and bounds[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))  # contiguous
    sizes = [end - start for start, end in bounds]
    assert sizes[:3] == [24, 96, 384] and max(sizes) == 384
    assert list(chunk_bounds(10, 24)) == [(0, 10)] and list(chunk_bounds(0, 24)) == []


def _whole_graph_audio(piper: PiperSynthesizer, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(piper.model_path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0].reshape(-1)


@pytest.mark.parametrize("first_frames", [1, 24, 50])
def test_chunked_decoding_equals_the_whole_graph(piper: PiperSynthesizer, first_frames: int) -> None:
    voice = piper.voice
    (phonemes,) = voice.phonemize("Your order left our warehouse on Monday and comes on Friday.")
    feeds = _model_inputs(voice.config, voice.phonemes_to_ids(phonemes), piper.syn_config)  # noise 0: deterministic
    whole = _whole_graph_audio(piper, feeds)
    assert piper.split is not None
    blocks = list(piper.split.synthesize(feeds, first_frames))
    assert len(blocks[0]) == first_frames * 256 and len(blocks) >= 3
    streamed = np.concatenate(blocks)
    assert streamed.shape == whole.shape
    assert float(np.abs(streamed - whole).max()) < 1e-5 * float(np.abs(whole).max())


def test_too_little_context_would_show(piper: PiperSynthesizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The equality above is not vacuous: with less context than the receptive field the seams differ."""
    voice = piper.voice
    (phonemes,) = voice.phonemize("Your order left our warehouse on Monday.")
    feeds = _model_inputs(voice.config, voice.phonemes_to_ids(phonemes), piper.syn_config)
    whole = _whole_graph_audio(piper, feeds)
    monkeypatch.setattr(piper_split, "CONTEXT_FRAMES", CONTEXT_FRAMES // 3)
    assert piper.split is not None
    streamed = np.concatenate(list(piper.split.synthesize(feeds, 24)))
    assert float(np.abs(streamed - whole).max()) > 1e-3 * float(np.abs(whole).max())


def test_should_stop_ends_between_chunks(piper: PiperSynthesizer) -> None:
    voice = piper.voice
    (phonemes,) = voice.phonemize("Your order left our warehouse on Monday and comes on Friday.")
    feeds = _model_inputs(voice.config, voice.phonemes_to_ids(phonemes), piper.syn_config)
    assert piper.split is not None
    calls = []
    blocks = list(piper.split.synthesize(feeds, 24, lambda: calls.append(1) or len(calls) > 1))
    assert len(blocks) == 1


def test_the_cut_is_cached(piper: PiperSynthesizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = load_split_graph(piper.model_path, tmp_path)
    assert graph is not None and graph.latent and graph.shared == ()
    (folder,) = (tmp_path / "piper-split").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["decoder.onnx", "front.onnx", "split.json"]

    def no_cut(path: Path) -> None:
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(piper_split, "split_voice_graph", no_cut)
    assert load_split_graph(piper.model_path, tmp_path) == graph
    (folder / "front.onnx").unlink()  # a damaged cache is rebuilt, not trusted
    monkeypatch.setattr(piper_split, "split_voice_graph", lambda path: None)
    assert load_split_graph(piper.model_path, tmp_path / "other") is None  # "cannot be cut" is cached too
    monkeypatch.setattr(piper_split, "split_voice_graph", no_cut)
    assert load_split_graph(piper.model_path, tmp_path / "other") is None


def test_unwritable_cache_still_loads(piper: PiperSynthesizer, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert load_split_graph(piper.model_path, blocker) is not None


@pytest.mark.slow
def test_a_graph_without_a_decoder_scope_is_not_cut(piper: PiperSynthesizer, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(piper.model_path))
    for i, node in enumerate(model.graph.node):
        node.name = f"node_{i}"  # an export without scoped names
    path = tmp_path / "flat.onnx"
    onnx.save(model, str(path))
    assert split_voice_graph(path) is None
    (tmp_path / "flat.onnx.json").write_bytes(Path(str(piper.config_path)).read_bytes())
    synth = PiperSynthesizer(path, noise_scale=0.0, noise_w_scale=0.0)
    assert not synth.streams_sentences
    assert len(list(synth.open_utterance().synthesize("It left on Monday."))) == 1
