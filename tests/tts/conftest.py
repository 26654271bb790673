"""TTS test fixtures: the same session-wide engines as the ASR tests (loaded once per run)."""

from __future__ import annotations

import pytest

from tests.asr.conftest import load_piper, load_whisper, speech_16k


@pytest.fixture(scope="session")
def piper():
    return load_piper()


@pytest.fixture(scope="session")
def whisper():
    return load_whisper()


@pytest.fixture(scope="session")
def speech():
    return speech_16k
