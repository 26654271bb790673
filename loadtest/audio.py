"""The caller's audio: synthesized text (piper), WAV files, noise; int16 mono at 16 kHz, trimmed.

Speech is trimmed of leading and trailing silence, so the end of the audio is the end of speech:
voice-to-voice latency is measured from the moment the last sample leaves the caller.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from loadtest.scenario import Scenario, Step

RATE = 16_000


def trim_silence(pcm: np.ndarray, peak: int = 500, pad_ms: int = 20) -> np.ndarray:
    """Cut leading/trailing samples quieter than `peak` (keeping `pad_ms` around the speech)."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > peak)
    if len(loud) == 0:
        return pcm
    pad = RATE * pad_ms // 1000
    return pcm[max(0, loud[0] - pad) : min(len(pcm), loud[-1] + pad)]


def noise(ms: int, dbfs: float, seed: int = 0) -> np.ndarray:
    """White noise at `dbfs` RMS."""
    rms = 32767 * 10 ** (dbfs / 20)
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, rms, RATE * ms // 1000), -32768, 32767).astype(np.int16)


def read_wav(path: Path) -> np.ndarray:
    from agent_runtime.audio.wav import read_audio

    audio, _ = read_audio(path, target_rate=RATE)
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    return trim_silence(np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16))


def synthesize(texts: list[str], speed: float = 1.0) -> dict[str, np.ndarray]:
    """Each distinct text spoken by the embedded piper voice (blocking: about 0.3 s per sentence)."""
    if not texts:
        return {}
    from agent_runtime.demo.run import synthesize_text
    from agent_runtime.tts.piper_engine import PiperSynthesizer

    synth = PiperSynthesizer(speed=speed) if speed != 1.0 else PiperSynthesizer()

    async def all_texts() -> dict[str, np.ndarray]:
        return {t: trim_silence(await synthesize_text(synth, t)) for t in dict.fromkeys(texts)}

    return asyncio.run(all_texts())


PAUSE_MARK = " | "


def text_parts(text: str) -> list[str]:
    """The pieces of a step's text between pause marks (' | ')."""
    return [p.strip() for p in text.split(PAUSE_MARK) if p.strip()]


def with_pauses(parts: list[np.ndarray], pause_ms: int) -> np.ndarray:
    """The parts (each trimmed to its speech) joined by `pause_ms` of silence."""
    gap = np.zeros(RATE * pause_ms // 1000, np.int16)
    pieces: list[np.ndarray] = []
    for i, part in enumerate(parts):
        pieces += [gap, part] if i else [part]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)


def prepare(scenario: Scenario) -> list[np.ndarray | None]:
    """The audio of each step (None for steps that play nothing: silence, hang-up)."""
    steps = scenario.caller.steps
    texts = [part for s in steps if s.text is not None for part in text_parts(s.text)]
    spoken = synthesize(texts, scenario.caller.voice_speed)
    out: list[np.ndarray | None] = []
    for i, step in enumerate(steps):
        out.append(step_audio(step, scenario.base_dir, spoken, seed=i))
    return out


def step_audio(step: Step, base_dir: Path, spoken: dict[str, np.ndarray], seed: int = 0) -> np.ndarray | None:
    if step.text is not None:
        return with_pauses([spoken[part] for part in text_parts(step.text)], step.pause_ms)
    if step.wav is not None:
        return read_wav(base_dir / step.wav)
    if step.noise_ms is not None:
        return noise(step.noise_ms, step.noise_dbfs, seed)
    return None
