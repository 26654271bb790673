"""WAV file input/output with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from agent_runtime.audio.frame import float_to_pcm16
from agent_runtime.audio.resample import resample
from agent_runtime.errors import AudioFormatError


def read_audio(path: str | Path, target_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32 in [-1, 1]; resample to `target_rate` when given.

    Raises AudioFormatError (one line, names the file) if it is missing, unreadable or empty.
    """
    p = Path(path)
    if not p.is_file():
        raise AudioFormatError(f"{p}: no such audio file")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt files
        raise AudioFormatError(f"{p}: not a readable audio file ({exc})") from None
    if data.shape[0] == 0:
        raise AudioFormatError(f"{p}: contains no audio samples")
    mono = data.mean(axis=1).astype(np.float32)
    if target_rate is not None and rate != target_rate:
        mono = resample(mono, rate, target_rate)
        rate = target_rate
    return mono, int(rate)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write float32 (mono or (n, channels)) or int16 samples as a PCM16 WAV."""
    pcm = samples if samples.dtype == np.int16 else float_to_pcm16(samples)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), pcm, sample_rate, subtype="PCM_16")
