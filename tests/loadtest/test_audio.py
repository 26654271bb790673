"""Caller audio from WAV files and noise (no synthesis): 16 kHz int16, trimmed to the sound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from loadtest.audio import RATE, noise, step_audio
from loadtest.scenario import Step


def test_wav_step_is_resampled_and_trimmed(tmp_path: Path) -> None:
    t = np.arange(8000) / 8000
    tone = 0.5 * np.sin(2 * np.pi * 300 * t)
    sf.write(tmp_path / "hello.wav", np.concatenate([np.zeros(4000), tone, np.zeros(8000)]), 8000)
    pcm = step_audio(Step(wav="hello.wav"), tmp_path, {})
    assert pcm is not None and pcm.dtype == np.int16
    assert abs(len(pcm) / RATE - 1.0) < 0.08  # 1 s of tone; the 0.5 s and 1 s of silence are cut
    assert np.abs(pcm.astype(np.int32)).max() > 10_000


def test_noise_level_and_silent_steps() -> None:
    n = noise(500, -30.0)
    assert len(n) == RATE // 2
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean(n.astype(np.float64) ** 2)) / 32767)
    assert abs(rms_dbfs + 30) < 0.5
    assert step_audio(Step(silence_ms=300), Path("."), {}) is None
    assert step_audio(Step(hang_up_after_ms=300), Path("."), {}) is None
