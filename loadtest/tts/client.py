"""One simulated speech stream over tts-serve's WebSocket (`agent_runtime.tts_service.protocol`), or
one reply over sglang-omni's streaming speech session (`session_reply`, served by sglang-omni and by
tts-serve alike).

A reply: `start`, wait for `started`, then after `first_token_ms` the text in deltas of `delta_chars`
at `chars_per_s` (like an LLM writing), `flush`, and read audio until `done` or `error`. Measured:

* first audio: the first `text` message sent -> the first `audio` message with samples received;
* RTF: (the first `text` sent -> `done` received) / seconds of audio received. It includes the time
  the text takes to arrive, so a stream whose audio came out at the LLM's pace still shows RTF < 1
  when its speech is longer than its text's arrival; > 1 means the listener waited on synthesis;
* underruns: a simulated player starts at the first audio chunk and plays in real time; each time a
  chunk arrives after the buffer ran dry (before `done`) is one underrun, the dry time adds to
  `underrun_ms`;
* errors by code: the server's `error` codes (busy, engine_error, ...), `connection_lost` (the socket
  closed mid-reply), `connect_failed`, `timeout` (no `done` within the scenario's stream_timeout_s),
  `protocol` (a message that is not the wire contract).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from pydantic import TypeAdapter, ValidationError

from agent_runtime.tts_service.protocol import (
    SESSION_PATH,
    STREAM_PATH,
    AudioMessage,
    DoneMessage,
    ErrorMessage,
    FlushMessage,
    ServerMessage,
    StartedMessage,
    StartMessage,
    TextMessage,
    decode_pcm,
)

_SERVER = TypeAdapter(ServerMessage)
T = TypeVar("T")


class StreamError(Exception):
    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


def ws_url(base: str, path: str = STREAM_PATH) -> str:
    return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + path


def deltas(text: str, n: int) -> list[str]:
    return [text[i:i + n] for i in range(0, len(text), n)]


class Player:
    """A listener that starts at the first chunk and plays in real time; counts dry spells."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.buffer_end = 0.0
        self.underruns = 0
        self.underrun_s = 0.0

    def arrive(self, t: float, duration_s: float) -> None:
        if duration_s <= 0:
            return
        if self.start is None:
            self.start, self.buffer_end = t, t + duration_s
            return
        if t > self.buffer_end:
            self.underruns += 1
            self.underrun_s += t - self.buffer_end
            self.buffer_end = t
        self.buffer_end += duration_s


async def _recv(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> Any:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise StreamError("connection_lost", f"socket {msg.type.name.lower()} (close code {ws.close_code})")
    try:
        return _SERVER.validate_python(json.loads(msg.data))
    except (ValidationError, ValueError) as exc:
        raise StreamError("protocol", str(exc).splitlines()[0]) from None


class _Reply:
    """One reply in flight on either protocol: its text sent at the LLM's pace (each of `messages`
    `step` s after the previous, then `end`), its audio tallied, its figures."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, messages: list[str], end: str, *, step: float,
                 timeout_s: float, done: str) -> None:
        self.ws = ws
        self.t_first = time.monotonic()
        self.t_flush: float | None = None
        self.deadline = self.t_first + timeout_s
        self.no_done = f"no {done} within {timeout_s:g} s"
        self.player = Player()
        self.first_audio: float | None = None
        self.audio_s = 0.0
        self.chunks = 0
        self.sender = asyncio.create_task(self._send(messages, end, step))

    async def _send(self, messages: list[str], end: str, step: float) -> None:
        for i, message in enumerate(messages):
            await asyncio.sleep(max(0.0, self.t_first + i * step - time.monotonic()))
            await self.ws.send_str(message)
        await self.ws.send_str(end)
        self.t_flush = time.monotonic()

    async def next(self, recv: Callable[[aiohttp.ClientWebSocketResponse, float], Awaitable[T]]) -> T:
        """The next message (`recv(ws, seconds left)`), or StreamError past the deadline or when
        sending the text failed."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StreamError("timeout", self.no_done)
        try:
            m = await recv(self.ws, left)
        except TimeoutError:
            raise StreamError("timeout", self.no_done) from None
        if self.sender.done() and self.sender.exception() is not None:
            raise StreamError("connection_lost", f"sending text failed: {self.sender.exception()}")
        return m

    def audio(self, seconds: float) -> None:
        if seconds > 0:
            now = time.monotonic()
            self.first_audio = now if self.first_audio is None else self.first_audio
            self.player.arrive(now, seconds)
            self.audio_s += seconds
            self.chunks += 1

    async def stop_sending(self) -> None:
        if not self.sender.done():
            self.sender.cancel()
        with contextlib.suppress(BaseException):
            await self.sender

    def figures(self, segments: int, what: str) -> dict[str, Any]:
        """The reply's figures (times in ms), now that `what` (its last message) arrived."""
        t_done = time.monotonic()
        if self.first_audio is None or self.audio_s <= 0:
            raise StreamError("no_audio", f"{what} without any audio")
        return {
            "first_audio_ms": round((self.first_audio - self.t_first) * 1000, 1),
            "rtf": round((t_done - self.t_first) / self.audio_s, 4),
            "text_ms": round(((self.t_flush or t_done) - self.t_first) * 1000, 1),
            "done_ms": round((t_done - self.t_first) * 1000, 1),
            "audio_s": round(self.audio_s, 3),
            "chunks": self.chunks,
            "segments": segments,
            "underruns": self.player.underruns,
            "underrun_ms": round(self.player.underrun_s * 1000, 1),
        }


async def one_reply(ws: aiohttp.ClientWebSocketResponse, text: str, *, chars_per_s: float, delta_chars: int,
                    first_token_ms: int, timeout_s: float, voice: str | None = None) -> dict[str, Any]:
    """Speak one reply on an open socket; the figures (times in ms) or raise StreamError."""
    start = StartMessage(type="start", voice=voice).model_dump(exclude_none=True)
    await ws.send_str(json.dumps(start))
    m = await _recv(ws, timeout_s)
    if isinstance(m, ErrorMessage):
        raise StreamError(m.code, m.message)
    if not isinstance(m, StartedMessage):
        raise StreamError("protocol", f"expected started, got {m.type}")
    await asyncio.sleep(first_token_ms / 1000)
    texts = [TextMessage(type="text", text=part).model_dump_json() for part in deltas(text, delta_chars)]
    reply = _Reply(ws, texts, FlushMessage(type="flush").model_dump_json(), step=delta_chars / chars_per_s,
                   timeout_s=timeout_s, done="done")
    try:
        while True:
            m = await reply.next(_recv)
            if isinstance(m, AudioMessage):
                try:
                    pcm = decode_pcm(m.audio)
                except ValueError as exc:
                    raise StreamError("protocol", f"bad audio: {exc}") from None
                reply.audio(len(pcm) / m.sample_rate)
            elif isinstance(m, DoneMessage):
                return reply.figures(m.segments, "done")
            elif isinstance(m, ErrorMessage):
                raise StreamError(m.code, m.message)
            else:
                raise StreamError("protocol", f"unexpected {m.type} mid-stream")
    finally:
        await reply.stop_sending()


# sglang-omni's error event `code` (an HTTP status) as the harness's error codes
_SESSION_CODES = {400: "bad_request", 401: "unauthorized", 413: "too_long", 429: "busy", 500: "engine_error",
                  503: "busy"}


async def session_reply(http: aiohttp.ClientSession, base_url: str, text: str, *, chars_per_s: float,
                        delta_chars: int, first_token_ms: int, timeout_s: float, voice: str | None = None,
                        split_granularity: str = "sentence", headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One reply as one sglang-omni streaming session (`session.config` with `stream_audio`, the text
    in `input.text` deltas, `input.done`; binary PCM per sentence between `audio.start` and
    `audio.done`, then `session.done`): the same figures as `one_reply`, or StreamError."""
    try:
        ws = await http.ws_connect(ws_url(base_url, SESSION_PATH), headers=headers or {}, heartbeat=None,
                                   timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
    except (aiohttp.ClientError, OSError) as exc:
        raise StreamError("connect_failed", str(exc)) from None
    try:
        return await _session(ws, text, chars_per_s=chars_per_s, delta_chars=delta_chars,
                              first_token_ms=first_token_ms, timeout_s=timeout_s, voice=voice,
                              split_granularity=split_granularity)
    finally:
        await ws.close()


async def _session_event(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> dict[str, Any] | bytes:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    if msg.type == aiohttp.WSMsgType.BINARY:
        return msg.data
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise StreamError("connection_lost", f"socket {msg.type.name.lower()} (close code {ws.close_code})")
    try:
        event = json.loads(msg.data)
    except ValueError as exc:
        raise StreamError("protocol", f"not JSON: {exc}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise StreamError("protocol", "an event without a type")
    if event["type"] == "error":
        code = event.get("code")
        raise StreamError(_SESSION_CODES.get(code, f"error_{code}") if isinstance(code, int) else "error",
                          str(event.get("message", "")))
    return event


async def _session(ws: aiohttp.ClientWebSocketResponse, text: str, *, chars_per_s: float, delta_chars: int,
                   first_token_ms: int, timeout_s: float, voice: str | None,
                   split_granularity: str) -> dict[str, Any]:
    config: dict[str, Any] = {"stream_audio": True, "response_format": "pcm", "split_granularity": split_granularity}
    if voice is not None:
        config["voice"] = voice
    await ws.send_str(json.dumps({"type": "session.config", "session": config}))
    configured = await _session_event(ws, timeout_s)
    if not isinstance(configured, dict) or configured["type"] != "session.configured":
        raise StreamError("protocol", "expected session.configured")
    await asyncio.sleep(first_token_ms / 1000)
    texts = [json.dumps({"type": "input.text", "text": part}) for part in deltas(text, delta_chars)]
    reply = _Reply(ws, texts, json.dumps({"type": "input.done"}), step=delta_chars / chars_per_s,
                   timeout_s=timeout_s, done="session.done")
    rate: int | None = None
    try:
        while True:
            event = await reply.next(_session_event)
            if isinstance(event, bytes):
                if rate is None:
                    raise StreamError("protocol", "audio before audio.start")
                if len(event) % 2:
                    raise StreamError("protocol", "PCM frame with an odd number of bytes")
                reply.audio(len(event) / 2 / rate)
            elif event["type"] == "audio.start":
                rate = int(event.get("sample_rate") or 0) or None
                if rate is None:
                    raise StreamError("protocol", "audio.start without a sample_rate")
            elif event["type"] == "audio.done":
                if event.get("error"):
                    raise StreamError("engine_error", f"sentence {event.get('sentence_index')} failed")
            elif event["type"] == "session.done":
                return reply.figures(int(event.get("total_sentences", 0)), "session.done")
            else:
                raise StreamError("protocol", f"unexpected {event['type']} mid-session")
    finally:
        await reply.stop_sending()
