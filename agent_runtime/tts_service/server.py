"""`agent-runtime tts-serve`'s application: one loaded TTS engine served to many clients.

Routes (see protocol.py for the wire contract): `POST /v1/audio/speech` (sglang-omni's OpenAI-style
request: one WAV / raw PCM, or a stream of server-sent events / raw PCM), `GET /v1/audio/stream`
(the WebSocket for live replies), `GET /v1/info`, `/healthz`, `/readyz`, `/metrics`.

Every speech stream, from either endpoint, holds one of `tts_server.max_streams` slots while it is
synthesised; a request over the cap is answered `busy` (HTTP: 503 with Retry-After) so a client
can try another server. `TTSServer.drain()` (SIGTERM) refuses new streams at once, gives the ones
in progress `tts_server.shutdown_grace_s`, then closes the sockets (1001).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from pydantic import TypeAdapter, ValidationError

from agent_runtime.config import AppConfig
from agent_runtime.errors import ConfigError
from agent_runtime.server.security import (
    JSONTooDeep,
    bearer,
    error_middleware,
    host_middleware,
    json_error,
    parse_json,
    resolve_token,
    token_matches,
    unauthorized,
)
from agent_runtime.tts.base import (
    SpeechOptions,
    SynthesisStream,
    Synthesizer,
    TTSChunk,
    UnsupportedSpeechOption,
)
from agent_runtime.tts.chunker import ChunkerConfig
from agent_runtime.tts_service.metrics import TTSServiceMetrics
from agent_runtime.tts_service.options import (
    SpeechRequestError,
    check_speech_request,
    describe_validation_error,
    openai_error,
    speech_options,
)
from agent_runtime.tts_service.protocol import (
    CLOSE_GOING_AWAY,
    INFO_PATH,
    REFUSAL_HEADER,
    SESSION_PATH,
    SPEECH_PATH,
    SSE_CHUNK_OBJECT,
    SSE_DONE,
    STREAM_PATH,
    AudioMessage,
    CancelMessage,
    ClientMessage,
    DoneMessage,
    ErrorCode,
    ErrorMessage,
    FlushMessage,
    SpeechRequest,
    StartedMessage,
    StartMessage,
    TextMessage,
    encode_pcm,
    pcm_bytes,
    wav_bytes,
)
from agent_runtime.tts_service.sglang_session import SpeechSession

log = logging.getLogger("agent_runtime.tts_service")
_CLIENT_MESSAGE: TypeAdapter[Any] = TypeAdapter(ClientMessage)
RETRY_AFTER_S = 1
WS_CLOSE_TIMEOUT_S = 2.0
SAMPLE_RATE_HEADER = "X-Sample-Rate"
_ids = itertools.count(1)


def engine_busy(exc: BaseException) -> bool:
    """An engine error that means "no capacity now, try again" (an exception with `busy = True`,
    such as the pooled S2-Pro engine's full pool): answered `busy` like the slot cap."""
    return getattr(exc, "busy", False) is True


class Busy(Exception):
    """No stream slot: `code` is busy or shutting_down."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(eq=False)
class StreamRun:
    """One speech stream holding a slot: what it said, for the end-of-stream log line and metrics."""

    stream_id: str
    endpoint: str  # "speech" | "stream"
    sample_rate: int
    stream: SynthesisStream | None = None
    opened: float = field(default_factory=time.monotonic)
    chars: int = 0
    segments: int = 0
    samples: int = 0
    first_text_at: float | None = None
    first_audio_at: float | None = None
    last_audio_at: float | None = None
    outcome: str | None = None

    def text(self, n: int) -> None:
        if self.first_text_at is None:
            self.first_text_at = time.monotonic()
        self.chars += n

    def audio(self, chunk: TTSChunk) -> None:
        now = time.monotonic()
        if len(chunk.audio):
            if self.first_audio_at is None:
                self.first_audio_at = now
            self.samples += len(chunk.audio)
            self.last_audio_at = now
        self.segments = max(self.segments, chunk.segment_id + 1)  # segments spoken (partly, if cancelled)

    @property
    def audio_s(self) -> float:
        return self.samples / self.sample_rate if self.sample_rate else 0.0


class StreamState(Enum):
    """Where one WebSocket connection's stream is."""

    IDLE = "idle"  # no stream: waiting for `start` (idle timeout runs)
    OPEN = "open"  # started: taking text, flush, cancel (idle timeout runs)
    FLUSHED = "flushed"  # flush received: speaking the rest; `done flushed` comes next
    ENDING = "ending"  # being cancelled or failed: the stream's last message is being sent
    CLOSED = "closed"  # the connection is over


class TTSServer:
    """Owns the aiohttp application, the engine and the streams in progress."""

    def __init__(
        self,
        config: AppConfig,
        synthesizer: Synthesizer | None = None,
        *,
        load: Callable[[], Synthesizer] | None = None,
        host: str | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.cfg = config.tts_server
        self.host = host or self.cfg.host
        self.environ = dict(os.environ if environ is None else environ)
        try:
            self.token = resolve_token(self.cfg, self.host, self.environ)
        except ConfigError as exc:
            raise ConfigError(f"tts_server: {exc}".replace("server.auth", "tts_server.auth")
                              .replace("signaling", "the speech service")) from None
        self.synth = synthesizer
        self._load = load
        self.engine_name = config.tts.engine
        self.load_error: str | None = None
        self.draining = False
        self.metrics = TTSServiceMetrics()
        self.runs: set[StreamRun] = set()
        self.connections: set[StreamConnection] = set()
        self.sessions: set[SpeechSession] = set()  # sglang-omni's streaming sessions (SESSION_PATH)
        self._loader: asyncio.Task[None] | None = None
        self.app = self._build_app()

    # -- application ------------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.cfg.max_body_bytes,
            middlewares=[error_middleware(self.cfg.max_body_bytes), host_middleware(self.host, self.cfg.allowed_hosts)],
        )
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get(INFO_PATH, self._info)
        app.router.add_post(SPEECH_PATH, self._speech)
        app.router.add_get(STREAM_PATH, self._stream)
        app.router.add_get(SESSION_PATH, self._session)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        if self.synth is None and self._load is not None:
            self._loader = asyncio.create_task(self.load(), name="load-tts-engine")

    async def _on_shutdown(self, _app: web.Application) -> None:
        await self.drain(0.0 if self.draining else self.cfg.shutdown_grace_s)
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()

    async def load(self) -> Synthesizer:
        """Build and warm the engine in a worker thread (the loop keeps answering /healthz)."""
        if self.synth is not None:
            return self.synth
        assert self._load is not None
        t = time.perf_counter()
        try:
            synth = await asyncio.to_thread(self._load)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            raise
        self.synth = synth
        log.info("tts engine %s ready in %.1f s (%d Hz)", self.engine_name, time.perf_counter() - t, synth.sample_rate)
        return synth

    @property
    def ready(self) -> bool:
        return self.synth is not None and not self.draining

    def authorized(self, request: web.Request) -> bool:
        if self.token is None or token_matches(bearer(request), self.token):
            return True
        self.metrics.rejected.inc("unauthorized")
        return False

    # -- operations -------------------------------------------------------------------------------
    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        state = {"streams": len(self.runs), "max_streams": self.cfg.max_streams, "engine": self.engine_name}
        if self.draining or self.synth is None:
            why = "shutting down" if self.draining else (self.load_error or "the engine is loading")
            return web.json_response({"ready": False, "error": why, **state}, status=503)
        return web.json_response({"ready": True, **state, "sample_rate": self.synth.sample_rate})

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return unauthorized()
        self.metrics.active_streams.set(len(self.runs))
        self.metrics.connections.set(len(self.connections) + len(self.sessions))
        return web.Response(text=self.metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Prometheus-Format": "0.0.4"})

    async def _info(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return unauthorized()
        if self.synth is None:
            return json_error(503, self.load_error or "the engine is loading")
        return web.json_response({
            "engine": self.engine_name, "sample_rate": self.synth.sample_rate, "max_streams": self.cfg.max_streams,
            "streams": len(self.runs), "max_segment_chars": self.config.tts.max_segment_chars,
            "max_input_chars": self.cfg.max_input_chars, "max_stream_chars": self.cfg.max_stream_chars,
            "response_formats": ["wav", "pcm"], "stream_formats": ["sse", "audio"],
            "options": supported_options(self.synth),
        })

    # -- slots ------------------------------------------------------------------------------------
    def acquire(self, endpoint: str) -> StreamRun:
        """A slot for a new stream, or Busy (counted as a rejection)."""
        if self.draining or self.synth is None:
            reason = "shutting down: try another server" if self.draining else "the engine is loading"
            self.metrics.rejected.inc("shutting_down")
            raise Busy("shutting_down", reason)
        if len(self.runs) >= self.cfg.max_streams:
            self.metrics.rejected.inc("busy")
            raise Busy("busy", f"{self.cfg.max_streams} streams are running (tts_server.max_streams): try again")
        run = StreamRun(f"tts-{next(_ids)}-{uuid.uuid4().hex[:8]}", endpoint, self.synth.sample_rate)
        self.runs.add(run)
        self.metrics.active_streams.set(len(self.runs))
        return run

    def release(self, run: StreamRun, outcome: str | None) -> None:
        """Give the slot back; with an outcome, count the stream and log its one line."""
        if run not in self.runs:
            return
        self.runs.discard(run)
        self.metrics.active_streams.set(len(self.runs))
        if outcome is None:  # never spoke (refused before any text)
            return
        run.outcome = outcome
        m = self.metrics
        m.streams.inc(run.endpoint, outcome)
        m.audio_seconds.inc(run.endpoint, by=run.audio_s)
        first_ms: float | None = None
        if run.first_text_at is not None and run.first_audio_at is not None:
            first = max(0.0, run.first_audio_at - run.first_text_at)
            first_ms = first * 1000
            m.first_audio.observe(first, run.endpoint)
        if run.audio_s > 0 and run.first_text_at is not None and run.last_audio_at is not None:
            m.rtf.observe(max(0.0, run.last_audio_at - run.first_text_at) / run.audio_s, run.endpoint)
        log.info(
            "stream %s %s: %d chars, %d segments, %.2f s audio, first audio %s, %s",
            run.stream_id, run.endpoint, run.chars, run.segments, run.audio_s,
            "-" if first_ms is None else f"{first_ms:.0f} ms", outcome,
        )

    def open_stream(self, chunking: ChunkerConfig | None, max_segment_chars: int | None,
                    options: SpeechOptions) -> SynthesisStream:
        assert self.synth is not None
        cap = self.config.tts.max_segment_chars
        cap = cap if max_segment_chars is None else min(cap, max_segment_chars)
        return self.synth.open_stream(chunking, max_segment_chars=cap, options=options)

    # -- POST /v1/audio/speech --------------------------------------------------------------------
    def _speech_error(self, status: int, message: str, param: str | None = None, reason: str | None = "bad_request",
                      **headers: str) -> web.Response:
        if reason is not None:
            self.metrics.rejected.inc(reason)
        return web.json_response(openai_error(message, param=param, status=status), status=status, headers=headers)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        if not self.authorized(request):
            return unauthorized()
        if self.draining:
            return self._speech_error(503, "shutting down: try another server", reason="shutting_down",
                                      **{"Retry-After": str(RETRY_AFTER_S)})
        if self.synth is None:
            return self._speech_error(503, "the engine is loading", reason=None, **{"Retry-After": str(RETRY_AFTER_S)})
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._speech_error(
                413, f"request body must be at most {self.cfg.max_body_bytes} bytes (tts_server.max_body_bytes)"
            )
        try:
            body = parse_json(raw, self.cfg.max_json_depth)
        except JSONTooDeep as exc:
            return self._speech_error(400, f"speech request body is {exc} (tts_server.max_json_depth)")
        except (ValueError, UnicodeDecodeError):
            return self._speech_error(400, "speech request body must be valid JSON")
        if not isinstance(body, dict):
            return self._speech_error(400, "speech request body must be a JSON object")
        try:
            req = SpeechRequest.model_validate(body)
            check_speech_request(req, self.cfg.max_input_chars)
            options = speech_options(req, self.cfg.reference_dir)
        except ValidationError as exc:
            message, param = describe_validation_error(exc)
            return self._speech_error(400, message, param)
        except SpeechRequestError as exc:
            reason = "too_long" if exc.param == "input" and "at most" in exc.message else "bad_request"
            return self._speech_error(exc.status, exc.message, exc.param, reason=reason)
        try:
            run = self.acquire("speech")
        except Busy as exc:
            return self._speech_error(503, exc.message, reason=None, **{"Retry-After": str(RETRY_AFTER_S)})
        try:
            stream = self.open_stream(None, None, options)
        except UnsupportedSpeechOption as exc:
            self.release(run, None)
            self.metrics.rejected.inc("unsupported")
            return self._speech_error(400, f"{exc.field}: {exc.reason}", exc.field, reason=None)
        except BaseException:
            self.release(run, None)
            raise
        run.stream = stream
        run.text(len(req.input))
        outcome = "error"
        try:
            stream.push_text(req.input)
            stream.flush()
            fmt = req.response_format.strip().lower()
            if not req.stream:
                response = await self._speech_whole(request, run, stream, fmt)
            elif req.stream_format == "audio":
                response = await self._speech_pcm_stream(request, run, stream)
            else:
                response = await self._speech_sse(request, run, stream, fmt)
            outcome = "flushed" if run.outcome is None else run.outcome
            return response
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except ConnectionError:  # the client left while the last events were written
            outcome = "cancelled"
            return web.Response(status=499)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(stream.cancel())
            self.release(run, outcome)

    async def _chunks(self, request: web.Request, run: StreamRun, stream: SynthesisStream):
        """The stream's chunks; stops (ConnectionResetError) as soon as the client is gone."""
        transport = request.transport
        async for chunk in stream:
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client disconnected")
            run.audio(chunk)
            yield chunk

    async def _speech_whole(self, request: web.Request, run: StreamRun, stream: SynthesisStream,
                            response_format: str) -> web.StreamResponse:
        rate = run.sample_rate
        parts: list[np.ndarray] = []
        try:
            async with _disconnect_watch(request, stream):
                async for chunk in self._chunks(request, run, stream):
                    parts.append(chunk.audio)
        except Exception as exc:
            if isinstance(exc, ConnectionError):  # the client is gone: nobody reads this answer
                run.outcome = "cancelled"
                return web.Response(status=499)
            if engine_busy(exc):  # e.g. the pooled S2-Pro engine's slots are all taken
                run.outcome = "error"
                return self._speech_error(503, str(exc), reason="busy", **{"Retry-After": str(RETRY_AFTER_S)})
            log.exception("stream %s: the engine failed", run.stream_id)
            run.outcome = "error"
            return self._speech_error(500, f"speech synthesis failed: {type(exc).__name__}: {exc}", reason=None)
        if run.outcome == "cancelled":  # drained: the audio is incomplete
            return self._speech_error(503, "shutting down: try another server", reason=None,
                                      **{"Retry-After": str(RETRY_AFTER_S)})
        pcm = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
        headers = {SAMPLE_RATE_HEADER: str(rate), "X-Channels": "1", "X-Bit-Depth": "16", "X-Finish-Reason": "stop"}
        if response_format == "pcm":
            headers["Content-Disposition"] = 'attachment; filename="speech.pcm"'
            return web.Response(body=pcm_bytes(pcm), content_type="audio/pcm", headers=headers)
        headers["Content-Disposition"] = 'attachment; filename="speech.wav"'
        return web.Response(body=wav_bytes(pcm, rate), content_type="audio/wav", headers=headers)

    async def _speech_pcm_stream(self, request: web.Request, run: StreamRun,
                                 stream: SynthesisStream) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "audio/pcm", SAMPLE_RATE_HEADER: str(run.sample_rate), "X-Channels": "1",
            "X-Bit-Depth": "16", "Cache-Control": "no-cache",
        })
        await response.prepare(request)
        try:
            async with _disconnect_watch(request, stream):
                async for chunk in self._chunks(request, run, stream):
                    if len(chunk.audio):
                        await response.write(pcm_bytes(chunk.audio))
        except ConnectionError:  # the client is gone
            run.outcome = "cancelled"
            return response
        except Exception:
            log.exception("stream %s: the engine failed", run.stream_id)
            run.outcome = "error"
        if run.outcome is not None:  # engine error or drained: a raw byte stream cannot say why, so
            _drop(request)  # it ends without its closing chunk and the client sees it truncated
            return response
        await response.write_eof()
        return response

    async def _speech_sse(self, request: web.Request, run: StreamRun, stream: SynthesisStream,
                          response_format: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
        })
        await response.prepare(request)
        sse_id = f"speech-{uuid.uuid4()}"
        index = 0

        async def event(payload: dict[str, Any] | str) -> None:
            text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
            await response.write(f"data: {text}\n\n".encode())

        try:
            async with _disconnect_watch(request, stream):
                async for chunk in self._chunks(request, run, stream):
                    if not len(chunk.audio):
                        continue
                    if response_format == "pcm":
                        data, mime = pcm_bytes(chunk.audio), "audio/pcm"
                    else:
                        data, mime = wav_bytes(chunk.audio, chunk.sample_rate), "audio/wav"
                    await event({
                        "id": sse_id, "object": SSE_CHUNK_OBJECT, "index": index,
                        "audio": {
                            "data": base64.b64encode(data).decode("ascii"), "format": response_format,
                            "mime_type": mime, "sample_rate": chunk.sample_rate,
                        },
                        "finish_reason": None,
                    })
                    index += 1
        except ConnectionError:  # the client is gone
            run.outcome = "cancelled"
            return response
        except Exception as exc:
            log.exception("stream %s: the engine failed", run.stream_id)
            run.outcome = "error"
            await event({
                "id": sse_id, "object": SSE_CHUNK_OBJECT, "index": index, "audio": None, "finish_reason": "error",
                "error": openai_error(f"speech synthesis failed: {type(exc).__name__}: {exc}", status=500)["error"],
            })
            await event(SSE_DONE)
            await response.write_eof()
            return response
        if run.outcome == "cancelled":  # drained
            await event({
                "id": sse_id, "object": SSE_CHUNK_OBJECT, "index": index, "audio": None, "finish_reason": "abort",
                "error": openai_error("the server is shutting down: audio incomplete", status=503)["error"],
            })
            await event(SSE_DONE)
            await response.write_eof()
            return response
        await event({
            "id": sse_id, "object": SSE_CHUNK_OBJECT, "index": index, "audio": None, "finish_reason": "stop",
            "usage": {"input_chars": run.chars, "audio_seconds": round(run.audio_s, 3), "segments": run.segments},
        })
        await event(SSE_DONE)
        await response.write_eof()
        return response

    # -- GET /v1/audio/stream and /v1/audio/speech/stream (WebSockets) ---------------------------
    def _refuse_upgrade(self, request: web.Request) -> web.Response | None:
        """Why a WebSocket upgrade is refused (auth, drain, loading, the connection cap), or None."""
        if not self.authorized(request):
            return unauthorized()
        if self.draining:
            self.metrics.rejected.inc("shutting_down")
            return json_error(503, "shutting down: try another server", **_refusal("shutting_down"))
        if self.synth is None:
            return json_error(503, self.load_error or "the engine is loading", **_refusal("loading"))
        if len(self.connections) + len(self.sessions) >= self.cfg.max_connections:
            self.metrics.rejected.inc("connections")
            return json_error(
                503, f"{self.cfg.max_connections} connections are open (tts_server.max_connections): try again",
                **_refusal("connections"),
            )
        return None

    async def _session(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_socket(request, SpeechSession, self.sessions)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_socket(request, StreamConnection, self.connections)

    async def _serve_socket(self, request: web.Request, handler: Callable[[TTSServer, web.WebSocketResponse], Any],
                            registry: set[Any]) -> web.StreamResponse:  # fmt: skip
        """Upgrade (unless refused), then run `handler(self, ws).serve()` while it is in `registry`."""
        refused = self._refuse_upgrade(request)
        if refused is not None:
            return refused
        ws = web.WebSocketResponse(max_msg_size=self.cfg.max_body_bytes, autoping=True, timeout=WS_CLOSE_TIMEOUT_S)
        await ws.prepare(request)
        conn = handler(self, ws)
        registry.add(conn)
        try:
            await conn.serve()
        finally:
            registry.discard(conn)
        return ws

    # -- drain ------------------------------------------------------------------------------------
    async def drain(self, grace_s: float) -> None:
        """Refuse new streams, give the running ones `grace_s`, then close every socket (1001)."""
        first = not self.draining
        self.draining = True
        if first:
            log.info("draining: %d stream(s) running, %d connection(s)", len(self.runs), len(self.connections))
        await self._close_connections(idle_only=True)
        deadline = time.monotonic() + grace_s
        while self.runs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self._close_connections(idle_only=False)
        for run in list(self.runs):  # HTTP streams still speaking: cut short
            if run.stream is not None and run.endpoint == "speech":
                run.outcome = "cancelled"
                with contextlib.suppress(Exception):
                    await run.stream.cancel()


    async def _close_connections(self, *, idle_only: bool) -> None:
        conns: list[StreamConnection | SpeechSession] = [
            c for c in self.connections if not idle_only or c.state is StreamState.IDLE
        ]
        conns += [s for s in self.sessions if not idle_only or s.idle]
        await asyncio.gather(*(c.close(CLOSE_GOING_AWAY, "server shutting down") for c in conns))


class StreamConnection:
    """One WebSocket: a reader loop for client messages, and a pump task per stream for its audio."""

    def __init__(self, server: TTSServer, ws: web.WebSocketResponse) -> None:
        self.server = server
        self.ws = ws
        self.state = StreamState.IDLE
        self.stream: SynthesisStream | None = None
        self.run: StreamRun | None = None
        self.pump: asyncio.Task[None] | None = None
        self.last_activity = time.monotonic()
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[Any] | None = None
        self._recv: asyncio.Future[Any] | None = None
        self._close_request: tuple[int, str] | None = None
        self._done = asyncio.Event()

    # -- sending ----------------------------------------------------------------------------------
    async def send(self, message: Any) -> bool:
        if self.ws.closed:
            return False
        try:
            async with self._send_lock:
                await self.ws.send_str(message.model_dump_json())
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def close(self, code: int, message: str) -> None:
        """Close the socket with `code`, waiting (bounded) for the client's close reply.

        From another task while the reader loop waits for a message, the loop is woken to close
        (aiohttp closing under a pending receive drops the connection without the close handshake)."""
        if self.ws.closed:
            return
        recv = self._recv
        if recv is not None and asyncio.current_task() is not self._task:
            self._close_request = (code, message)
            recv.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), WS_CLOSE_TIMEOUT_S + 1.0)
            return
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=message.encode())

    # -- the reader loop --------------------------------------------------------------------------
    async def serve(self) -> None:
        cfg = self.server.cfg
        self._task = asyncio.current_task()
        try:
            while not self.ws.closed:
                if self._close_request is not None:  # asked while a message was being handled
                    with contextlib.suppress(Exception):
                        await self.ws.close(code=self._close_request[0], message=self._close_request[1].encode())
                    break
                if self.state in (StreamState.FLUSHED, StreamState.ENDING):
                    self.last_activity = time.monotonic()  # speaking: not idle
                wait = max(0.05, self.last_activity + cfg.idle_timeout_s - time.monotonic())
                if self.state in (StreamState.FLUSHED, StreamState.ENDING):
                    wait = min(wait, 0.5)  # re-check when the stream has ended
                self._recv = asyncio.ensure_future(self.ws.receive(timeout=wait))
                try:
                    msg = await self._recv
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if self._close_request is None or (task is not None and task.cancelling()):
                        raise
                    code, reason = self._close_request
                    with contextlib.suppress(Exception):
                        await self.ws.close(code=code, message=reason.encode())
                    break
                except TimeoutError:
                    if self.state in (StreamState.FLUSHED, StreamState.ENDING):
                        continue
                    if time.monotonic() - self.last_activity >= cfg.idle_timeout_s:
                        await self._idle_timeout()
                        return
                    continue
                if msg.type == WSMsgType.TEXT:
                    self.last_activity = time.monotonic()
                    await self._handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.last_activity = time.monotonic()
                    await self._fail("bad_request", "binary messages are not part of the protocol: send JSON text")
                else:  # close, closing, closed, error (a message over max_body_bytes: 1009)
                    if msg.type == WSMsgType.ERROR:
                        self.server.metrics.rejected.inc("bad_request")
                    break
        finally:
            self._recv = None
            await self._abandon()
            self.state = StreamState.CLOSED
            self._done.set()

    async def _idle_timeout(self) -> None:
        idle = self.server.cfg.idle_timeout_s
        self.server.metrics.rejected.inc("timeout")
        await self._fail("timeout", f"no message for {idle:g} s (tts_server.idle_timeout_s): closing")
        await self.close(1000, "idle timeout")

    async def _abandon(self) -> None:
        """The connection is gone: cancel a running stream at once."""
        if self.stream is not None and self.state in (StreamState.OPEN, StreamState.FLUSHED):
            self.state = StreamState.ENDING
            await self._stop_stream("cancelled")
        elif self.pump is not None:
            with contextlib.suppress(BaseException):
                await self.pump

    # -- messages ---------------------------------------------------------------------------------
    async def _handle(self, data: str) -> None:
        try:
            obj = parse_json(data, self.server.cfg.max_json_depth)
        except JSONTooDeep as exc:
            await self._fail("bad_request", f"message is {exc} (tts_server.max_json_depth)")
            return
        except (ValueError, UnicodeDecodeError) as exc:
            await self._fail("bad_request", f"message is not valid JSON: {exc}")
            return
        try:
            message = _CLIENT_MESSAGE.validate_python(obj)
        except ValidationError as exc:
            text, _param = describe_validation_error(exc)
            await self._fail("bad_request", f"bad message: {text}")
            return
        if isinstance(message, StartMessage):
            await self._start(message)
        elif isinstance(message, TextMessage):
            await self._text(message.text)
        elif isinstance(message, FlushMessage):
            await self._flush()
        elif isinstance(message, CancelMessage):
            await self._cancel()

    async def _start(self, message: StartMessage) -> None:
        if self.state is not StreamState.IDLE:
            await self._fail("bad_request", "a stream is already running on this connection: cancel it first")
            return
        server = self.server
        try:
            options = speech_options(message, server.cfg.reference_dir)
            chunking = ChunkerConfig(**message.chunking) if message.chunking is not None else None
        except SpeechRequestError as exc:
            await self._fail("bad_request", exc.message)
            return
        except (TypeError, ValueError) as exc:
            await self._fail("bad_request", f"chunking: {exc}")
            return
        try:
            run = server.acquire("stream")
        except Busy as exc:
            await self.send(ErrorMessage(code=exc.code, message=exc.message))
            return
        try:
            stream = server.open_stream(chunking, message.max_segment_chars, options)
        except UnsupportedSpeechOption as exc:
            server.release(run, None)
            server.metrics.rejected.inc("unsupported")
            await self.send(ErrorMessage(code="unsupported", message=f"{exc.field}: {exc.reason}"))
            return
        except (TypeError, ValueError) as exc:
            server.release(run, None)
            await self._fail("bad_request", f"chunking: {exc}")
            return
        except Exception as exc:
            server.release(run, None)
            log.exception("opening a stream failed")
            await self.send(ErrorMessage(code="engine_error", message=f"{type(exc).__name__}: {exc}"))
            return
        run.stream = stream
        self.stream, self.run, self.state = stream, run, StreamState.OPEN
        await self.send(StartedMessage(stream_id=run.stream_id, sample_rate=run.sample_rate, engine=server.engine_name))
        self.pump = asyncio.create_task(self._pump(stream, run), name=f"pump-{run.stream_id}")

    async def _text(self, text: str) -> None:
        if self.state is StreamState.IDLE:
            await self._fail("bad_request", "no stream: send start first")
            return
        if self.state is StreamState.FLUSHED:
            await self._fail("bad_request", "text after flush: start a new stream")
            return
        if self.state is not StreamState.OPEN:
            return  # ending: the stream's last message is on its way
        assert self.stream is not None and self.run is not None
        self.run.text(len(text))
        limit = self.server.cfg.max_stream_chars
        if self.run.chars > limit:
            self.server.metrics.rejected.inc("too_long")
            await self._fail("too_long", f"more than {limit} characters in one stream (tts_server.max_stream_chars)")
            return
        self.stream.push_text(text)

    async def _flush(self) -> None:
        if self.state is StreamState.IDLE:
            await self._fail("bad_request", "no stream: send start first")
        elif self.state is StreamState.OPEN:
            assert self.stream is not None
            self.state = StreamState.FLUSHED
            self.stream.flush()

    async def _cancel(self) -> None:
        if self.state not in (StreamState.OPEN, StreamState.FLUSHED):
            return  # nothing running (it may have just ended): nothing to answer
        received = time.monotonic()
        self.state = StreamState.ENDING
        run = self.run
        await self._stop_stream("cancelled")
        assert run is not None
        await self.send(DoneMessage(reason="cancelled", segments=run.segments))
        self.server.metrics.cancel_latency.observe(time.monotonic() - received)

    async def _fail(self, code: ErrorCode, message: str) -> None:
        """Answer an error; it ends the running stream, if any."""
        if code == "bad_request":
            self.server.metrics.rejected.inc("bad_request")
        if self.state in (StreamState.OPEN, StreamState.FLUSHED):
            self.state = StreamState.ENDING
            await self._stop_stream("error")
        await self.send(ErrorMessage(code=code, message=message))

    async def _stop_stream(self, outcome: str) -> None:
        """Cancel the stream, wait for its pump, give back the slot; state -> IDLE."""
        stream, run, pump = self.stream, self.run, self.pump
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.cancel()
        if pump is not None and pump is not asyncio.current_task():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(pump, 5.0)
        if run is not None:
            self.server.release(run, outcome)
        self.stream = self.run = self.pump = None
        self.last_activity = time.monotonic()
        if self.state is not StreamState.CLOSED:
            self.state = StreamState.IDLE

    async def _pump(self, stream: SynthesisStream, run: StreamRun) -> None:
        try:
            async for chunk in stream:
                if self.state not in (StreamState.OPEN, StreamState.FLUSHED):
                    return
                run.audio(chunk)
                await self.send(AudioMessage(
                    segment_id=chunk.segment_id, text=chunk.text, segment_final=chunk.segment_final,
                    sample_rate=chunk.sample_rate, audio=encode_pcm(chunk.audio),
                ))
        except Exception as exc:
            if self.state in (StreamState.OPEN, StreamState.FLUSHED):
                log.warning("stream %s: the engine failed: %s: %s", run.stream_id, type(exc).__name__, exc)
                self.state = StreamState.ENDING
                await self._stop_stream("error")
                code: ErrorCode = "busy" if engine_busy(exc) else "engine_error"
                await self.send(ErrorMessage(code=code, message=f"{type(exc).__name__}: {exc}"))
            return
        if self.state is StreamState.FLUSHED:
            self.state = StreamState.ENDING
            await self._stop_stream("flushed")
            await self.send(DoneMessage(reason="flushed", segments=run.segments))
            if self.server.draining:
                await self.close(CLOSE_GOING_AWAY, "server shutting down")


@contextlib.asynccontextmanager
async def _disconnect_watch(request: web.Request, stream: SynthesisStream):
    """Cancel `stream` as soon as the HTTP client's connection closes (even while no audio flows)."""

    async def watch() -> None:
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                await stream.cancel()
                return
            await asyncio.sleep(0.05)

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client disconnected")


def _refusal(reason: str) -> dict[str, str]:
    """Headers of a refused WebSocket upgrade: when to retry and why (protocol.REFUSAL_HEADER)."""
    return {"Retry-After": str(RETRY_AFTER_S), REFUSAL_HEADER: reason}


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


def supported_options(synth: Synthesizer) -> list[str] | None:
    """The `SpeechOptions` fields an engine honours, where it says (a `SPEECH_OPTIONS` set on the
    engine, its backend or their modules); None when it does not (it refuses what it cannot do)."""
    import sys

    for owner in (synth, getattr(synth, "backend", None)):
        if owner is None:
            continue
        for holder in (owner, sys.modules.get(type(owner).__module__)):
            names = getattr(holder, "SPEECH_OPTIONS", None)
            if isinstance(names, set | frozenset):
                return sorted(names)
    return None
