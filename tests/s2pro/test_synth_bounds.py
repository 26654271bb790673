"""S2-Pro bounds: frames per segment and a long reply's context (restart from the voice prefix)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agent_runtime.errors import ConfigError
from agent_runtime.tts.s2pro.local_backend import MAX_SEGMENT_FRAMES, LocalBackend, LocalSettings
from tests.s2pro.synth_support import tiny_codec, tiny_engine
from tests.s2pro.test_dual_ar_engine import PARAMS, make_config, make_engine, naive_codes, random_voice

TEXTS = [
    "<|speaker:0|>First sentence of the reply.",
    "<|speaker:0|>And the second one, [whisper] softly.",
    "<|speaker:0|>Then a third sentence.",
]


def test_restart_keeps_the_last_segment_and_matches_the_reference() -> None:
    """Past `max_context`, the next segment sees the voice prefix + the previous segment only,
    and its codes are exactly what the reference generates for that prompt."""
    cfg = make_config()
    engine = make_engine(cfg, torch.float32, seed=5)
    voice = random_voice(cfg)
    b = engine.builder
    gen = torch.Generator().manual_seed(9)
    p0 = b.build(TEXTS[0], voice)
    c0 = naive_codes(engine, p0, PARAMS, 12, gen)
    p1 = torch.cat([p0, b.assistant_codes_end(torch.from_numpy(c0)), b.user_turn(TEXTS[1])], dim=1)
    c1 = naive_codes(engine, p1, PARAMS, 12, gen)
    tail = [b.user_turn(TEXTS[1]), b.assistant_codes_end(torch.from_numpy(c1)), b.user_turn(TEXTS[2])]
    restarted = torch.cat([b.system_turn(voice), *tail], dim=1)
    c2 = naive_codes(engine, restarted, PARAMS, 12, gen)
    full_len = p1.shape[1] + tail[1].shape[1] + tail[2].shape[1]

    stream = engine.open_stream(voice=voice, params=PARAMS, seed=9, max_frames=12, max_context=full_len - 1)
    np.testing.assert_array_equal(stream.generate(TEXTS[0]), c0)
    np.testing.assert_array_equal(stream.generate(TEXTS[1]), c1)
    assert stream.restarts == 0
    np.testing.assert_array_equal(stream.generate(TEXTS[2]), c2)
    assert stream.restarts == 1 and stream.context_length == restarted.shape[1]
    assert len(stream.segments_codes) == 2  # the segment kept as context, and the new one


@pytest.mark.slow
def test_a_long_reply_keeps_a_bounded_context() -> None:
    cfg = make_config(max_seq_len=4096)
    engine = make_engine(cfg, torch.float32, seed=2)
    voice = random_voice(cfg)
    prefix = engine.builder.system_turn(voice).shape[1]
    budget = prefix + 160
    stream = engine.open_stream(voice=voice, params=PARAMS, seed=3, max_frames=20, max_context=budget)
    frames = 0
    for i in range(30):
        frames += stream.generate(f"<|speaker:0|>Sentence number {i} of a reply that goes on.").shape[1]
        assert stream.context_length <= budget
    assert frames > 0 and stream.restarts >= 5
    assert stream.cache.capacity <= 1024  # KV sized to the budget, not to the reply's length
    # without a budget the limit is the reference's max_seq_len - 2048
    assert engine.open_stream(voice=voice).max_context == 4096 - 2048
    with pytest.raises(ConfigError, match="max_context"):
        engine.open_stream(voice=voice, max_context=0)


def test_restart_without_room_for_the_last_segment_keeps_the_prefix_only() -> None:
    cfg = make_config()
    engine = make_engine(cfg, torch.float32, seed=4)
    voice = random_voice(cfg)
    prefix = engine.builder.system_turn(voice).shape[1]
    turn = engine.builder.user_turn(TEXTS[2]).shape[1]
    stream = engine.open_stream(voice=voice, params=PARAMS, seed=1, max_frames=12, max_context=prefix + turn + 8)
    stream.generate(TEXTS[2])
    stream.generate(TEXTS[2])
    assert stream.restarts == 1 and stream.context_length == prefix + turn
    assert len(stream.segments_codes) == 1


def test_frames_per_segment_are_capped() -> None:
    settings = LocalSettings()
    assert settings.frame_cap("Hello there.") == 64 + 6 * 12
    assert settings.frame_cap("x " * 10_000) == MAX_SEGMENT_FRAMES
    assert LocalSettings(max_frames_per_segment=30).frame_cap("x " * 10_000) == 30
    assert settings.max_context == 8192
    with pytest.raises(ConfigError, match="max_context"):
        LocalSettings(max_context=10)


def test_the_backend_passes_its_context_budget(s2pro_fixtures: Path) -> None:
    engine = tiny_engine(s2pro_fixtures)
    backend = LocalBackend(engine, tiny_codec(s2pro_fixtures), None, LocalSettings(seed=1, max_frames_per_segment=6,
                                                                                   max_context=300))  # fmt: skip
    utterance = backend.open_utterance()
    try:
        for i in range(12):
            list(utterance.synthesize(f"Sentence {i} of a reply that goes on and on."))
        assert utterance.stream is not None
        assert utterance.stream.max_context == 300 and utterance.stream.context_length <= 300
        assert utterance.stream.restarts > 0
        assert len(utterance.segment_samples) == 12 and all(n > 0 for n in utterance.segment_samples)
    finally:
        utterance.close()
