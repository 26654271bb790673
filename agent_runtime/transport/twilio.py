"""Phone call leg over a Twilio Media Streams WebSocket (bidirectional `<Connect><Stream>`).

Messages are JSON text frames. Twilio sends `connected`, `start` (streamSid, callSid, media format,
custom parameters), `media` (base64 8 kHz mu-law, 20 ms each), `mark` (a mark we sent has been
played), `dtmf` and `stop`. We send `media` (base64 mu-law with the streamSid), `mark` (to learn how
far playback got) and `clear` (barge-in: Twilio drops the audio it has buffered).

Outbound audio is paced in real time with at most one frame ahead of the caller's ear, so Twilio's
own buffer stays small and `clear()` silences the agent at once. Anything that is not a Twilio
message (not JSON, binary, no `event`, bad base64) closes the socket with code 1007 and ends the call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from agent_runtime.audio import mulaw
from agent_runtime.audio.frame import AudioFrame
from agent_runtime.transport.base import Transport

log = logging.getLogger("agent_runtime.transport.twilio")

TWILIO_RATE = 8_000
CLOSE_INVALID = 1007  # "invalid frame payload data"
CLOSE_POLICY = 1008


class TwilioProtocolError(Exception):
    """The peer sent something that is not a Twilio Media Streams message."""


@dataclass
class StreamStart:
    """What the `start` message told us about the call."""

    stream_sid: str
    call_sid: str = ""
    custom_parameters: dict[str, str] = field(default_factory=dict)
    media_format: dict[str, Any] = field(default_factory=dict)


def parse_message(data: str) -> dict[str, Any]:
    """One text frame -> message dict; raises TwilioProtocolError on anything else."""
    try:
        msg = json.loads(data)
    except ValueError:
        raise TwilioProtocolError("not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
        raise TwilioProtocolError("not a Media Streams message (no 'event')")
    return msg


class TwilioTransport(Transport):
    """Agent side of a phone call; `await start()` before handing it to a session."""

    def __init__(self, ws: web.WebSocketResponse, *, mark_every_frames: int = 10) -> None:
        self.ws = ws
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
    async def _next_message(self) -> dict[str, Any] | None:
        """The next Twilio message; None when the socket closed or sent garbage (then closed)."""
        msg = await self.ws.receive()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return None
        try:
            if msg.type is not WSMsgType.TEXT:
                raise TwilioProtocolError("binary frame")
            return parse_message(msg.data)
        except TwilioProtocolError as exc:
            await self._abort(str(exc))
            return None

    async def _abort(self, reason: str) -> None:
        self.close_reason = reason
        log.warning("twilio stream %s: closing: %s", self.stream.stream_sid if self.stream else "-", reason)
        await self.close(CLOSE_INVALID, reason)

    async def start(self, timeout: float = 10.0) -> StreamStart | None:
        """Wait for `start` (skipping `connected`); None if the socket closed or misbehaved first."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    msg = await self._next_message()
                    if msg is None:
                        return None
                    if msg["event"] == "start":
                        break
                    if msg["event"] != "connected":
                        await self._abort(f"expected 'start', got {msg['event']!r}")
                        return None
        except TimeoutError:
            await self._abort("no 'start' message")
            return None
        info = msg.get("start")
        sid = msg.get("streamSid") or (info or {}).get("streamSid")
        if not isinstance(info, dict) or not isinstance(sid, str):
            await self._abort("'start' without streamSid")
            return None
        params = info.get("customParameters") or {}
        self.stream = StreamStart(
            stream_sid=sid,
            call_sid=str(info.get("callSid", "")),
            custom_parameters={str(k): str(v) for k, v in params.items()} if isinstance(params, dict) else {},
            media_format=info.get("mediaFormat") or {},
        )
        enc = self.stream.media_format.get("encoding", "audio/x-mulaw")
        if enc != "audio/x-mulaw" or int(self.stream.media_format.get("sampleRate", TWILIO_RATE)) != TWILIO_RATE:
            await self._abort(f"unsupported media format {self.stream.media_format}")
            return None
        return self.stream

    async def recv(self) -> AudioFrame | None:
        while not self.closed:
            msg = await self._next_message()
            if msg is None:
                return None
            event = msg["event"]
            if event == "media":
                try:
                    payload = base64.b64decode(msg["media"]["payload"], validate=True)
                except (KeyError, TypeError, binascii.Error):
                    await self._abort("media without a valid base64 payload")
                    return None
                if not payload:
                    continue
                pcm = mulaw.decode(payload)
                return AudioFrame(pcm, TWILIO_RATE, time.monotonic() - len(pcm) / TWILIO_RATE)
            if event == "mark":
                name = (msg.get("mark") or {}).get("name")
                if name in self._marks:
                    self.samples_played = max(self.samples_played, self._marks.pop(name))
            elif event == "stop":
                await self.close()
                return None
            elif event not in ("connected", "start", "dtmf"):
                log.debug("twilio: ignoring event %r", event)
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

