"""The audio frame that flows between every stage of the runtime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """A block of PCM16 audio.

    `pcm` is int16, shape (samples,) for mono or (samples, channels) for more channels.
    `timestamp` is the time of the first sample in seconds on the runtime clock (`time.monotonic()`):
    transports stamp inbound frames with when their first sample was captured, so latencies can be
    measured from the caller's end of speech.
    """

    pcm: np.ndarray
    sample_rate: int
    timestamp: float = 0.0

    def __post_init__(self) -> None:
        if self.pcm.dtype != np.int16:
            raise TypeError(f"AudioFrame.pcm must be int16, got {self.pcm.dtype}")
        if self.pcm.ndim not in (1, 2):
            raise ValueError(f"AudioFrame.pcm must be 1-D or 2-D, got shape {self.pcm.shape}")
        if self.sample_rate <= 0:
            raise ValueError(f"invalid sample rate {self.sample_rate}")

    @property
    def channels(self) -> int:
        return 1 if self.pcm.ndim == 1 else int(self.pcm.shape[1])

    @property
    def num_samples(self) -> int:
        return int(self.pcm.shape[0])

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def end_time(self) -> float:
        return self.timestamp + self.duration

    def mono(self) -> AudioFrame:
        """This frame mixed down to one channel."""
        if self.pcm.ndim == 1:
            return self
        mixed = self.pcm.astype(np.int32).mean(axis=1)
        return AudioFrame(np.clip(np.round(mixed), -32768, 32767).astype(np.int16), self.sample_rate, self.timestamp)

    def to_float32(self) -> np.ndarray:
        """Samples scaled to [-1, 1) as float32 (same shape as `pcm`)."""
        return self.pcm.astype(np.float32) / 32768.0

    @staticmethod
    def from_float32(samples: np.ndarray, sample_rate: int, timestamp: float = 0.0) -> AudioFrame:
        return AudioFrame(float_to_pcm16(samples), sample_rate, timestamp)


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to int16, clipped and rounded."""
    return np.clip(np.round(np.asarray(samples, dtype=np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def pcm16_to_float(pcm: np.ndarray) -> np.ndarray:
    return np.asarray(pcm, dtype=np.int16).astype(np.float32) / 32768.0


def split_frames(pcm: np.ndarray, sample_rate: int, frame_ms: int, start_time: float = 0.0) -> list[AudioFrame]:
    """Cut a mono int16 signal into frames of `frame_ms` (the last one zero-padded)."""
    n = sample_rate * frame_ms // 1000
    count = -(-len(pcm) // n)
    padded = np.zeros(count * n, dtype=np.int16)
    padded[: len(pcm)] = pcm
    return [AudioFrame(padded[i * n : (i + 1) * n], sample_rate, start_time + i * frame_ms / 1000) for i in range(count)]
