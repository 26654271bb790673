"""An in-process call leg with real-time pacing, for the demo, tests and benchmarks.

The agent side is a normal `Transport`; the caller side (`LoopbackTransport.caller_*`) pushes
microphone frames and observes the agent's audio at the moment it would be heard. Outbound audio is
paced in real time with at most one frame queued ahead, like a real transport, so `clear()` silences
the agent within a frame. Both directions are recorded on one timeline for a stereo call recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from agent_runtime.audio.frame import AudioFrame
from agent_runtime.audio.resample import resample
from agent_runtime.transport.base import Transport


@dataclass
class _Track:
    """Frames placed on a timeline (start time, int16 mono)."""

    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)

    def render(self, t0: float, t1: float, rate: int) -> np.ndarray:
        out = np.zeros(max(0, round((t1 - t0) * rate)), dtype=np.int16)
        for start, pcm in self.frames:
            i = round((start - t0) * rate)
            if i >= len(out) or i + len(pcm) <= 0:
                continue
            a, b = max(i, 0), min(i + len(pcm), len(out))
            out[a:b] = pcm[a - i : b - i]
        return out


class LoopbackTransport(Transport):
    """Agent side of an in-process call. Outbound audio must be mono int16 at `output_sample_rate`."""

    def __init__(self, output_sample_rate: int = 16_000) -> None:
        self.output_sample_rate = output_sample_rate
        self._inbound: asyncio.Queue[AudioFrame | None] = asyncio.Queue()
        self._play_head = 0.0
        self.caller_track = _Track()
        self.agent_track = _Track()
        self._agent_audio = asyncio.Condition()
        self.closed = False
        self.first_send_times: list[float] = []

    # -- agent side --------------------------------------------------------------------------
    async def recv(self) -> AudioFrame | None:
        return await self._inbound.get()

    async def send(self, frame: AudioFrame) -> None:
        if frame.sample_rate != self.output_sample_rate:
            raise ValueError(f"loopback transport plays {self.output_sample_rate} Hz, got {frame.sample_rate}")
        now = time.monotonic()
        self._play_head = max(self._play_head, now)
        ahead = self._play_head - now - frame.duration  # keep at most one frame queued
        if ahead > 0:
            await asyncio.sleep(ahead)
        start = self._play_head
        self._play_head += frame.duration
        self.agent_track.frames.append((start, frame.mono().pcm))
        async with self._agent_audio:
            self._agent_audio.notify_all()

    async def wait_writable(self) -> None:
        wait = self._play_head - time.monotonic() - 0.020
        if wait > 0:
            await asyncio.sleep(wait)

    async def clear(self) -> None:
        now = time.monotonic()
        kept = []
        for start, pcm in self.agent_track.frames:
            if start >= now:
                continue  # queued, never heard
            played = int((now - start) * self.output_sample_rate)
            kept.append((start, pcm[:played] if played < len(pcm) else pcm))
        self.agent_track.frames = kept
        self._play_head = now

    async def close(self) -> None:
        self.closed = True

    # -- caller side -------------------------------------------------------------------------
    def caller_send(self, frame: AudioFrame) -> None:
        """The caller's microphone produced `frame` (timestamped with its capture time)."""
        mono = frame.mono()
        if mono.sample_rate != self.output_sample_rate:  # the recording is at one rate
            mono = AudioFrame(resample(mono.pcm, mono.sample_rate, self.output_sample_rate), self.output_sample_rate)
        self.caller_track.frames.append((frame.timestamp, mono.pcm))
        self._inbound.put_nowait(frame)

    def caller_hang_up(self) -> None:
        self._inbound.put_nowait(None)

    def agent_audio_after(self, t: float) -> float | None:
        """Start time of the first non-silent agent frame that plays at or after `t`."""
        for start, pcm in self.agent_track.frames:
            if start >= t and np.abs(pcm).max(initial=0) > 64:
                return start
        return None

    def agent_last_audio_end(self) -> float | None:
        for start, pcm in reversed(self.agent_track.frames):
            if np.abs(pcm).max(initial=0) > 64:
                return start + len(pcm) / self.output_sample_rate
        return None

    async def wait_agent_audio(self, timeout: float) -> None:
        """Wait until the agent sends another frame (or the timeout passes)."""
        async with self._agent_audio:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._agent_audio.wait(), timeout)

    def recording(self, t0: float, t1: float, rate: int = 16_000) -> np.ndarray:
        """Stereo int16 (caller left, agent right) from t0 to t1 at `rate` (tracks must be at `rate`)."""
        left = self.caller_track.render(t0, t1, rate)
        right = self.agent_track.render(t0, t1, rate)
        return np.stack([left, right], axis=1)
