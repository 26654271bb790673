"""Resampling with soxr (one-shot and streaming) and channel mix-down."""

from __future__ import annotations

import numpy as np
import soxr

from agent_runtime.audio.frame import AudioFrame, float_to_pcm16


def resample(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Resample a whole signal (float32 or int16, mono or (n, ch)); keeps the dtype."""
    if in_rate == out_rate or len(samples) == 0:
        return samples
    if samples.dtype == np.int16:
        out = soxr.resample(samples.astype(np.float32) / 32768.0, in_rate, out_rate, quality="HQ")
        return float_to_pcm16(out)
    return soxr.resample(np.asarray(samples, dtype=np.float32), in_rate, out_rate, quality="HQ").astype(np.float32)


class StreamResampler:
    """Streaming mono int16 resampler that carries filter state across frames.

    Output timestamps follow the input clock; output sizes vary by a sample or so per frame,
    which is normal for a streaming resampler.
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

    def process(self, frame: AudioFrame) -> AudioFrame:
        mono = frame.mono()
        if mono.sample_rate != self.in_rate:
            raise ValueError(f"StreamResampler expects {self.in_rate} Hz, got {mono.sample_rate} Hz")
        if self._stream is None:
            return mono
        out = self._stream.resample_chunk(mono.pcm, last=False)
        return AudioFrame(np.asarray(out, dtype=np.int16), self.out_rate, frame.timestamp)


class FrameRebuffer:
    """Re-cuts a stream of mono int16 frames into frames of exactly `frame_samples` samples."""

    def __init__(self, sample_rate: int, frame_ms: int) -> None:
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self._buf = np.zeros(0, dtype=np.int16)
        self._buf_start: float | None = None

    def push(self, frame: AudioFrame) -> list[AudioFrame]:
        if frame.sample_rate != self.sample_rate:
            raise ValueError(f"FrameRebuffer expects {self.sample_rate} Hz, got {frame.sample_rate} Hz")
        if self._buf_start is None or len(self._buf) == 0:
            self._buf_start = frame.timestamp - len(self._buf) / self.sample_rate
        self._buf = np.concatenate([self._buf, frame.mono().pcm])
        out: list[AudioFrame] = []
        n = self.frame_samples
        while len(self._buf) >= n:
            out.append(AudioFrame(self._buf[:n].copy(), self.sample_rate, self._buf_start))
            self._buf = self._buf[n:]
            self._buf_start += n / self.sample_rate
        return out
