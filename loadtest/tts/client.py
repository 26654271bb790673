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
from typing import Any

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
    parts = deltas(text, delta_chars)
    step = delta_chars / chars_per_s
    t_first = time.monotonic()
    t_flush: list[float] = []

    async def send() -> None:
        for i, part in enumerate(parts):
            await asyncio.sleep(max(0.0, t_first + i * step - time.monotonic()))
            await ws.send_str(TextMessage(type="text", text=part).model_dump_json())
        await ws.send_str(FlushMessage(type="flush").model_dump_json())
        t_flush.append(time.monotonic())

    sender = asyncio.create_task(send())
    player = Player()
    first_audio: float | None = None
    audio_s = 0.0
    chunks = 0
    deadline = t_first + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StreamError("timeout", f"no done within {timeout_s:g} s")
            try:
                m = await _recv(ws, left)
            except TimeoutError:
                raise StreamError("timeout", f"no done within {timeout_s:g} s") from None
            now = time.monotonic()
            if sender.done() and sender.exception() is not None:
                raise StreamError("connection_lost", f"sending text failed: {sender.exception()}")
            if isinstance(m, AudioMessage):
                try:
                    pcm = decode_pcm(m.audio)
                except ValueError as exc:
                    raise StreamError("protocol", f"bad audio: {exc}") from None
                if len(pcm):
                    dur = len(pcm) / m.sample_rate
                    if first_audio is None:
                        first_audio = now
                    player.arrive(now, dur)
                    audio_s += dur
                    chunks += 1
            elif isinstance(m, DoneMessage):
                t_done = now
                segments = m.segments
                break
            elif isinstance(m, ErrorMessage):
                raise StreamError(m.code, m.message)
            else:
                raise StreamError("protocol", f"unexpected {m.type} mid-stream")
    finally:
        if not sender.done():
            sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
    if first_audio is None or audio_s <= 0:
        raise StreamError("no_audio", "done without any audio")
    return {
        "first_audio_ms": round((first_audio - t_first) * 1000, 1),
        "rtf": round((t_done - t_first) / audio_s, 4),
        "text_ms": round(((t_flush[0] if t_flush else t_done) - t_first) * 1000, 1),
        "done_ms": round((t_done - t_first) * 1000, 1),
        "audio_s": round(audio_s, 3),
        "chunks": chunks,
        "segments": segments,
        "underruns": player.underruns,
        "underrun_ms": round(player.underrun_s * 1000, 1),
    }


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
    parts = deltas(text, delta_chars)
    step = delta_chars / chars_per_s
    t_first = time.monotonic()
    t_flush: list[float] = []

    async def send() -> None:
        for i, part in enumerate(parts):
            await asyncio.sleep(max(0.0, t_first + i * step - time.monotonic()))
            await ws.send_str(json.dumps({"type": "input.text", "text": part}))
        await ws.send_str(json.dumps({"type": "input.done"}))
        t_flush.append(time.monotonic())

    sender = asyncio.create_task(send())
    player = Player()
    first_audio: float | None = None
    audio_s = 0.0
    chunks = 0
    rate: int | None = None
    deadline = t_first + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StreamError("timeout", f"no session.done within {timeout_s:g} s")
            try:
                event = await _session_event(ws, left)
            except TimeoutError:
                raise StreamError("timeout", f"no session.done within {timeout_s:g} s") from None
            now = time.monotonic()
            if sender.done() and sender.exception() is not None:
                raise StreamError("connection_lost", f"sending text failed: {sender.exception()}")
            if isinstance(event, bytes):
                if rate is None:
                    raise StreamError("protocol", "audio before audio.start")
                if len(event) % 2:
                    raise StreamError("protocol", "PCM frame with an odd number of bytes")
                if event:
                    dur = len(event) / 2 / rate
                    first_audio = now if first_audio is None else first_audio
                    player.arrive(now, dur)
                    audio_s += dur
                    chunks += 1
            elif event["type"] == "audio.start":
                rate = int(event.get("sample_rate") or 0) or None
                if rate is None:
                    raise StreamError("protocol", "audio.start without a sample_rate")
            elif event["type"] == "audio.done":
                if event.get("error"):
                    raise StreamError("engine_error", f"sentence {event.get('sentence_index')} failed")
            elif event["type"] == "session.done":
                t_done, segments = now, int(event.get("total_sentences", 0))
                break
            else:
                raise StreamError("protocol", f"unexpected {event['type']} mid-session")
    finally:
        if not sender.done():
            sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
    if first_audio is None or audio_s <= 0:
        raise StreamError("no_audio", "session.done without any audio")
    return {
        "first_audio_ms": round((first_audio - t_first) * 1000, 1),
        "rtf": round((t_done - t_first) / audio_s, 4),
        "text_ms": round(((t_flush[0] if t_flush else t_done) - t_first) * 1000, 1),
        "done_ms": round((t_done - t_first) * 1000, 1),
        "audio_s": round(audio_s, 3),
        "chunks": chunks,
        "segments": segments,
        "underruns": player.underruns,
        "underrun_ms": round(player.underrun_s * 1000, 1),
    }
