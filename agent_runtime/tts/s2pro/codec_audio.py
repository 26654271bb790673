"""Small audio I/O for the codec tools: read a WAV as the codec wants it, write decoded audio.

Reading follows the reference: samples as float (PCM16 = int16 / 32768), channels averaged to
mono, resampled to the codec rate (soxr, very high quality) when the file's rate differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from agent_runtime.errors import AudioFormatError


@dataclass(frozen=True)
class LoadedAudio:
    samples: np.ndarray  # float32 mono at `sample_rate`
    sample_rate: int
    source_rate: int
    source_channels: int
    source_peak: float  # max |x| over all channels before mixing/resampling
    source_clipped_fraction: float  # fraction of source samples with |x| >= CLIP_LEVEL

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


CLIP_LEVEL = 0.999


def read_audio(path: str | Path, sample_rate: int) -> LoadedAudio:
    """Read an audio file (WAV, FLAC, ... anything libsndfile reads) as float32 mono at `sample_rate`."""
    p = Path(path)
    if not p.is_file():
        raise AudioFormatError(f"{p}: no such audio file")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types for corrupt or foreign files
        raise AudioFormatError(f"{p}: not a readable audio file ({exc})") from None
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioFormatError(f"{p}: contains no audio samples")
    if not np.isfinite(data).all():
        raise AudioFormatError(f"{p}: contains NaN or infinite samples")
    peak = float(np.abs(data).max())
    clipped = float((np.abs(data) >= CLIP_LEVEL).mean())
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="VHQ").astype(np.float32)
    return LoadedAudio(mono, sample_rate, int(rate), int(data.shape[1]), peak, clipped)


def write_audio(path: str | Path, samples: np.ndarray, sample_rate: int, pcm16: bool = False) -> None:
    """Write 1-D float32 samples to `.npy` (exact) or an audio file (WAV: 32-bit float, or PCM16)."""
    p = Path(path)
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() == ".npy":
        np.save(p, samples)
        return
    subtype = "PCM_16" if pcm16 else "FLOAT"
    try:
        sf.write(str(p), samples, sample_rate, subtype=subtype)
    except Exception as exc:
        raise AudioFormatError(f"{p}: cannot write audio ({exc})") from None
