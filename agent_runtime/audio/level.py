"""Loudness of int16 audio, and where a recording is audible: the one definition the latency
measurements share (`bench media`, the load harness, the VAD evaluation), so "the caller's last
audible sound" means the same everywhere."""

from __future__ import annotations

import numpy as np

__all__ = ["AUDIBLE_DBFS", "audible_span", "dbfs", "last_audible_end"]

AUDIBLE_DBFS = -45.0
"""A 10 ms block louder than this (RMS, dB relative to full scale) is audible."""


def dbfs(pcm: np.ndarray) -> float:
    """RMS level of int16 samples in dB relative to full scale (-120 for digital silence)."""
    x = pcm.astype(np.float64)
    ms = float(np.dot(x, x)) / max(len(x), 1)
    return 10.0 * float(np.log10(ms / (32768.0 * 32768.0) + 1e-12))


def last_audible_end(pcm: np.ndarray, rate: int) -> float | None:
    """Seconds from the start of `pcm` to the end of its last audible 10 ms block (None: none)."""
    block = rate // 100
    for k in range(len(pcm) // block, 0, -1):
        if dbfs(pcm[(k - 1) * block : k * block]) >= AUDIBLE_DBFS:
            return k * block / rate
    return None


def audible_span(pcm: np.ndarray, rate: int = 16_000) -> tuple[float, float]:
    """(start, end) in seconds of the audible 10 ms blocks of `pcm` ((0, 0) when none is)."""
    n = rate // 100
    loud = [k for k in range(len(pcm) // n) if dbfs(pcm[k * n : (k + 1) * n]) >= AUDIBLE_DBFS]
    if not loud:
        return 0.0, 0.0
    return loud[0] * n / rate, (loud[-1] + 1) * n / rate
