"""Small audio I/O for the codec tools: read a WAV as the codec wants it, write decoded audio.

Reading follows the reference (fish-speech's codec CLI): samples as float (PCM16 = int16 / 32768),
channels averaged to mono, resampled to the codec rate when the file's rate differs. The default
resampler reproduces the reference's windowed-sinc interpolation (torchaudio's default method:
Hann window, 6 zero crossings, roll-off 0.99), so codes of non-44.1 kHz files match the reference;
`resampler="soxr"` uses soxr (very high quality) instead.
"""

from __future__ import annotations

import math
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


RESAMPLERS = ("reference", "soxr")


def resample_reference(x: np.ndarray, orig: int, new: int, zero_crossings: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """Windowed-sinc resampling of float32 mono `x` from `orig` to `new` Hz, in float32.

    For output phase j and input offset i the filter is sinc(pi f t) * cos(pi t / (2 z))^2 * f / orig
    with f = rolloff * min(orig, new), t = f * (i / orig - j / new) clamped to +-z (all in the
    reduced rates orig/g, new/g); applied as one strided convolution; output length ceil(L * new / orig).
    """
    import torch

    if orig == new:
        return x
    g = math.gcd(int(orig), int(new))
    orig, new = int(orig) // g, int(new) // g
    cutoff = min(orig, new) * rolloff
    width = math.ceil(zero_crossings * orig / cutoff)
    offsets = torch.arange(-width, width + orig, dtype=torch.float32)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float32)[:, None, None] / new + offsets
    t = (t * cutoff).clamp(-zero_crossings, zero_crossings)
    window = torch.cos(t * math.pi / zero_crossings / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0), t.sin() / t) * (window * (cutoff / orig))  # (new, 1, taps)
    wav = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    length = wav.shape[-1]
    padded = torch.nn.functional.pad(wav, (width, width + orig))[0]
    frames = padded.unfold(0, kernel.shape[-1], orig)  # (steps, taps): a strided convolution as one GEMM
    out = (frames @ kernel[:, 0].t()).reshape(-1)  # (steps * new,)
    return out[: math.ceil(new * length / orig)].numpy()


def read_audio(path: str | Path, sample_rate: int, resampler: str = "reference") -> LoadedAudio:
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
        if resampler == "soxr":
            mono = soxr.resample(mono, rate, sample_rate, quality="VHQ").astype(np.float32)
        elif resampler == "reference":
            mono = resample_reference(mono, rate, sample_rate)
        else:
            raise ValueError(f"unknown resampler {resampler!r} (use one of {RESAMPLERS})")
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
