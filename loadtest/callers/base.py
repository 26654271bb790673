"""What every caller leg records: arrival time and loudness of each frame of agent audio."""

from __future__ import annotations

import abc
import time

import numpy as np

from agent_runtime.audio.level import last_audible_end


class CallFailed(Exception):
    """The call could not be set up (refused, busy, ICE or WebSocket timeout)."""


class Leg(abc.ABC):
    """One caller's connection. Subclasses fill `arrivals`/`peaks` as agent frames arrive."""

    kind = "?"
    frame_s = 0.02

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        """Monotonic arrival time of each frame of agent audio (silent frames included)."""
        self.peaks: list[int] = []
        """Peak absolute int16 sample of each frame."""
        self.interrupt_signals: list[float] = []
        """When the server said it stopped the agent for a barge-in (WebRTC event, Twilio `clear`)."""
        self.hung_up = False
        self.peer_ended_at: float | None = None
        """Set when the server side ended the call before the caller hung up."""

    def record(self, pcm: np.ndarray, now: float | None = None) -> None:
        self.arrivals.append(time.monotonic() if now is None else now)
        self.peaks.append(int(np.abs(pcm.astype(np.int32)).max(initial=0)))

    def peer_ended(self) -> None:
        if not self.hung_up and self.peer_ended_at is None:
            self.peer_ended_at = time.monotonic()

    def last_audible(self, threshold: int) -> float | None:
        for t, p in zip(reversed(self.arrivals), reversed(self.peaks), strict=True):
            if p > threshold:
                return t
        return None

    def first_audible_after(self, t0: float, threshold: int) -> float | None:
        for i in range(len(self.arrivals) - 1, -1, -1):  # scan back: recent frames are at the end
            if self.arrivals[i] < t0:
                break
        else:
            i = -1
        for j in range(i + 1, len(self.arrivals)):
            if self.peaks[j] > threshold and self.arrivals[j] >= t0:
                return self.arrivals[j]
        return None

    @property
    def alive(self) -> bool:
        return self.peer_ended_at is None and not self.hung_up

    @abc.abstractmethod
    async def connect(self, base_url: str, timeout: float) -> None:
        """Set the call up; raises CallFailed."""

    @abc.abstractmethod
    async def say(self, pcm16k: np.ndarray) -> tuple[float, float]:
        """Play int16 16 kHz audio in real time; returns when its first and last frames left."""

    def speech_end(self, pcm16k: np.ndarray, start: float, end: float) -> float:
        """When the caller's last audible sound left, for audio `say` played from `start` to `end`.

        This estimate: `end` less the audio after the last audible 10 ms block. Legs that see each
        frame leave (WebRTC) override it with the departure of that block."""
        audible = last_audible_end(pcm16k, 16_000)
        return end if audible is None else end - (len(pcm16k) / 16_000 - audible)

    @abc.abstractmethod
    async def hang_up(self) -> None:
        """End the call from the caller's side (idempotent)."""
