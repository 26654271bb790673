"""A simulated caller that talks to a session over the loopback transport in real time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent_runtime.audio.frame import AudioFrame
from agent_runtime.audio.resample import resample
from agent_runtime.transport.loopback import LoopbackTransport

log = logging.getLogger("agent_runtime.demo")


@dataclass
class UtteranceTiming:
    text: str
    start: float
    end: float  # end of the caller's audio (true end of speech, at the caller)
    agent_audio_start: float | None = None  # first agent audio the caller hears after `end`


class SimulatedCaller:
    """Streams a microphone (speech or silence) in real-time 20 ms frames.

    `say()` takes 16 kHz mono audio; the microphone runs at `rate` with `channels` (the audio is
    resampled and duplicated), like a browser's 48 kHz stereo capture.
    """

    frame_ms = 20

    def __init__(self, transport: LoopbackTransport, rate: int = 16_000, channels: int = 1) -> None:
        self.transport = transport
        self.rate = rate
        self.channels = channels
        self._queue: list[np.ndarray] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.t0 = 0.0
        self.frame_samples = self.rate * self.frame_ms // 1000

    async def start(self) -> None:
        self.t0 = time.monotonic()
        self._task = asyncio.create_task(self._mic(), name="caller-mic")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.transport.caller_hang_up()

    async def _mic(self) -> None:
        n = 0
        silence = np.zeros(self.frame_samples, dtype=np.int16)
        buf = np.zeros(0, dtype=np.int16)
        while True:
            due = self.t0 + n * self.frame_ms / 1000
            # A microphone delivers a frame once its last sample has been captured.
            delay = due + self.frame_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(buf) == 0 and self._queue:
                buf = self._queue.pop(0)
            if len(buf):
                pcm = np.zeros(self.frame_samples, dtype=np.int16)
                take = buf[: self.frame_samples]
                pcm[: len(take)] = take
                buf = buf[self.frame_samples :]
            else:
                pcm = silence
                self._idle.set()
            if self.channels > 1:
                pcm = np.repeat(pcm[:, None], self.channels, axis=1)
            self.transport.caller_send(AudioFrame(pcm, self.rate, due))
            n += 1

    async def say(self, pcm: np.ndarray) -> tuple[float, float]:
        """Play `pcm` (int16 16 kHz) into the call; returns its (start, end) on the runtime clock."""
        pcm = resample(pcm, 16_000, self.rate)
        await self._idle.wait()
        self._idle.clear()
        start = self._next_frame_time()
        self._queue.append(pcm)
        end = start + len(pcm) / self.rate
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        await self._idle.wait()
        return start, end

    def _next_frame_time(self) -> float:
        elapsed = time.monotonic() - self.t0
        k = int(elapsed * 1000 // self.frame_ms) + 1
        return self.t0 + k * self.frame_ms / 1000

    async def wait_for_reply(
        self, after: float, quiet_ms: int, timeout: float, agent_busy: Callable[[], bool] | None = None
    ) -> float | None:
        """Wait for agent audio after `after`, then for `quiet_ms` without agent audio (and, when
        `agent_busy` is given, until it says the agent is done: a slow reply may pause mid-way).

        Returns when the agent audio started (None if it never came within `timeout`).
        """
        deadline = time.monotonic() + timeout
        started = None
        while time.monotonic() < deadline:
            started = started or self.transport.agent_audio_after(after)
            if started is not None and not (agent_busy and agent_busy()):
                last = self.transport.agent_last_audio_end() or started
                if time.monotonic() - last >= quiet_ms / 1000:
                    return started
            await asyncio.sleep(0.02)
        return started

    async def wait_for_agent_audio(self, after: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = self.transport.agent_audio_after(after)
            if started is not None:
                return started
            await asyncio.sleep(0.01)
        return None
