"""A caller over real WebRTC: an aiortc peer on loopback, signaling with POST /offer."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np

from agent_runtime.audio.level import last_audible_end
from agent_runtime.server.webrtc_client import WebRTCCaller
from loadtest.callers.base import CallFailed, Leg


class _Discard(list):
    """Keeps nothing (the leg keeps only arrival times and peaks, not the audio)."""

    def append(self, _item: object) -> None:
        return None


class _Peer(WebRTCCaller):
    def __init__(self, leg: WebRTCLeg) -> None:
        super().__init__()
        self.received = _Discard()
        self._leg = leg
        self.on_frame_in = lambda now, pcm: leg.record(pcm, now)
        self.pc.on("connectionstatechange", self._state)

    async def _state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._leg.peer_ended()

    def _on_message(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            return
        if isinstance(event, dict) and event.get("kind") == "barge_in" and event.get("phase") == "interrupt":
            self._leg.interrupt_signals.append(time.monotonic())
        # the events themselves are not kept (a long call would accumulate them)


class WebRTCLeg(Leg):
    kind = "webrtc"

    def __init__(self) -> None:
        super().__init__()
        self.peer = _Peer(self)
        self._sent: list[tuple[float, np.ndarray]] | None = None  # frames leaving during `say`
        self._last_sent: list[tuple[float, np.ndarray]] = []
        self.peer.mic.on_frame_out = self._frame_out

    def _frame_out(self, t: float, pcm: np.ndarray) -> None:
        if self._sent is not None:
            self._sent.append((t, pcm))

    async def connect(self, base_url: str, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.peer.call_http(base_url)
                await self.peer.connected(timeout)
        except TimeoutError:
            raise CallFailed(f"WebRTC connection not up within {timeout:.0f} s") from None
        except Exception as exc:  # refused (503 busy), bad answer, network
            raise CallFailed(f"{type(exc).__name__}: {exc}"[:300]) from None

    async def say(self, pcm16k: np.ndarray) -> tuple[float, float]:
        self._sent = []
        start = time.monotonic()
        try:
            end = await self.peer.say(pcm16k, 16_000)
        finally:
            self._last_sent, self._sent = self._sent or [], None
        return start, end

    def speech_end(self, pcm16k: np.ndarray, start: float, end: float) -> float:
        """The departure of the last audible 10 ms block among the frames the last `say` sent."""
        for t, pcm in reversed(self._last_sent):
            audible = last_audible_end(pcm, self.peer.mic.sample_rate)
            if audible is not None:
                self._last_sent = []
                return t + audible
        return super().speech_end(pcm16k, start, end)

    async def hang_up(self) -> None:
        if self.hung_up:
            return
        self.hung_up = True
        await self.peer.close()
