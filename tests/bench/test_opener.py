"""`python -m agent_runtime.bench.opener`'s measurement, on the instant tone TTS (no model)."""

from __future__ import annotations

from agent_runtime.bench.instant import InstantSynthesizer
from agent_runtime.bench.opener import measure_opener_split


def test_opener_split_figures() -> None:
    synth = InstantSynthesizer(seconds_per_char=0.03)
    r = measure_opener_split(synth, "Sure,", "I can check the status of your order for you.", repeats=2)
    assert set(r) == {"opener_first_ms", "whole_first_ms", "rest_ms", "opener_audio_ms", "pays"}
    assert r["opener_audio_ms"] > 0 and r["whole_first_ms"] >= 0 and r["pays"] in (0.0, 1.0)
