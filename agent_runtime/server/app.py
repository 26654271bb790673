"""The call server: WebRTC signaling, the Twilio media WebSocket, the browser page and operations.

Routes: `GET /` (browser client), `POST /offer` (WebRTC offer -> answer), `GET /twilio` (Twilio Media
Streams WebSocket), `GET /healthz`, `GET /readyz`, `GET /metrics`. Each call is a `Session` of the
voice loop on the shared engines; `CallServer.drain()` stops accepting and lets calls finish.

Admission (`admission.py`): a caller is authenticated before it takes a call slot, on every route;
a connection still being set up is *pending* (bounded per client address and by
`server.setup_timeout_s`); a call whose caller sends no audio for `server.media_timeout_s`, from its
start, is hung up. Every call ends, and its slot comes back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection

from agent_runtime.config import AppConfig
from agent_runtime.errors import ConfigError, ModelLoadError
from agent_runtime.server.admission import Admission, Call, CallState, Refusal
from agent_runtime.server.clients import ClientAddresses
from agent_runtime.server.metrics import ServerMetrics
from agent_runtime.server.security import (
    JSONTooDeep,
    bearer,
    cors_middleware,
    error_middleware,
    host_middleware,
    json_error,
    parse_json,
    resolve_token,
    token_matches,
    unauthorized,
)
from agent_runtime.transport.base import Transport
from agent_runtime.transport.hangup import HangUp
from agent_runtime.transport.twilio import CLOSE_POLICY, CLOSE_TRY_AGAIN, TwilioTransport
from agent_runtime.transport.webrtc import (
    WebRTCTransport,
    ice_servers_from_config,
    use_loopback_host_candidates,
)
from agent_runtime.turn.session import Engines, Session, SessionEvent

log = logging.getLogger("agent_runtime.server")
STATIC_DIR = Path(__file__).parent / "static"
WS_CLOSE_TIMEOUT_S = 2.0  # how long a closing phone socket may take to answer our close frame
__all__ = ["Call", "CallServer", "CallState"]


def event_to_json(event: SessionEvent) -> dict[str, Any]:
    """A session event as the browser page gets it."""
    data = dict(event.data)
    if event.kind == "turn":
        m = data.pop("metrics")
        data = {
            "turn_id": m.turn_id,
            "voice_to_voice_ms": None if m.voice_to_voice is None else round(m.voice_to_voice * 1000, 1),
            "stages_ms": m.relative_ms(),
            "user_text": m.user_text,
            "agent_text": m.agent_text,
            "interrupted": m.interrupted,
        }
    return {"kind": event.kind, "session_id": event.session_id, **data}


def live_latency(session: Session | None) -> dict[str, Any] | None:
    """The latency of the turn whose reply just became audible (the `turn` event comes at its end)."""
    reply = session.current_reply if session is not None else None
    if session is None or reply is None:
        return None
    m = reply.metrics
    v2v = m.voice_to_voice
    return {
        "kind": "latency", "session_id": session.session_id, "turn_id": m.turn_id,
        "voice_to_voice_ms": None if v2v is None else round(v2v * 1000, 1), "stages_ms": m.relative_ms(),
    }


class CallServer:
    """Owns the aiohttp application, the engines and the calls in progress."""

    def __init__(
        self,
        config: AppConfig,
        load_engines: Callable[[], Engines],
        *,
        host: str | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.server_config = config.server
        self.host = host or config.server.host
        self.environ = dict(os.environ if environ is None else environ)
        self.token = resolve_token(config.server, self.host, self.environ)
        self._load_engines = load_engines
        self.engines: Engines | None = None
        self.engine_error: str | None = None
        s = config.server
        self.admission = Admission(s.max_sessions, s.max_pending_per_client, s.max_calls_per_client)
        self.clients = ClientAddresses(s.trusted_proxies)
        self.draining = False
        self.metrics = ServerMetrics()
        self._loader: asyncio.Task[None] | None = None
        if config.server.loopback_only:
            use_loopback_host_candidates(True)
        self.app = self._build_app()

    # -- application ------------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.server_config.max_body_bytes,
            middlewares=[
                error_middleware(self.server_config.max_body_bytes),
                host_middleware(self.host, self.server_config.allowed_hosts),
                cors_middleware(self.server_config.cors_origins),
            ],
        )
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC_DIR, show_index=False)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/offer", self._offer)
        app.router.add_get("/ice", self._ice)
        app.router.add_route("OPTIONS", "/offer", self._preflight)
        app.router.add_get("/twilio", self._twilio)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self._loader = asyncio.create_task(self._load(), name="load-engines")

    async def _on_shutdown(self, _app: web.Application) -> None:
        await self.drain(self.server_config.shutdown_grace_s)
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()

    async def _load(self) -> None:
        t = time.perf_counter()
        try:
            self.engines = await asyncio.to_thread(self._load_engines)
        except Exception as exc:
            self.engine_error = f"{type(exc).__name__}: {exc}"
            self.metrics.errors.inc("engine_load")
            if isinstance(exc, (ConfigError, ModelLoadError)):  # the user's to fix: one line says what
                log.error("loading the engines failed: %s", exc)
            else:
                log.exception("loading the engines failed")
            return
        self.engines.recognizer.lanes.add_listener(self.metrics.asr_wait.observe)
        log.info("engines ready in %.1f s: accepting calls", time.perf_counter() - t)

    # -- operations -------------------------------------------------------------------------------
    async def _index(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self.draining:
            return json_error(503, "shutting down")
        if self.engines is None:
            return json_error(503, self.engine_error or "engines are loading")
        return web.json_response({"status": "ready", "sessions": len(self.calls), "pending": self.admission.pending()})

    async def _metrics(self, _request: web.Request) -> web.Response:
        calls = self.calls
        for kind in ("webrtc", "twilio"):
            self.metrics.active_sessions.set(sum(c.kind == kind for c in calls.values()), kind)
            self.metrics.pending.set(self.admission.pending(kind=kind), kind)
        if self.engines is not None:
            lanes = self.engines.recognizer.lanes
            self.metrics.asr_queued.set(lanes.waiting)
            self.metrics.asr_busy.set(lanes.busy)
        return web.Response(text=self.metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Prometheus-Format": "0.0.4"})

    async def _preflight(self, _request: web.Request) -> web.Response:
        return web.Response(status=204)  # cross-origin preflights are answered by the CORS middleware

    # -- admission --------------------------------------------------------------------------------
    @property
    def calls(self) -> dict[str, Call]:
        """The calls holding a slot (ADMITTED or ACTIVE), by id."""
        return self.admission.calls()

    def _unavailable(self) -> Refusal | None:
        """Why no call can start at all right now (draining, engines loading), or None."""
        if self.draining:
            return Refusal("draining", "server is shutting down; call another instance")
        if self.engines is None:
            return Refusal("not_ready", "not ready: engines are still loading")
        return None

    def _refuse_pending(self, client: str) -> Refusal | None:
        return self.admission.refuse_pending(client, math.ceil(self.server_config.setup_timeout_s))

    def _refused(self, refusal: Refusal) -> web.Response:
        """Count a refusal and answer it: 429 for a per-client limit, else 503; with Retry-After."""
        self.metrics.rejected.inc(refusal.reason)
        status = 429 if refusal.reason == "per_client" else 503
        return json_error(status, refusal.message, **{"Retry-After": str(refusal.retry_after_s)})

    # -- WebRTC -----------------------------------------------------------------------------------
    async def _ice(self, request: web.Request) -> web.Response:
        """The configured STUN/TURN servers for the browser page (TURN credentials: auth required)."""
        if self.token is not None and not token_matches(bearer(request), self.token):
            return unauthorized()
        servers = [
            {k: v for k, v in (("urls", s.urls), ("username", s.username), ("credential", s.credential)) if v}
            for s in ice_servers_from_config(self.server_config.ice_servers, self.environ)
        ]
        return web.json_response({"iceServers": servers})

    async def _offer(self, request: web.Request) -> web.Response:
        if self.token is not None and not token_matches(bearer(request), self.token):
            self.metrics.rejected.inc("unauthorized")
            return unauthorized()
        raw = await request.read()
        try:
            body = parse_json(raw, self.server_config.max_json_depth)
        except JSONTooDeep as exc:
            return self._bad_offer(f"body is {exc} (server.max_json_depth)")
        except (ValueError, UnicodeDecodeError) as exc:
            return self._bad_offer(f"body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return self._bad_offer('body must be a JSON object {"sdp": ..., "type": "offer"}')
        if body.get("type") != "offer":
            return self._bad_offer(f'"type" must be "offer", got {body.get("type")!r}')
        sdp = body.get("sdp")
        if not isinstance(sdp, str) or not sdp.lstrip().startswith("v=0"):
            return self._bad_offer('malformed SDP: "sdp" must be a session description starting with "v=0"')
        if "m=audio" not in sdp:
            return self._bad_offer("malformed SDP: the offer has no audio media section (m=audio)")
        client = self.clients.of(request)
        refusal = self._unavailable() or self._refuse_pending(client)
        if refusal is not None:
            return self._refused(refusal)
        call = self.admission.open("webrtc", client)
        refusal = self.admission.admit(call)
        if refusal is not None:
            self.admission.move(call, CallState.ENDED)
            return self._refused(refusal)
        s = self.server_config
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers_from_config(s.ice_servers, self.environ)))
        transport = WebRTCTransport(
            pc, jitter_buffer_packets=s.jitter_buffer_packets, media_timeout_s=s.media_timeout_s
        )
        call.transport = transport
        pc.on("datachannel", lambda ch: self._on_channel(call, ch))
        try:
            answer = await transport.accept(sdp)
        except Exception as exc:
            self.admission.move(call, CallState.ENDED)
            await transport.close()
            return self._bad_offer(f"malformed SDP: {type(exc).__name__}: {exc}")
        self._start(call, transport)
        return web.json_response({"sdp": answer, "type": "answer", "session_id": call.call_id})

    def _bad_offer(self, message: str) -> web.Response:
        self.metrics.errors.inc("bad_offer")
        return json_error(400, message)

    def _on_channel(self, call: Call, channel: Any) -> None:
        call.channel = channel

        def opened() -> None:
            call.send_event({"kind": "session", "session_id": call.call_id})

        if channel.readyState == "open":
            opened()
        else:
            channel.on("open", opened)

    # -- Twilio -----------------------------------------------------------------------------------
    async def _twilio(self, request: web.Request) -> web.StreamResponse:
        presented = bearer(request)
        header_ok = self.token is None or token_matches(presented, self.token)
        if presented is not None and not header_ok:
            self.metrics.rejected.inc("unauthorized")
            return unauthorized()
        client = self.clients.of(request)
        refusal = self._unavailable() or self.admission.refuse_slot(client) or self._refuse_pending(client)
        if refusal is not None:
            return self._refused(refusal)  # before the upgrade: a plain HTTP answer
        s = self.server_config
        ws = web.WebSocketResponse(
            max_msg_size=s.max_body_bytes, autoping=True, heartbeat=s.keepalive_s or None, timeout=WS_CLOSE_TIMEOUT_S
        )
        call = self.admission.open("twilio", client)  # PENDING: no call slot until a valid `start`
        try:
            await ws.prepare(request)
            transport = TwilioTransport(ws, media_timeout_s=s.media_timeout_s, max_json_depth=s.max_json_depth)
            call.transport = transport
            if await self._twilio_setup(call, transport, header_ok):
                self._start(call, transport)
                assert call.task is not None
                await asyncio.shield(call.task)
        finally:
            if call.task is None:
                self.admission.move(call, CallState.ENDED)
        return ws

    async def _twilio_setup(self, call: Call, transport: TwilioTransport, header_ok: bool) -> bool:
        """Wait for a valid `start`, check its token, take a slot (-> ACTIVE). False: the socket was closed."""
        info = await transport.start(timeout=self.server_config.setup_timeout_s)
        if info is None:
            if transport.hang_up is HangUp.SETUP_TIMEOUT:
                self.metrics.rejected.inc("setup_timeout")
            elif transport.close_reason:
                self.metrics.errors.inc("bad_stream")
            return False
        if not header_ok and not token_matches(info.custom_parameters.get("token"), self.token or ""):
            self.metrics.rejected.inc("unauthorized")
            log.warning("twilio stream %s from %s: missing or wrong token", info.stream_sid, call.client)
            await transport.close(CLOSE_POLICY, "unauthorized: missing or wrong 'token' custom parameter")
            return False
        refusal = self._unavailable() or self.admission.admit(call)
        if refusal is not None:
            self.metrics.rejected.inc(refusal.reason)
            log.warning("twilio stream %s from %s refused: %s", info.stream_sid, call.client, refusal.message)
            await transport.close(CLOSE_TRY_AGAIN, refusal.message)
            return False
        self.admission.move(call, CallState.ACTIVE)  # the stream is the media path: it is up
        log.info("twilio call %s: stream %s", info.call_sid or "-", info.stream_sid)
        return True

    # -- calls --------------------------------------------------------------------------------------
    def _start(self, call: Call, transport: Transport) -> None:
        assert self.engines is not None

        def on_event(event: SessionEvent) -> None:
            self.metrics.observe_event(event.kind, event.data)
            call.send_event(event_to_json(event))
            if event.kind == "state" and event.data.get("state") == "speaking":
                live = live_latency(call.session)
                if live is not None:
                    call.send_event(live)

        call.session = Session(self.config, self.engines, transport, on_event=on_event, session_id=call.call_id)
        self.metrics.sessions.inc(call.kind)
        call.task = asyncio.create_task(self._run(call), name=f"call-{call.call_id}")

    async def _run(self, call: Call) -> None:
        assert call.session is not None and call.transport is not None
        watchdog = None
        if isinstance(call.transport, WebRTCTransport):
            watchdog = asyncio.create_task(self._await_connect(call, call.transport), name=f"setup-{call.call_id}")
        try:
            await call.session.run()
        except Exception:
            self.metrics.errors.inc("session")
            log.exception("call %s failed", call.call_id)
        else:
            if getattr(call.transport, "close_reason", None):
                self.metrics.errors.inc("bad_stream")  # the phone stream sent garbage mid-call
        finally:
            if watchdog is not None:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
            hang_up = getattr(call.transport, "hang_up", None)
            if isinstance(hang_up, HangUp):
                self.metrics.reclaimed.inc(hang_up.value)
            try:
                await call.transport.close()
            except Exception as exc:  # the call is over either way
                log.warning("call %s: closing the transport failed: %s: %s", call.call_id, type(exc).__name__, exc)
            self.admission.move(call, CallState.ENDED)
            log.info("call %s ended after %.1f s", call.call_id, time.monotonic() - call.started)

    async def _await_connect(self, call: Call, transport: WebRTCTransport) -> None:
        """ADMITTED -> ACTIVE when the peer connects; hang up if it has not within `setup_timeout_s`."""
        setup = self.server_config.setup_timeout_s
        try:
            async with asyncio.timeout(setup):
                await transport.wait_connected()
        except TimeoutError:
            self.metrics.reclaimed.inc(HangUp.SETUP_TIMEOUT.value)
            log.warning("call %s: WebRTC peer at %s did not connect within %g s: hanging up", call.call_id,
                        call.client, setup)
            await transport.close()
            return
        if call.state is CallState.ADMITTED:
            self.admission.move(call, CallState.ACTIVE)

    async def drain(self, grace_s: float) -> None:
        """Stop accepting calls, give the calls in progress `grace_s` to end, then hang them up."""
        self.draining = True
        tasks = [c.task for c in self.admission.connections() if c.task is not None]
        if tasks:
            log.info("draining: waiting up to %.0f s for %d call(s)", grace_s, len(tasks))
            _done, pending = await asyncio.wait(tasks, timeout=grace_s)
            for call in self.admission.connections():
                if call.transport is not None and call.task in pending:
                    await call.transport.close()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        for call in self.admission.connections():  # never started: signaling in flight, phone sockets pending
            if call.transport is not None:
                await call.transport.close()
