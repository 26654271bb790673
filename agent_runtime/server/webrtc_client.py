"""A programmatic WebRTC caller (aiortc): plays audio into a call and records what comes back.

Used by the tests, `agent-runtime bench media`, and to smoke-test a deployed server
(`WebRTCCaller.call_http`). It speaks the server's signaling: `POST /offer` with the SDP as JSON.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from agent_runtime.audio.frame import AudioFrame
from agent_runtime.audio.resample import resample
from agent_runtime.transport.webrtc import WEBRTC_RATE, AgentAudioTrack, av_to_frame, install_jitter_buffer


class WebRTCCaller:
    """One caller peer. `play()` queues microphone audio; `received` holds (arrival, 48 kHz mono pcm)."""

    def __init__(self, *, jitter_buffer_packets: int = 0, ice_servers: list | None = None) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers or []))
        self.mic = AgentAudioTrack(WEBRTC_RATE)
        self.jitter_buffer_packets = jitter_buffer_packets
        self.received: list[tuple[float, np.ndarray]] = []
        self.events: list[dict[str, Any]] = []
        self.on_frame_in: Callable[[float, np.ndarray], None] | None = None
        self._channel = self.pc.createDataChannel("events")
        self._channel.on("message", self._on_message)
        self._reader: asyncio.Task[None] | None = None
        self._event_waiters: list[tuple[Callable[[dict], bool], asyncio.Future[dict]]] = []
        self.pc.addTrack(self.mic)
        self.pc.on("track", self._on_track)

    # -- signaling ------------------------------------------------------------------------------
    async def create_offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        install_jitter_buffer(self.pc, self.jitter_buffer_packets)

    async def call_http(self, base_url: str, token: str | None = None) -> dict[str, Any]:
        """Offer to `base_url`/offer; returns the JSON answer (raises on a non-200 reply)."""
        import aiohttp

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"sdp": await self.create_offer(), "type": "offer"}
        async with aiohttp.ClientSession() as http, http.post(f"{base_url}/offer", json=body, headers=headers) as r:
            data = await r.json()
            if r.status != 200:
                raise RuntimeError(f"offer refused: {r.status} {data}")
        await self.accept_answer(data["sdp"])
        return data

    async def connected(self, timeout: float = 10.0) -> None:
        """Wait until the peer connection is up (ICE and DTLS done)."""
        async with asyncio.timeout(timeout):
            while self.pc.connectionState != "connected":
                await asyncio.sleep(0.01)

    # -- media ------------------------------------------------------------------------------------
    def play(self, pcm: np.ndarray, rate: int) -> None:
        """Queue int16 mono audio for the microphone (played in real time, after what is queued)."""
        asyncio.get_running_loop().create_task(self.mic.push(resample(pcm, rate, WEBRTC_RATE)))

    async def say(self, pcm: np.ndarray, rate: int) -> float:
        """Play audio and return when its last frame has left (the time it ended)."""
        data = resample(pcm, rate, WEBRTC_RATE)
        n = self.mic.frame_samples
        for i in range(0, len(data), n):
            await self.mic.push(data[i : i + n])
        while self.mic.queued_samples:
            await asyncio.sleep(0.005)
        return time.monotonic()

    def _on_track(self, track) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = asyncio.create_task(self._read(track))

    async def _read(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                pcm = av_to_frame(frame, now).mono()
                if pcm.sample_rate != WEBRTC_RATE:
                    pcm = AudioFrame(resample(pcm.pcm, pcm.sample_rate, WEBRTC_RATE), WEBRTC_RATE)
                self.received.append((now, pcm.pcm))
                if self.on_frame_in is not None:
                    self.on_frame_in(now, pcm.pcm)
        except (MediaStreamError, asyncio.CancelledError):
            pass

    def audio_after(self, t: float, threshold: int = 300) -> float | None:
        """Arrival time of the first received frame after `t` with audible agent audio."""
        for arrived, pcm in self.received:
            if arrived >= t and np.abs(pcm).max(initial=0) > threshold:
                return arrived
        return None

    def received_audio(self) -> np.ndarray:
        return np.concatenate([p for _, p in self.received]) if self.received else np.zeros(0, np.int16)

    # -- events (data channel) -----------------------------------------------------------------
    def _on_message(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            return
        self.events.append(event)
        for pred, fut in list(self._event_waiters):
            if not fut.done() and pred(event):
                fut.set_result(event)

    async def wait_event(self, pred: Callable[[dict], bool], timeout: float) -> dict:
        for event in self.events:
            if pred(event):
                return event
        fut: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self._event_waiters.append((pred, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._event_waiters.remove((pred, fut))

    async def close(self) -> None:
        self.mic.clear()
        self.mic.stop()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.pc.close()
