"""Phone call leg over a Twilio Media Streams WebSocket (bidirectional `<Connect><Stream>`).

Messages are JSON text frames. Twilio sends `connected`, `start` (streamSid, callSid, media format,
custom parameters), `media` (base64 8 kHz mu-law, 20 ms each), `mark` (a mark we sent has been
played), `dtmf` and `stop`. We send `media` (base64 mu-law with the streamSid), `mark` (to learn how
far playback got) and `clear` (barge-in: Twilio drops the audio it has buffered).

Outbound audio is paced in real time with at most one frame ahead of the caller's ear, so Twilio's
own buffer stays small and `clear()` silences the agent at once. Anything that is not a Twilio
message (not JSON, binary, no `event`, a known event of the wrong shape: see `twilio_messages.py`)
closes the socket with code 1007 and a reason, and ends the call.

Calls always end: `start(timeout)` gives up on a socket that sends no valid `start` in time, and
`recv()` hangs up (code 1008, with the reason) when no `media` arrived for `media_timeout_s`, counted
from the `start`. A peer that stops answering the WebSocket's keepalive pings (aiohttp `heartbeat`)
is hung up too; `hang_up` says which of these ended the call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any

from aiohttp import WSMsgType, web

from agent_runtime.audio import mulaw
from agent_runtime.audio.frame import AudioFrame
from agent_runtime.transport.base import Transport
from agent_runtime.transport.hangup import HangUp
from agent_runtime.transport.twilio_messages import (
    DEFAULT_MAX_DEPTH,
    Connected,
    Mark,
    Media,
    Start,
    Stop,
    StreamStart,
    TwilioMessage,
    TwilioProtocolError,
    parse_message,
)

log = logging.getLogger("agent_runtime.transport.twilio")

TWILIO_RATE = 8_000
CLOSE_INVALID = 1007  # "invalid frame payload data"
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013  # "try again later": no call slot for a stream that started


class TwilioTransport(Transport):
    """Agent side of a phone call; `await start()` before handing it to a session."""

    def __init__(
        self, ws: web.WebSocketResponse, *, mark_every_frames: int = 10, media_timeout_s: float | None = None,
        max_json_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.ws = ws
        self.max_json_depth = max_json_depth
        self.media_timeout_s = media_timeout_s
        self._last_media = time.monotonic()
        self.hang_up: HangUp | None = None
        """Set when the transport ended the call on its own (timeout, missed keepalive)."""
        self.output_sample_rate = TWILIO_RATE
        self.stream: StreamStart | None = None
        self.mark_every_frames = mark_every_frames
        self._send_lock = asyncio.Lock()
        self._play_head = 0.0
        self._frames_sent = 0
        self._samples_sent = 0
        self._marks: dict[str, int] = {}  # mark name -> samples sent when it was placed
        self.samples_played = 0
        """Agent audio Twilio confirmed played (from echoed marks), in samples."""
        self.closed = False
        self.close_reason: str | None = None

    # -- protocol ---------------------------------------------------------------------------------
    async def _next_message(self, timeout: float | None = None) -> TwilioMessage | None:
        """The next Twilio message; None when the socket closed or sent garbage (then closed).

        Raises TimeoutError when nothing arrived within `timeout` seconds.
        """
        msg = await self.ws.receive(timeout=timeout)
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            if isinstance(self.ws.exception(), TimeoutError):  # aiohttp's heartbeat got no pong
                self.hang_up = HangUp.KEEPALIVE
                log.warning("twilio stream %s: no keepalive pong: hanging up", self._sid)
            return None
        try:
            if msg.type is not WSMsgType.TEXT:
                raise TwilioProtocolError("binary frame")
            return parse_message(msg.data, self.max_json_depth)
        except TwilioProtocolError as exc:
            await self._abort(str(exc))
            return None

    @property
    def _sid(self) -> str:
        return self.stream.stream_sid if self.stream else "-"

    async def _abort(self, reason: str) -> None:
        self.close_reason = reason
        log.warning("twilio stream %s: closing: %s", self._sid, reason)
        await self.close(CLOSE_INVALID, reason)

    async def _time_out(self, hang_up: HangUp, reason: str) -> None:
        self.hang_up = hang_up
        log.warning("twilio stream %s: %s: hanging up", self._sid, reason)
        await self.close(CLOSE_POLICY, reason)

    async def start(self, timeout: float | None = 10.0) -> StreamStart | None:
        """Wait for `start` (skipping `connected`); None if the socket closed, misbehaved or sent no
        `start` within `timeout` s (then closed with 1008 and `hang_up` SETUP_TIMEOUT)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    msg = await self._next_message()
                    if msg is None:
                        return None
                    if isinstance(msg, Start):
                        break
                    if not isinstance(msg, Connected):
                        await self._abort(f"expected 'start', got {msg.event!r}")
                        return None
        except TimeoutError:
            await self._time_out(HangUp.SETUP_TIMEOUT, f"no valid 'start' within {timeout:g} s")
            return None
        self.stream = msg.stream  # validated: mu-law at 8 kHz, a streamSid
        self._last_media = time.monotonic()  # the media timeout counts from the start of the call
        return self.stream

    def _media_wait(self) -> float | None:
        """Seconds left until the media timeout (None: no timeout)."""
        if self.media_timeout_s is None:
            return None
        return max(0.001, self._last_media + self.media_timeout_s - time.monotonic())

    async def recv(self) -> AudioFrame | None:
        while not self.closed:
            try:
                msg = await self._next_message(self._media_wait())
            except TimeoutError:
                await self._time_out(HangUp.MEDIA_TIMEOUT, f"no caller audio for {self.media_timeout_s:g} s")
                return None
            if msg is None:
                return None
            if isinstance(msg, Media):
                self._last_media = time.monotonic()
                if not msg.payload:
                    continue
                pcm = mulaw.decode(msg.payload)
                return AudioFrame(pcm, TWILIO_RATE, time.monotonic() - len(pcm) / TWILIO_RATE)
            if isinstance(msg, Mark):
                if msg.name in self._marks:
                    self.samples_played = max(self.samples_played, self._marks.pop(msg.name))
            elif isinstance(msg, Stop):
                await self.close()
                return None
            elif msg.event not in ("connected", "start", "dtmf"):
                log.debug("twilio: ignoring event %r", msg.event)
        return None

    # -- outbound ---------------------------------------------------------------------------------
    async def _send_json(self, obj: dict[str, Any]) -> None:
        if self.closed or self.ws.closed:
            return
        async with self._send_lock:
            try:
                await self.ws.send_str(json.dumps(obj, separators=(",", ":")))
            except (ConnectionError, RuntimeError):
                self.closed = True

    async def wait_writable(self) -> None:
        wait = self._play_head - time.monotonic() - 0.020
        if wait > 0:
            await asyncio.sleep(wait)

    async def send(self, frame: AudioFrame) -> None:
        if frame.sample_rate != TWILIO_RATE:
            raise ValueError(f"Twilio transport plays {TWILIO_RATE} Hz, got {frame.sample_rate}")
        if self.closed or self.stream is None:
            return
        now = time.monotonic()
        self._play_head = max(self._play_head, now)
        ahead = self._play_head - now - frame.duration  # keep at most one frame queued
        if ahead > 0:
            await asyncio.sleep(ahead)
        self._play_head += frame.duration
        pcm = frame.mono().pcm
        payload = base64.b64encode(mulaw.encode(pcm)).decode("ascii")
        sid = self.stream.stream_sid
        await self._send_json({"event": "media", "streamSid": sid, "media": {"payload": payload}})
        self._frames_sent += 1
        self._samples_sent += len(pcm)
        if self._frames_sent % self.mark_every_frames == 0:
            await self.mark(f"a{self._frames_sent}")

    async def mark(self, name: str) -> None:
        """Ask Twilio to tell us when the audio sent so far has been played."""
        if self.stream is None:
            return
        self._marks[name] = self._samples_sent
        await self._send_json({"event": "mark", "streamSid": self.stream.stream_sid, "mark": {"name": name}})

    async def clear(self) -> None:
        self._play_head = time.monotonic()
        if self.stream is not None:
            await self._send_json({"event": "clear", "streamSid": self.stream.stream_sid})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed and self.ws.closed:
            return
        self.closed = True
        if not self.ws.closed:
            await self.ws.close(code=code, message=reason.encode()[:120])

