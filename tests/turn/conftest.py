"""Real engines for turn-manager tests (loaded once per test session)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from agent_runtime.audio.resample import resample
from agent_runtime.bench.instant import InstantSynthesizer
from agent_runtime.config import AppConfig, load_config
from agent_runtime.tts.base import UtteranceSynth


def fast_config(**overrides) -> AppConfig:
    base = {"llm": {"max_tokens": 40, "system_prompt": "You are a helpful shop assistant. Answer in one short sentence."}}
    for k, v in overrides.items():
        base.setdefault(k, {}).update(v)
    return load_config(None, base)


def to16k(pcm: np.ndarray, rate: int) -> np.ndarray:
    return resample(pcm, rate, 16_000)


class _RecordingUtterance(UtteranceSynth):
    def __init__(self, inner: UtteranceSynth, spoken: list[str]) -> None:
        self.inner = inner
        self.spoken = spoken

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        self.spoken.append(text)
        yield from self.inner.synthesize(text)

    def cancel(self) -> None:
        self.inner.cancel()


class RecordingSynth(InstantSynthesizer):
    """Instant TTS (a short tone per segment) that remembers each segment's text in `spoken`."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.spoken: list[str] = []

    def open_utterance(self) -> UtteranceSynth:
        return _RecordingUtterance(super().open_utterance(), self.spoken)
