"""The speech servers of a `remote` engine: which one gets the next stream, and which are dead.

Each server has this process's open streams on it, its last reported load (`/readyz` `streams`,
polled every `health_interval_s` by a background task started lazily on the event loop) and a
backoff: a server that failed (unreachable, `/readyz` not 200, died mid-stream) is skipped until
`unhealthy_backoff_s` have passed. A stream goes to the healthy server with the least load (open
streams here + reported streams), ties taken in turn. When every server is backing off, the one
whose backoff ends first is tried anyway (better a try than a certain failure).

WebSocket connections are kept per server when a stream ends cleanly, and the next stream on that
server reuses one. Everything aiohttp owns (the session, connections, the health task) belongs to
the event loop that first used the pool; on a new loop (a test's second `asyncio.run`) the pool
starts afresh there. The health task closes the session when its loop shuts it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agent_runtime.tts_service.protocol import INFO_PATH, REFUSAL_HEADER, STREAM_PATH

log = logging.getLogger("agent_runtime.tts.remote")

READY_PATH = "/readyz"
MAX_IDLE_PER_SERVER = 16
ALIVE_FRESH_S = 0.5  # a sign of life this recent needs no new probe
"""Idle connections kept per server (more are closed: each counts against its max_connections)."""


@dataclass(eq=False)
class Server:
    """One speech server and what this process knows about it."""

    url: str
    index: int
    open_streams: int = 0
    reported_streams: int = 0
    max_streams: int | None = None
    down_until: float = 0.0
    last_error: str | None = None
    idle: list[aiohttp.ClientWebSocketResponse] = field(default_factory=list)
    last_alive: float = 0.0  # when the server was last heard from (a message on any stream, a probe)
    probe: asyncio.Task[bool] | None = None  # a liveness probe in flight (shared by the streams)

    @property
    def load(self) -> int:
        return self.open_streams + self.reported_streams

    def healthy(self, now: float) -> bool:
        return now >= self.down_until


class ConnectFailed(Exception):
    """A server could not be reached (or refused the WebSocket upgrade). `mark_down`: False for a
    429 (rate limit) or a 503 naming `connections` (at its max_connections, healthy); any other
    refusal (draining, loading) skips the server for its backoff."""

    def __init__(self, reason: str, mark_down: bool = True) -> None:
        super().__init__(reason)
        self.mark_down = mark_down


class ServerPool:
    def __init__(
        self,
        urls: list[str],
        *,
        token: str | None,
        connect_timeout_s: float,
        health_interval_s: float,
        unhealthy_backoff_s: float,
    ) -> None:
        self.servers = [Server(url, i) for i, url in enumerate(urls)]
        self.token = token
        self.connect_timeout_s = connect_timeout_s
        self.health_interval_s = health_interval_s
        self.unhealthy_backoff_s = unhealthy_backoff_s
        self._turn = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._health: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    # -- auth ---------------------------------------------------------------------------------
    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    # -- choosing a server --------------------------------------------------------------------
    def pick(self, exclude: set[str] | frozenset[str] = frozenset()) -> Server | None:
        """The server for a new stream (None: every server is excluded)."""
        candidates = [s for s in self.servers if s.url not in exclude]
        if not candidates:
            return None
        now = time.monotonic()
        healthy = [s for s in candidates if s.healthy(now)]
        if not healthy:
            return min(candidates, key=lambda s: s.down_until)
        n = len(self.servers)
        turn = self._turn
        self._turn += 1

        def key(s: Server) -> tuple[int, int, int]:
            full = int(s.max_streams is not None and s.load >= s.max_streams)
            return (full, s.load, (s.index - turn) % n)

        return min(healthy, key=key)

    def mark_down(self, server: Server, reason: str) -> None:
        """Skip `server` for `unhealthy_backoff_s`; its idle connections are dropped."""
        first = server.healthy(time.monotonic())
        server.down_until = time.monotonic() + self.unhealthy_backoff_s
        server.last_error = reason
        if first:
            log.warning(
                "speech server %s marked unhealthy for %.1f s: %s",
                server.url,
                self.unhealthy_backoff_s,
                reason,
            )
        idle, server.idle = server.idle, []
        for ws in idle:
            self._close_soon(ws)

    def describe(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {
                "url": s.url,
                "healthy": s.healthy(now),
                "open_streams": s.open_streams,
                "reported_streams": s.reported_streams,
                "last_error": s.last_error,
            }
            for s in self.servers
        ]

    # -- the event loop's resources -----------------------------------------------------------
    def bind(self) -> aiohttp.ClientSession:
        """The session on the running loop (created, with the health task, on first use)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._session is None or self._session.closed:
            self._loop = loop
            for s in self.servers:
                s.idle = []  # connections of another loop: unusable here
                s.open_streams = 0
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            self._health = loop.create_task(self._health_loop(self._session), name="remote-tts-health")
        return self._session

    async def aclose(self) -> None:
        """Close connections, the health task and the session (on the loop that uses them)."""
        task, self._health = self._health, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        session, self._session = self._session, None
        for s in self.servers:
            idle, s.idle = s.idle, []
            for ws in idle:
                with contextlib.suppress(Exception):
                    await ws.close()
        if session is not None and not session.closed:
            with contextlib.suppress(Exception):
                await session.close()
        self._loop = None

    def close(self) -> None:
        """Best effort from synchronous code: stop the health task (its loop closes the session)."""
        if self._health is not None and not self._health.done():
            with contextlib.suppress(RuntimeError):
                self._health.get_loop().call_soon_threadsafe(self._health.cancel)

    # -- connections --------------------------------------------------------------------------
    async def acquire(
        self, server: Server, *, fresh: bool = False
    ) -> tuple[aiohttp.ClientWebSocketResponse, bool]:
        """A WebSocket to `server`'s stream endpoint: an idle one (reused=True) unless `fresh`,
        else a new connection. Raises ConnectFailed."""
        while server.idle and not fresh:
            ws = server.idle.pop()
            if not ws.closed:
                return ws, True
        session = self.bind()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                ws = await session.ws_connect(
                    server.url + STREAM_PATH, headers=self.headers, autoping=True, max_msg_size=0
                )
        except aiohttp.WSServerHandshakeError as exc:
            reason = (exc.headers or {}).get(REFUSAL_HEADER)
            raise ConnectFailed(
                f"WebSocket refused (HTTP {exc.status}: {exc.message}{f', {reason}' if reason else ''})",
                mark_down=exc.status != 429 and reason != "connections",
            ) from None
        except TimeoutError:
            raise ConnectFailed(f"no connection within {self.connect_timeout_s:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from None
        return ws, False

    def release(self, server: Server, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Keep a connection whose stream ended cleanly for the next stream on `server`."""
        if (
            ws.closed
            or len(server.idle) >= MAX_IDLE_PER_SERVER
            or not server.healthy(time.monotonic())
            or self._session is None
            or self._session.closed
        ):
            self._close_soon(ws)
            return
        server.idle.append(ws)

    def _close_soon(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if ws.closed:
            return
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            task = loop.create_task(_quiet_close(ws))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    # -- health -------------------------------------------------------------------------------
    async def alive(self, server: Server) -> bool:
        """Whether `server` answers at all: heard from in the last ALIVE_FRESH_S, else a `/readyz`
        probe within connect_timeout_s (any HTTP status counts: busy or draining is alive). Streams
        that ask at the same time share one probe. Tells an overloaded server from a dead one."""
        if time.monotonic() - server.last_alive <= ALIVE_FRESH_S:
            return True
        if server.probe is None or server.probe.done():
            server.probe = asyncio.get_running_loop().create_task(self._probe(server), name="remote-tts-probe")
        return await asyncio.shield(server.probe)

    async def _probe(self, server: Server) -> bool:
        session = self.bind()
        try:
            timeout = aiohttp.ClientTimeout(total=max(self.connect_timeout_s, 0.5))
            async with session.get(server.url + READY_PATH, timeout=timeout):
                server.last_alive = time.monotonic()
                return True
        except asyncio.CancelledError:
            raise
        except Exception:
            return False

    async def _health_loop(self, session: aiohttp.ClientSession) -> None:
        try:
            while True:
                await asyncio.gather(*(self._poll(session, s) for s in self.servers))
                await asyncio.sleep(self.health_interval_s)
        finally:
            for s in self.servers:
                idle, s.idle = s.idle, []
                for ws in idle:
                    with contextlib.suppress(BaseException):
                        await ws.close()
            with contextlib.suppress(BaseException):
                await session.close()

    async def _poll(self, session: aiohttp.ClientSession, server: Server) -> None:
        try:
            timeout = aiohttp.ClientTimeout(total=max(self.connect_timeout_s, 0.5))
            async with session.get(server.url + READY_PATH, timeout=timeout) as resp:
                server.last_alive = time.monotonic()
                if resp.status == 404:  # no readiness route (an sglang-omni deployment): reachable is enough
                    return
                if resp.status != 200:
                    self.mark_down(server, f"{READY_PATH} answered {resp.status}")
                    return
                with contextlib.suppress(Exception):
                    body = await resp.json(content_type=None)
                    server.reported_streams = int(body.get("streams", 0))
                    if body.get("max_streams") is not None:
                        server.max_streams = int(body["max_streams"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.mark_down(server, f"{READY_PATH}: {exc or type(exc).__name__}")


async def _quiet_close(ws: aiohttp.ClientWebSocketResponse) -> None:
    with contextlib.suppress(Exception):
        await ws.close()


def fetch_info(urls: list[str], token: str | None, timeout: float) -> tuple[str, dict[str, Any]] | None:
    """`GET /v1/info` of the first server that answers (blocking; used at construction), as
    (url, body); None if none does. A server that answers 401/403 is reported as such."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for url in urls:
        req = urllib.request.Request(url + INFO_PATH, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = json.loads(resp.read().decode("utf-8"))
                if isinstance(body, dict):
                    return url, body
        except urllib.error.HTTPError as exc:
            log.warning("speech server %s: %s answered %s", url, INFO_PATH, exc.code)
        except (OSError, ValueError) as exc:
            log.warning("speech server %s unreachable: %s", url, exc)
    return None
