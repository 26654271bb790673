"""Real engines for turn-manager tests (loaded once per test session)."""

from __future__ import annotations

import numpy as np

from agent_runtime.audio.resample import resample
from agent_runtime.config import AppConfig, load_config


def fast_config(**overrides) -> AppConfig:
    base = {"llm": {"max_tokens": 40, "system_prompt": "You are a helpful shop assistant. Answer in one short sentence."}}
    for k, v in overrides.items():
        base.setdefault(k, {}).update(v)
    return load_config(None, base)


def to16k(pcm: np.ndarray, rate: int) -> np.ndarray:
    return resample(pcm, rate, 16_000)
