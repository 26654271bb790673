"""Fixtures for the LiveKit plugin tests (each test module skips itself when livekit-agents is absent)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def whisper():
    from agent_runtime.asr.whisper import WhisperRecognizer

    recognizer = WhisperRecognizer("tiny.en", cpu_threads=2)
    recognizer.warmup()
    return recognizer


@pytest.fixture
def transcribe(whisper):
    """int16 audio at any rate -> Whisper's text."""
    from agent_runtime.audio.resample import resample

    def _transcribe(pcm: np.ndarray, rate: int) -> str:
        audio = resample(pcm.astype(np.float32) / 32768.0, rate, 16_000)
        return whisper.transcribe(audio).text

    return _transcribe
