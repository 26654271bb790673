"""Caller input and speaker output for driving a LiveKit AgentSession without a room.

`QueueAudioInput` feeds caller audio to an `AgentSession` in real-time 20 ms frames (silence when
nothing is queued, as a microphone would), and `RecordingAudioOutput` is a sink that plays what it
captures in simulated real time, reports playback to the session and stops on `clear_buffer()`
(an interruption), the way livekit-agents' own tests drive sessions without a room.

Used by this package's tests and `bench.py`; also handy to run an agent on a WAV file offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
from livekit import rtc
from livekit.agents.voice import io

FRAME_MS = 20
RATE = 16_000


class QueueAudioInput(io.AudioInput):
    """Caller audio at 16 kHz: `say()` queues speech; silence is sent between utterances."""

    def __init__(self, *, realtime: bool = True) -> None:
        super().__init__(label="test-caller")
        self._pending = np.zeros(0, dtype=np.int16)
        self._realtime = realtime
        self._next_at: float | None = None
        self._closed = False
        self._speech_left = 0
        self.spoken = asyncio.Event()
        self.speech_ended_at: float | None = None
        """`time.monotonic()` when the last sample of the last `say()` speech (not its trailing
        silence) was delivered."""

    def say(self, pcm: np.ndarray, trailing_silence_s: float = 0.0) -> None:
        silence = np.zeros(int(trailing_silence_s * RATE), dtype=np.int16)
        self._speech_left = len(self._pending) + len(pcm)
        self._pending = np.concatenate([self._pending, pcm.astype(np.int16), silence])
        self.speech_ended_at = None
        self.spoken.clear()

    def close(self) -> None:
        self._closed = True

    async def __anext__(self) -> rtc.AudioFrame:
        if self._closed:
            raise StopAsyncIteration
        n = RATE * FRAME_MS // 1000
        now = time.monotonic()
        if self._next_at is None:
            self._next_at = now
        if self._realtime and self._next_at > now:
            await asyncio.sleep(self._next_at - now)
        self._next_at += FRAME_MS / 1000
        chunk, self._pending = self._pending[:n], self._pending[n:]
        if self._speech_left > 0:
            self._speech_left -= len(chunk)
            if self._speech_left <= 0:
                self.speech_ended_at = time.monotonic()
        if not len(self._pending):
            self.spoken.set()
        if len(chunk) < n:
            chunk = np.concatenate([chunk, np.zeros(n - len(chunk), dtype=np.int16)])
        return rtc.AudioFrame(chunk.tobytes(), RATE, 1, n)


class RecordingAudioOutput(io.AudioOutput):
    """Keeps every frame the agent plays; playback takes the audio's duration in real time."""

    def __init__(self) -> None:
        super().__init__(label="test-speaker", capabilities=io.AudioOutputCapabilities(pause=False), sample_rate=None)
        self.frames: list[rtc.AudioFrame] = []
        self.first_frame_at: float | None = None
        self.segment_first_frame_at: list[float] = []
        self.interrupted_segments = 0
        self._segment_duration = 0.0
        self._segment_started: float | None = None
        self._finish: asyncio.Task[None] | None = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        now = time.monotonic()
        if self._segment_started is None:
            self._segment_started = now
            self.segment_first_frame_at.append(now)
            if self.first_frame_at is None:
                self.first_frame_at = now
            self.on_playback_started(created_at=time.time())
        self.frames.append(frame)
        self._segment_duration += frame.duration

    def flush(self) -> None:
        super().flush()
        if self._segment_started is None:
            return
        started, duration = self._segment_started, self._segment_duration
        self._reset()

        async def finish() -> None:
            await asyncio.sleep(max(0.0, started + duration - time.monotonic()))
            self.on_playback_finished(playback_position=duration, interrupted=False)

        self._finish = asyncio.get_running_loop().create_task(finish())

    def clear_buffer(self) -> None:
        if self._finish is not None and not self._finish.done():
            self._finish.cancel()
            self._finish = None
            self.interrupted_segments += 1
            self.on_playback_finished(playback_position=0.0, interrupted=True)
        elif self._segment_started is not None:
            position = time.monotonic() - self._segment_started
            self._reset()
            self.interrupted_segments += 1
            self.on_playback_finished(playback_position=position, interrupted=True)

    def _reset(self) -> None:
        self._segment_started = None
        self._segment_duration = 0.0

    def audio(self) -> tuple[np.ndarray, int]:
        """Everything played, as int16 mono and its rate."""
        if not self.frames:
            return np.zeros(0, dtype=np.int16), RATE
        rate = self.frames[0].sample_rate
        return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in self.frames]), rate

    async def aclose(self) -> None:
        if self._finish is not None:
            self._finish.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._finish
