"""Shared test fixtures: paths to the repository and its test data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
S2PRO_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "s2pro"
"""The tiny S2-Pro checkpoint, codec and expected outputs (a copy of ../shared/fixtures/s2pro, so a
clean clone tests S2-Pro)."""


@pytest.fixture(scope="session")
def s2pro_fixtures() -> Path:
    assert S2PRO_FIXTURES.is_dir(), f"S2-Pro fixtures missing from the repository: {S2PRO_FIXTURES}"
    return S2PRO_FIXTURES


@pytest.fixture(scope="session")
def real_engines(piper_voice):
    """The embedded engines: Whisper tiny.en, SmolLM2-135M in process, the piper joe voice."""
    from agent_runtime.asr.whisper import WhisperRecognizer
    from agent_runtime.llm.local import LocalLLMBackend
    from agent_runtime.turn.session import Engines

    recognizer = WhisperRecognizer("tiny.en", cpu_threads=2)
    recognizer.warmup()
    llm = LocalLLMBackend.from_options()
    asyncio.run(llm.warmup())
    return Engines(recognizer, llm, piper_voice)


@pytest.fixture(scope="session")
def piper_voice():
    from agent_runtime.tts.piper_engine import PiperSynthesizer

    return PiperSynthesizer(noise_scale=0.0, noise_w_scale=0.0)


@pytest.fixture(scope="session")
def say(piper_voice):
    """Text -> int16 16 kHz caller speech, synthesised with piper (deterministic, cached per text)."""
    from agent_runtime.audio.frame import float_to_pcm16
    from agent_runtime.audio.resample import resample

    cache: dict[str, np.ndarray] = {}

    def _say(text: str) -> np.ndarray:
        if text not in cache:
            audio = piper_voice.synthesize_text(text)
            cache[text] = float_to_pcm16(resample(audio, piper_voice.sample_rate, 16_000))
        return cache[text]

    return _say
