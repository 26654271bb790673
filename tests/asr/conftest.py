"""Session-wide Whisper and piper engines for the ASR and TTS tests (each model loads once)."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing from model hubs at test time


@functools.cache
def load_whisper():
    from agent_runtime.asr.whisper import WhisperRecognizer

    recognizer = WhisperRecognizer("tiny.en", cpu_threads=2)
    recognizer.warmup()
    return recognizer


@functools.cache
def load_piper():
    """Deterministic piper (no generator noise) so every run hears the same audio."""
    from agent_runtime.tts.piper_engine import PiperSynthesizer

    synth = PiperSynthesizer(noise_scale=0.0, noise_w_scale=0.0, threads=2)
    synth.warmup()
    return synth


@functools.cache
def speech_16k(text: str) -> np.ndarray:
    """`text` spoken by piper, with 0.2 s of silence around it, as float32 at 16 kHz."""
    from agent_runtime.audio import resample

    synth = load_piper()
    audio = synth.synthesize_text(text)
    pad = np.zeros(int(0.2 * synth.sample_rate), dtype=np.float32)
    return resample(np.concatenate([pad, audio, pad]), synth.sample_rate, 16_000)


@pytest.fixture(scope="session")
def whisper():
    return load_whisper()


@pytest.fixture(scope="session")
def piper():
    return load_piper()


@pytest.fixture(scope="session")
def speech():
    """Callable: text -> piper speech at 16 kHz (cached)."""
    return speech_16k
