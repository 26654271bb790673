"""A caller over the Twilio Media Streams WebSocket, speaking Twilio's side of the protocol.

Like Twilio, it sends a 20 ms mu-law `media` message every 20 ms for the whole call (silence between
utterances) and echoes each `mark` back once the audio before it has arrived; `clear` is noted as the
server's barge-in signal.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid

import aiohttp
import numpy as np

from agent_runtime.audio import mulaw
from agent_runtime.audio.resample import resample
from loadtest.callers.base import CallFailed, Leg

RATE = 8_000
FRAME = 160  # 20 ms at 8 kHz


class TwilioLeg(Leg):
    kind = "twilio"

    def __init__(self) -> None:
        super().__init__()
        self.sid = "MZ" + uuid.uuid4().hex
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._queue: list[np.ndarray] = []
        self._sent_all = asyncio.Event()
        self._sent_all.set()
        self._last_frame_sent = 0.0
        self._first_frame_sent: float | None = None

    async def connect(self, base_url: str, timeout: float) -> None:
        url = base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/twilio"
        self._http = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(timeout):
                self._ws = await self._http.ws_connect(url, max_msg_size=1 << 20, heartbeat=None)
                await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
                await self._send({
                    "event": "start", "sequenceNumber": "1", "streamSid": self.sid,
                    "start": {
                        "accountSid": "AC-loadtest", "callSid": "CA" + self.sid[2:], "streamSid": self.sid,
                        "tracks": ["inbound"], "customParameters": {},
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
                    },
                })
        except Exception as exc:
            await self._close_http()
            raise CallFailed(f"phone WebSocket: {type(exc).__name__}: {exc}"[:300]) from None
        self._tasks = [asyncio.create_task(self._mic()), asyncio.create_task(self._read())]

    async def _send(self, obj: dict) -> None:
        assert self._ws is not None
        await self._ws.send_str(json.dumps(obj, separators=(",", ":")))

    async def _mic(self) -> None:
        """One media message every 20 ms, on an absolute schedule, until hang-up."""
        t0 = time.monotonic()
        buf = np.zeros(0, dtype=np.int16)
        silence = np.zeros(FRAME, dtype=np.int16)
        n = 0
        while self._ws is not None and not self._ws.closed:
            n += 1
            await asyncio.sleep(max(0.0, t0 + n * 0.02 - time.monotonic()))
            if not len(buf) and self._queue:
                buf = self._queue.pop(0)
            frame, buf = (buf[:FRAME], buf[FRAME:]) if len(buf) else (silence, buf)
            if len(frame) < FRAME:
                frame = np.concatenate([frame, np.zeros(FRAME - len(frame), dtype=np.int16)])
            payload = base64.b64encode(mulaw.encode(frame)).decode("ascii")
            try:
                await self._send({"event": "media", "sequenceNumber": str(n + 1), "streamSid": self.sid,
                                  "media": {"track": "inbound", "chunk": str(n), "timestamp": str(n * 20),
                                            "payload": payload}})
            except (ConnectionError, RuntimeError):
                break
            now = time.monotonic()
            if frame is not silence:
                self._first_frame_sent = self._first_frame_sent or now
                self._last_frame_sent = now
                if not len(buf) and not self._queue:
                    self._sent_all.set()
        self.peer_ended()

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            now = time.monotonic()
            try:
                data = json.loads(msg.data)
                event = data.get("event")
                pcm = mulaw.decode(base64.b64decode(data["media"]["payload"])) if event == "media" else None
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # not a Media Streams message: ignore it, as Twilio would
            if pcm is not None:
                self.record(pcm, now)
            elif event == "mark":  # "played": the audio before it has arrived
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._send({"event": "mark", "streamSid": self.sid, "mark": data.get("mark", {})})
            elif event == "clear":
                self.interrupt_signals.append(now)
        self.peer_ended()

    async def say(self, pcm16k: np.ndarray) -> tuple[float, float]:
        await self._sent_all.wait()
        self._first_frame_sent = None
        self._sent_all.clear()
        self._queue.append(resample(pcm16k, 16_000, RATE))
        while not self._sent_all.is_set() and self.alive:
            await asyncio.sleep(0.01)
        self._sent_all.set()
        end = self._last_frame_sent or time.monotonic()
        return (self._first_frame_sent or end), end

    async def hang_up(self) -> None:
        if self.hung_up:
            return
        self.hung_up = True
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._send({"event": "stop", "streamSid": self.sid, "stop": {"callSid": "CA" + self.sid[2:]}})
                await self._ws.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_http()

    async def _close_http(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
