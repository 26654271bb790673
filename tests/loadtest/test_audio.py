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


def test_a_pause_mark_splits_the_utterance_with_silence() -> None:
    """' | ' in a step's text: the parts spoken one after another with `pause_ms` of silence."""
    first, second = np.full(1600, 8000, np.int16), np.full(3200, -8000, np.int16)
    spoken = {"Hi, I'd like to know": first, "what time you open tomorrow.": second}
    step = Step(text="Hi, I'd like to know | what time you open tomorrow.", pause_ms=700)
    pcm = step_audio(step, Path("."), spoken)
    assert pcm is not None and len(pcm) == 1600 + RATE * 700 // 1000 + 3200
    assert (pcm[:1600] == 8000).all() and not pcm[1600:-3200].any() and (pcm[-3200:] == -8000).all()
    plain = step_audio(Step(text="what time you open tomorrow."), Path("."), spoken)
    assert plain is not None and (plain == second).all()


def test_the_comparison_scenario_loads() -> None:
    from loadtest.scenario import load_scenario
    from tests.conftest import REPO_ROOT

    scenario = load_scenario(REPO_ROOT / "configs" / "scenarios" / "compare-v2v.yaml")
    texts = [s.text for s in scenario.caller.steps]
    assert len(texts) == 3 and " | " in texts[1]
