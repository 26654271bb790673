"""One reply spoken by a speech server over the agent-runtime WebSocket protocol.

`RemoteStream` is a `SynthesisStream` whose chunker and engine run on the server
(`agent_runtime.tts_service.protocol`): `push_text` deltas go out as they come (queued while the
connection is being made), `flush` after them, and audio messages come back as `TTSChunk`s tagged
with the server's segment ids and texts.

Failures before any audio (unreachable, refused busy or draining, connection dropped, nothing heard
for `first_audio_timeout_s`) are retried transparently on another server: `start` and every text
delta so far are sent again there, up to `retries` other servers. After audio has come the stream
sticks to its server: a drop, or a silence longer than `read_timeout_s` while audio is owed from a
server that no longer answers (`/readyz` probe), marks the server unhealthy and raises from the
iterator (the reply ends with the audio already played). A server that answers but is too busy to
serve this stream yet is waited for up to `stall_timeout_s` of silence; then only this stream fails
(before audio: retried elsewhere) and the server stays in use.

"Audio is owed" when the client's copy of the engine's chunker released a segment whose final audio
has not come yet, or after `flush` until `done`; while the LLM is still thinking nothing is owed and
the server's silence is not held against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp

from agent_runtime.errors import BackendError
from agent_runtime.tts.base import SynthesisStream, TTSChunk
from agent_runtime.tts.chunker import ChunkerConfig, TextChunker
from agent_runtime.tts.remote.pool import ConnectFailed, Server, ServerPool
from agent_runtime.tts_service.protocol import CLOSE_GOING_AWAY, CLOSE_TRY_AGAIN, decode_pcm

if TYPE_CHECKING:
    from agent_runtime.tts.remote.synthesizer import RemoteSynthesizer

log = logging.getLogger("agent_runtime.tts.remote")

_END = object()
_POLL_S = 0.5  # how often a reader waiting on nothing owed re-checks (a push may make audio owed)
CANCEL_GRACE_S = 1.0
"""After `cancel`, how long the server's `done` may take for the connection to be reused."""
_RETRY_CODES = {"busy": False, "shutting_down": True, "engine_error": False}
"""Server error codes retried on another server before audio (value: mark the server down)."""


class StreamState(enum.Enum):
    CONNECTING = "connecting"  # picking a server / connecting / waiting for `started`
    STREAMING = "streaming"  # started; text may still come
    FLUSHED = "flushed"  # flush sent; audio still coming
    CANCELLED = "cancelled"
    FAILED = "failed"
    DONE = "done"  # the server's `done` after the flush: every segment spoken


_ENDED = (StreamState.CANCELLED, StreamState.FAILED, StreamState.DONE)


class _Retry(Exception):
    """This server failed before any audio: try another one."""

    def __init__(self, reason: str, mark_down: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.mark_down = mark_down


class _Stale(Exception):
    """A reused idle connection turned out dead before its first message: open a fresh one."""


def chunking_json(config: ChunkerConfig | None) -> dict[str, Any] | None:
    return None if config is None else dataclasses.asdict(config)


class RemoteStream(SynthesisStream):
    def __init__(
        self,
        synth: RemoteSynthesizer,
        start: dict[str, Any],
        shadow: TextChunker,
    ) -> None:
        self._synth = synth
        self._pool: ServerPool = synth.pool
        self._start = {"type": "start", **start}
        self._shadow = shadow
        self._messages: list[dict[str, Any]] = []  # text deltas and the flush, in order
        self._wake = asyncio.Event()
        self._chunks: asyncio.Queue[TTSChunk | BaseException | object] = asyncio.Queue()
        self.state = StreamState.CONNECTING
        self._flushed = False
        self._cancel_requested = False
        self._cancel_sent = False
        self._cancel_written = asyncio.Event()
        self._writing = False  # a connection is up and `start` went out: cancel goes on the wire
        self._released = 0  # segments the shadow chunker released
        self._finished = 0  # segments whose final audio came
        self._owed_since = 0.0
        self._last_message = time.monotonic()
        self._audio_here = False  # audio came on the current attempt
        self._alive_at = 0.0
        self.got_audio = False  # audio was handed to the consumer
        self.server: Server | None = None
        self.servers_tried: list[str] = []
        self.segments = 0
        self._task = asyncio.create_task(self._run(), name="remote-tts-stream")

    @property
    def server_url(self) -> str | None:
        return None if self.server is None else self.server.url

    # -- input side ---------------------------------------------------------------------------
    def push_text(self, text: str) -> int:
        if self._flushed or self.state in _ENDED or not text:
            return 0
        was_owed = self._owed()
        released = len(self._shadow.push(text))
        self._released += released
        self._messages.append({"type": "text", "text": text})
        self._wake.set()
        self._note_owed(was_owed)
        return released

    def flush(self) -> int:
        if self._flushed or self.state in _ENDED:
            return 0
        was_owed = self._owed()
        released = len(self._shadow.flush())
        self._released += released
        self._flushed = True
        self._messages.append({"type": "flush"})
        if self.state is StreamState.STREAMING:
            self.state = StreamState.FLUSHED
        self._wake.set()
        self._note_owed(was_owed)
        return released

    def _owed(self) -> bool:
        return self._flushed or self._released > self._finished

    def _note_owed(self, was_owed: bool) -> None:
        if not was_owed and self._owed():
            self._owed_since = time.monotonic()

    async def cancel(self) -> None:
        """Barge-in: `cancel` goes out at once, iteration ends; the server's `done` is awaited in
        the background (the connection is reused only if it comes within `CANCEL_GRACE_S`)."""
        if self.state in _ENDED:
            self._chunks.put_nowait(_END)
            return
        self.state = StreamState.CANCELLED
        self._cancel_requested = True
        self._chunks.put_nowait(_END)
        if self._writing:
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CANCEL_GRACE_S):
                    await self._cancel_written.wait()
        elif not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # -- output side --------------------------------------------------------------------------
    async def __aiter__(self) -> AsyncIterator[TTSChunk]:  # type: ignore[override]
        while True:
            item = await self._chunks.get()
            if item is _END or self._cancel_requested:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, TTSChunk)
            yield item

    # -- the connection ---------------------------------------------------------------------
    async def _run(self) -> None:
        retries = self._synth.retries
        tried: set[str] = set()
        failures: list[str] = []
        try:
            while True:
                server = self._pool.pick(tried)
                if server is None:
                    raise BackendError(_no_server_message(self._pool, failures))
                tried.add(server.url)
                self.server = server
                self.servers_tried.append(server.url)
                server.open_streams += 1
                try:
                    await self._attempt(server)
                    return
                except _Retry as exc:
                    failures.append(f"{server.url}: {exc.reason}")
                    if exc.mark_down:
                        self._pool.mark_down(server, exc.reason)
                    if self._cancel_requested:
                        return
                    if len(tried) > retries:
                        raise BackendError(_no_server_message(self._pool, failures)) from None
                    log.info(
                        "remote TTS: %s failed before audio (%s); trying another server",
                        server.url,
                        exc.reason,
                    )
                finally:
                    server.open_streams -= 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._cancel_requested:
                self.state = StreamState.FAILED
                self._chunks.put_nowait(exc)
        finally:
            self._chunks.put_nowait(_END)

    async def _attempt(self, server: Server) -> None:
        """Speak the whole stream on `server`; raises _Retry if it failed before any audio."""
        fresh = False
        while True:
            if self.state not in _ENDED:
                self.state = StreamState.CONNECTING
            try:
                ws, reused = await self._pool.acquire(server, fresh=fresh)
            except ConnectFailed as exc:
                raise _Retry(str(exc), mark_down=exc.mark_down) from None
            try:
                await self._speak(server, ws, reused)
                return
            except _Stale:
                fresh = True  # a reused connection the server had closed: not the server's fault

    async def _speak(self, server: Server, ws: aiohttp.ClientWebSocketResponse, reused: bool) -> None:
        self._audio_here = False
        self._alive_at = 0.0  # when a liveness check last found the server alive (this attempt)
        self._last_message = time.monotonic()
        self._owed_since = self._last_message
        keep = False
        writer: asyncio.Task[None] | None = None
        try:
            try:
                await ws.send_str(json.dumps(self._start))
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                if reused:
                    raise _Stale() from None
                raise _Retry(f"sending start: {exc}", mark_down=True) from None
            self._writing = True
            writer = asyncio.create_task(self._write(ws), name="remote-tts-writer")
            keep = await self._read(server, ws, reused)
        finally:
            self._writing = False
            if writer is not None and not writer.done():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
            if self._cancel_requested:
                self._cancel_written.set()
            if keep:
                self._pool.release(server, ws)
            else:
                with contextlib.suppress(Exception):
                    await ws.close()

    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send the text so far, then each new delta and the flush as they come; `cancel` at once."""
        sent = 0
        try:
            while True:
                if self._cancel_requested:
                    self._cancel_sent = True
                    await ws.send_str('{"type": "cancel"}')
                    self._cancel_written.set()
                    return
                while sent < len(self._messages) and not self._cancel_requested:
                    await ws.send_str(json.dumps(self._messages[sent]))
                    sent += 1
                if self._cancel_requested:
                    continue
                await self._wake.wait()
                self._wake.clear()
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            self._cancel_written.set()  # the reader sees the connection go

    async def _read(self, server: Server, ws: aiohttp.ClientWebSocketResponse, reused: bool) -> bool:
        """Read until `done` or a failure; True when the connection may be reused."""
        started = False
        rate = self._synth.sample_rate
        while True:
            msg = await self._receive(server, ws, first=not started and reused)
            if msg is None:  # the cancel grace ended without `done`
                return False
            try:
                data = json.loads(msg.data)
                kind = data["type"]
            except (ValueError, KeyError, TypeError):
                raise self._fail(
                    server, f"malformed message: {str(msg.data)[:80]!r}", mark_down=True
                ) from None
            if kind == "started":
                if started:
                    raise self._fail(server, "a second 'started'", mark_down=True)
                started = True
                if self.state is StreamState.CONNECTING:
                    self.state = StreamState.FLUSHED if self._flushed else StreamState.STREAMING
                if int(data.get("sample_rate", 0)) != rate:
                    raise self._fail(
                        server,
                        f"it speaks at {data.get('sample_rate')} Hz, this engine at {rate} Hz",
                        mark_down=True,
                    )
            elif not started:
                if reused and kind != "error":
                    raise _Stale()
                if kind == "error":
                    code = data.get("code")
                    if reused and code == "timeout":
                        raise _Stale()  # the server timed the idle connection out
                    raise self._error(server, data)
                raise self._fail(server, f"{kind!r} before 'started'", mark_down=True)
            elif kind == "audio":
                if self._cancel_requested:
                    continue
                chunk = self._chunk(server, data, rate)
                self._audio_here = True
                self.got_audio = True
                if chunk.segment_final:
                    self._finished += 1
                    self.segments = max(self.segments, chunk.segment_id + 1)
                self._chunks.put_nowait(chunk)
            elif kind == "done":
                if not self._cancel_requested:
                    if data.get("reason") != "flushed":
                        raise self._fail(
                            server, f"done ({data.get('reason')}) without a cancel", mark_down=False
                        )
                    self.state = StreamState.DONE  # iteration ends once the connection is back in the pool
                    return True
                # Cancelled: reusable if the server saw our cancel (or we never sent one).
                return data.get("reason") == "cancelled" or not self._cancel_sent
            elif kind == "error":
                if self._cancel_requested:
                    return False
                raise self._error(server, data)
            else:
                raise self._fail(server, f"unknown message type {kind!r}", mark_down=True)

    def _chunk(self, server: Server, data: dict[str, Any], rate: int) -> TTSChunk:
        try:
            pcm = decode_pcm(data["audio"])
            chunk = TTSChunk(
                pcm, int(data["sample_rate"]), int(data["segment_id"]), str(data["text"]),
                bool(data["segment_final"]), time.monotonic(),
            )  # fmt: skip
        except (KeyError, ValueError, TypeError) as exc:
            raise self._fail(server, f"malformed audio message ({exc})", mark_down=True) from None
        if chunk.sample_rate != rate:
            raise self._fail(server, f"audio at {chunk.sample_rate} Hz, expected {rate} Hz", mark_down=True)
        return chunk

    async def _receive(
        self, server: Server, ws: aiohttp.ClientWebSocketResponse, *, first: bool
    ) -> aiohttp.WSMessage | None:
        """The next text message; None when the cancel grace ran out. Raises on a closed
        connection or a dead server (nothing heard for the timeout while audio is owed)."""
        cancel_deadline: float | None = None
        while True:
            now = time.monotonic()
            if self._cancel_requested:
                if cancel_deadline is None:
                    cancel_deadline = now + CANCEL_GRACE_S
                timeout = cancel_deadline - now
                if timeout <= 0:
                    return None
            elif self._owed():
                limit = self._synth.read_timeout_s if self._audio_here else self._synth.first_audio_timeout_s
                quiet_since = max(self._last_message, self._owed_since)
                timeout = max(quiet_since, self._alive_at) + limit - now
                if timeout <= 0:
                    await self._check_alive(server, limit, now - quiet_since)
                    continue
                timeout = min(timeout, _POLL_S)
            else:
                timeout = _POLL_S
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                continue
            except (aiohttp.ClientError, ConnectionError) as exc:
                if first:
                    raise _Stale() from None
                raise self._fail(server, f"connection error: {exc}", mark_down=True) from None
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._last_message = server.last_alive = time.monotonic()
                return msg
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                if self._cancel_requested:
                    return None
                if first:
                    raise _Stale()
                code = ws.close_code
                if code in (CLOSE_GOING_AWAY, CLOSE_TRY_AGAIN) and not self.got_audio:
                    raise _Retry(f"connection closed ({code})", mark_down=code == CLOSE_GOING_AWAY)
                raise self._fail(server, f"connection closed (code {code})", mark_down=True)
            # binary / ping / pong: not part of the protocol; ignore

    async def _check_alive(self, server: Server, limit: float, quiet_s: float) -> None:
        """This stream heard nothing for `limit` s while audio was owed: a dead server, or one too
        busy to get to this stream yet? A server that answers a probe (or spoke on another stream)
        is given until `stall_timeout_s` of silence on this stream, then only this stream fails
        (the server is not marked down); one that does not answer is dead (marked down)."""
        what = "audio" if self._audio_here else "first audio"
        if quiet_s >= self._synth.stall_timeout_s:
            raise self._fail(
                server,
                f"nothing on this stream for {quiet_s:.1f} s while {what} was owed (the server answers but is "
                f"overloaded; stall_timeout_s {self._synth.stall_timeout_s:g})",
                mark_down=False,
            )
        if await self._pool.alive(server):
            if not self._alive_at:
                log.info("remote TTS: %s is slow (no %s for %.1f s) but answers; waiting", server.url, what, quiet_s)
            self._alive_at = time.monotonic()
            return
        raise self._fail(
            server, f"no message for {limit:g} s while {what} was owed, and it does not answer", mark_down=True
        )

    def _error(self, server: Server, data: dict[str, Any]) -> Exception:
        code = str(data.get("code"))
        message = str(data.get("message", ""))
        if code in _RETRY_CODES and not self.got_audio:
            return _Retry(f"{code}: {message}", mark_down=_RETRY_CODES[code])
        return BackendError(f"speech server {server.url}: {code}: {message}")

    def _fail(self, server: Server, reason: str, *, mark_down: bool) -> Exception:
        """A server failure: retryable before any audio, else fatal (and the server is marked down)."""
        if not self.got_audio:
            return _Retry(reason, mark_down)
        if mark_down:
            self._pool.mark_down(server, reason)
        return BackendError(f"speech server {server.url} failed mid-reply: {reason}")


def _no_server_message(pool: ServerPool, failures: list[str]) -> str:
    if failures:
        return "no speech server could take the stream (" + "; ".join(failures) + ")"
    return "no speech server available (" + ", ".join(s.url for s in pool.servers) + ")"
