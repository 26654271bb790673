"""sglang-omni's streaming speech WebSocket on `tts-serve`: `GET /v1/audio/speech/stream`.

The wire, as sglang-omni's `serve/speech_ws.py` speaks it (one session per connection):

    client -> server                               server -> client
    {"type": "session.config", "session": {...}}   {"type": "session.configured", "session_id",
      (SessionConfig; or its fields inline)          "response_format", "stream_audio", "split_granularity"}
    {"type": "input.text", "text": <delta>} ...    per sentence: {"type": "audio.start", "id", "sentence_index",
    {"type": "input.done"}                           "sentence_text", "format", "sample_rate"}, binary audio
                                                     frames, {"type": "audio.done", "id", "sentence_index",
                                                     "total_bytes", "error"}
                                                   {"type": "session.done", "session_id", "total_sentences"},
                                                     then the server closes the socket
                                                   {"type": "error", "message", "error_type", "param"?, "code"}

Binary frames are int16 little-endian mono PCM as it is made (`stream_audio: true`, which needs
`response_format: "pcm"`), or one frame per sentence holding the whole sentence as `response_format`
(wav or pcm). There is no cancel message: a client barges in by closing the socket, which cancels
the engine stream at once. A bad first message, a refused option or a full server answers `error`
and closes; an unknown message type or a binary frame mid-session answers `error` and the session
goes on (as sglang-omni does). An engine failure answers `error` (and `audio.done` with `error:
true` for the sentence it broke) and ends the session: the engine stream is gone.

Unlike sglang-omni, which synthesises one sentence at a time while it stops reading, the text goes
into one engine stream as it arrives (S2-Pro keeps its KV continuation across sentences, and a
sentence's audio starts while the next one's text is still coming); the engine's chunker cuts at
sentence ends ("sentence") or at every clause mark too ("clause").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import WSMsgType, web
from pydantic import ValidationError

from agent_runtime.server.security import JSONTooDeep, parse_json
from agent_runtime.tts.base import SpeechOptions, SynthesisStream, UnsupportedSpeechOption
from agent_runtime.tts.chunker import ChunkerConfig
from agent_runtime.tts_service.options import (
    SpeechRequestError,
    check_speech_request,
    describe_validation_error,
    openai_error,
    speech_options,
)
from agent_runtime.tts_service.protocol import SessionConfig, SpeechRequest, pcm_bytes, wav_bytes

if TYPE_CHECKING:
    from agent_runtime.tts_service.server import StreamRun, TTSServer

log = logging.getLogger(__name__)

SPLIT_GRANULARITIES = ("sentence", "clause")
_UNBOUNDED = 1 << 30


def chunking_for(granularity: str) -> ChunkerConfig:
    """The chunker settings of a `split_granularity`: cut at every sentence end, or at every clause
    or sentence mark (never at a short opener alone; the service's `max_segment_chars` still caps)."""
    if granularity == "clause":
        return ChunkerConfig(first_min_words=1, first_min_chars=1, later_min_chars=1, later_max_chars=1,
                             first_opener_break=False)  # fmt: skip
    return ChunkerConfig(first_min_words=_UNBOUNDED, first_min_chars=_UNBOUNDED, later_min_chars=1,
                         later_max_chars=_UNBOUNDED, first_opener_break=False)  # fmt: skip


def session_options(config: SessionConfig, server: TTSServer) -> SpeechOptions:
    """The session's SpeechOptions, refusing (SpeechRequestError) what a speech request with the
    same fields would be refused: the same checks as `POST /v1/audio/speech`, as sglang-omni does."""
    if config.split_granularity not in SPLIT_GRANULARITIES:
        raise SpeechRequestError(
            f"split_granularity must be one of: {', '.join(SPLIT_GRANULARITIES)}", "split_granularity"
        )
    if config.stream_audio and config.response_format.strip().lower() != "pcm":
        raise SpeechRequestError("stream_audio=true requires response_format='pcm'", "response_format")
    fields = config.model_dump(exclude={"stream_audio", "split_granularity"}, exclude_none=True)
    probe = SpeechRequest.model_validate({**fields, "input": "probe"})
    check_speech_request(probe, server.cfg.max_input_chars)
    return speech_options(config, server.cfg.reference_dir)


def error_event(message: str, *, status: int = 400, param: str | None = None) -> dict[str, Any]:
    """sglang-omni's WebSocket error event (its OpenAI-style error, flattened)."""
    error = openai_error(message, param=param, status=status)["error"]
    event: dict[str, Any] = {"type": "error", "message": message, "error_type": error["type"], "code": status}
    if param is not None:
        event["param"] = param
    return event


class SessionState(Enum):
    """Where a session is."""

    CONFIGURING = "configuring"  # waiting for session.config
    OPEN = "open"  # taking input.text
    INPUT_DONE = "input_done"  # input.done received: speaking the rest, then session.done
    CLOSED = "closed"  # the socket is closed (or closing)


@dataclass
class _Sentence:
    """The sentence (engine segment) whose audio is being sent."""

    index: int
    request_id: str
    text: str
    parts: list[np.ndarray] = field(default_factory=list)
    total_bytes: int = 0


class SpeechSession:
    """One `SESSION_PATH` connection: its reader loop (`serve`) and the pump of its engine stream."""

    def __init__(self, server: TTSServer, ws: web.WebSocketResponse) -> None:
        self.server = server
        self.ws = ws
        self.session_id = f"speech_ws_{uuid.uuid4().hex}"
        self.state = SessionState.CONFIGURING
        self.config: SessionConfig | None = None
        self.stream: SynthesisStream | None = None
        self.run: StreamRun | None = None
        self.outcome = "cancelled"  # until the stream is spoken to its end
        self._closing: tuple[int, str] | None = None
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._send_lock = asyncio.Lock()

    @property
    def idle(self) -> bool:
        """Not speaking (a draining server closes idle sessions first)."""
        return self.state is SessionState.CONFIGURING

    # -- sending ----------------------------------------------------------------------------------
    async def _send(self, event: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            async with self._send_lock:
                await self.ws.send_json(event)

    async def _send_bytes(self, data: bytes) -> None:
        if not data or self.ws.closed:
            return
        async with self._send_lock:
            await self.ws.send_bytes(data)

    async def _error(self, message: str, *, status: int = 400, param: str | None = None,
                     reason: str | None = "bad_request") -> None:  # fmt: skip
        if reason is not None:
            self.server.metrics.rejected.inc(reason)
        await self._send(error_event(message, status=status, param=param))

    async def close(self, code: int, message: str) -> None:
        """Ask the reader loop to close the socket with `code` (e.g. the server drains) and wait."""
        if self._done.is_set():
            return
        self._closing = (code, message)
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), 5.0)

    # -- the session ------------------------------------------------------------------------------
    async def serve(self) -> None:
        pump: asyncio.Task[None] | None = None
        close_code, close_message = 1000, "session done"
        try:
            if not await self._configure():
                return
            assert self.stream is not None and self.run is not None
            pump = asyncio.create_task(self._pump(self.stream, self.run), name=f"pump-{self.session_id}")
            close_code, close_message = await self._read(pump)
        finally:
            await self._finish(pump, *(self._closing or (close_code, close_message)))

    async def _receive(self, timeout_s: float, pump: asyncio.Task[None] | None = None) -> Any:
        """The next message; None on a timeout, when asked to close, or when `pump` ends first."""
        recv = asyncio.ensure_future(self.ws.receive())
        wake = asyncio.ensure_future(self._wake.wait())
        waits = {recv, wake} | ({pump} if pump is not None else set())
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
        if recv in done:
            return recv.result()
        recv.cancel()
        with contextlib.suppress(BaseException):
            await recv
        return None

    async def _configure(self) -> bool:
        """session.config -> the engine stream and `session.configured`; False (after an error) if not."""
        cfg = self.server.cfg
        msg = await self._receive(cfg.idle_timeout_s)
        if msg is None:
            if self._closing is None:
                await self._error(f"session.config was not received within {cfg.idle_timeout_s:g} s", reason="timeout")
            return False
        if msg.type != WSMsgType.TEXT:
            if msg.type == WSMsgType.BINARY:
                await self._error("the first WebSocket message must be session.config (JSON text)", param="type")
            return False
        payload = await self._parse(msg.data)
        if payload is None:
            return False
        if payload.get("type") != "session.config":
            await self._error("first WebSocket message must be session.config", param="type")
            return False
        raw = payload.get("session")
        if raw is None:
            raw = {k: v for k, v in payload.items() if k != "type"}
        if not isinstance(raw, dict):
            await self._error("session.config session must be an object", param="session")
            return False
        try:
            config = SessionConfig.model_validate(raw)
            options = session_options(config, self.server)
        except ValidationError as exc:
            text, param = describe_validation_error(exc)
            await self._error(text, param=param)
            return False
        except SpeechRequestError as exc:
            await self._error(exc.message, status=exc.status, param=exc.param)
            return False
        return await self._open(config, options)

    async def _open(self, config: SessionConfig, options: SpeechOptions) -> bool:
        from agent_runtime.tts_service.server import Busy

        server = self.server
        try:
            run = server.acquire("session")
        except Busy as exc:
            await self._error(exc.message, status=503, reason=None)
            return False
        try:
            stream = server.open_stream(chunking_for(config.split_granularity), None, options)
        except UnsupportedSpeechOption as exc:
            server.release(run, None)
            await self._error(f"{exc.field}: {exc.reason}", param=exc.field, reason="unsupported")
            return False
        except Exception as exc:
            server.release(run, None)
            log.exception("opening a speech session failed")
            await self._error(f"{type(exc).__name__}: {exc}", status=500, reason=None)
            return False
        run.stream = stream
        self.config, self.stream, self.run, self.state = config, stream, run, SessionState.OPEN
        await self._send({
            "type": "session.configured", "session_id": self.session_id, "response_format": config.response_format,
            "stream_audio": config.stream_audio, "split_granularity": config.split_granularity,
        })
        return True

    async def _read(self, pump: asyncio.Task[None]) -> tuple[int, str]:
        """Client messages until the session ends: (close code, reason) for the socket."""
        cfg = self.server.cfg
        last = time.monotonic()
        while True:
            if self._closing is not None:
                return self._closing
            if pump.done():
                return 1000, "session done"
            wait = cfg.idle_timeout_s - (time.monotonic() - last) if self.state is SessionState.OPEN else None
            msg = await self._receive(max(0.0, wait) if wait is not None else 3600.0, pump)
            if msg is None:
                if self._closing is None and not pump.done() and self.state is SessionState.OPEN:
                    await self._error(
                        f"speech WebSocket idle timeout: no message for {cfg.idle_timeout_s:g} s "
                        "(tts_server.idle_timeout_s)", reason="timeout",
                    )
                    return 1000, "idle timeout"
                continue
            if msg.type == WSMsgType.BINARY:
                await self._error("speech WebSocket client messages must be text frames")
                continue
            if msg.type != WSMsgType.TEXT:  # the client closed (barge-in), or the socket broke
                if msg.type == WSMsgType.ERROR:  # e.g. a message over max_body_bytes (aiohttp closed it: 1009)
                    self.server.metrics.rejected.inc("bad_request")
                return 1000, "client closed"
            last = time.monotonic()
            payload = await self._parse(msg.data)
            if payload is None:
                continue
            kind = payload.get("type")
            if kind == "input.text" and self.state is SessionState.OPEN:
                if not await self._input_text(payload.get("text")):
                    return 1008, "too much text"
            elif kind == "input.done" and self.state is SessionState.OPEN:
                assert self.stream is not None
                self.state = SessionState.INPUT_DONE
                self.stream.flush()
            elif kind in ("input.text", "input.done"):
                await self._error(f"{kind} after input.done", param="type")
            else:
                await self._error(f"unsupported speech WebSocket message type: {kind!r}", param="type")

    async def _input_text(self, text: Any) -> bool:
        if not isinstance(text, str):
            await self._error("input.text text must be a string", param="text")
            return True
        assert self.stream is not None and self.run is not None
        self.run.text(len(text))
        limit = self.server.cfg.max_stream_chars
        if self.run.chars > limit:
            await self._error(f"more than {limit} characters in one session (tts_server.max_stream_chars)",
                              param="text", reason="too_long")  # fmt: skip
            return False
        if text:
            self.stream.push_text(text)
        return True

    async def _parse(self, data: str) -> dict[str, Any] | None:
        """A message's JSON object, or None after answering an error."""
        try:
            payload = parse_json(data, self.server.cfg.max_json_depth)
        except JSONTooDeep as exc:
            await self._error(f"message is {exc} (tts_server.max_json_depth)")
            return None
        except (ValueError, UnicodeDecodeError) as exc:
            await self._error(f"message is not valid JSON: {exc}")
            return None
        if not isinstance(payload, dict):
            await self._error("speech WebSocket messages must be JSON objects")
            return None
        return payload

    # -- audio --------------------------------------------------------------------------------------
    async def _pump(self, stream: SynthesisStream, run: StreamRun) -> None:
        """The engine stream's chunks as sglang-omni's per-sentence events; session.done at its end."""
        assert self.config is not None
        fmt = self.config.response_format.strip().lower()
        sentence: _Sentence | None = None
        spoken = 0
        try:
            async for chunk in stream:
                run.audio(chunk)
                if sentence is None or chunk.segment_id != sentence.index:
                    sentence = _Sentence(chunk.segment_id, f"{self.session_id}-{chunk.segment_id}", chunk.text)
                    await self._send({
                        "type": "audio.start", "id": sentence.request_id, "sentence_index": sentence.index,
                        "sentence_text": sentence.text, "format": fmt, "sample_rate": chunk.sample_rate,
                    })
                if len(chunk.audio) and self.config.stream_audio:
                    data = pcm_bytes(chunk.audio)
                    await self._send_bytes(data)
                    sentence.total_bytes += len(data)
                elif len(chunk.audio):
                    sentence.parts.append(chunk.audio)
                if chunk.segment_final:
                    if not self.config.stream_audio:
                        data = _whole(sentence.parts, fmt, chunk.sample_rate)
                        await self._send_bytes(data)
                        sentence.total_bytes = len(data)
                    await self._sentence_done(sentence, error=False)
                    spoken, sentence = spoken + 1, None
        except Exception as exc:
            if isinstance(exc, ConnectionError | RuntimeError) and self.ws.closed:
                return  # the client left while audio was being written
            # as sglang-omni: the error, then the failed sentence's audio.done (audio.start only if
            # some of its audio was sent)
            failed = sentence or _Sentence(spoken, f"{self.session_id}-{spoken}", "")
            await self._engine_failed(exc, failed)
            return
        if self.state is SessionState.INPUT_DONE:
            self.outcome = "flushed"
            await self._send({"type": "session.done", "session_id": self.session_id, "total_sentences": spoken})

    async def _sentence_done(self, sentence: _Sentence, *, error: bool) -> None:
        await self._send({
            "type": "audio.done", "id": sentence.request_id, "sentence_index": sentence.index,
            "total_bytes": sentence.total_bytes, "error": error,
        })

    async def _engine_failed(self, exc: BaseException, sentence: _Sentence) -> None:
        if self.state is SessionState.CLOSED:
            return
        log.warning("speech session %s: the engine failed: %s: %s", self.session_id, type(exc).__name__, exc)
        self.outcome = "error"
        await self._error(f"speech synthesis failed: {type(exc).__name__}: {exc}", status=500, reason=None)
        await self._sentence_done(sentence, error=True)

    async def _finish(self, pump: asyncio.Task[None] | None, code: int, message: str) -> None:
        """Stop the engine stream (at once if the session did not end by itself), give back the
        slot, close the socket."""
        self.state = SessionState.CLOSED
        if self.stream is not None and (pump is None or not pump.done()):
            with contextlib.suppress(Exception):
                await self.stream.cancel()
        if pump is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(pump, 5.0)
        if self.run is not None:
            self.server.release(self.run, self.outcome)
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=message.encode())
        self._done.set()


def _whole(parts: list[np.ndarray], fmt: str, sample_rate: int) -> bytes:
    """A sentence's audio as one `fmt` file (wav) or raw PCM."""
    pcm = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
    return wav_bytes(pcm, sample_rate) if fmt == "wav" else pcm_bytes(pcm)
