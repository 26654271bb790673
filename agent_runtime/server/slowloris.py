"""A TCP site for aiohttp where every request must send its complete headers in time (slowloris).

aiohttp has no header-read timeout: a client that connects and sends nothing, or sends a request
line and then one header byte every few seconds, holds its connection (and a file descriptor)
for as long as it likes. `HeaderTimeoutSite` wraps each connection's aiohttp protocol in
`HeaderDeadline`, which watches the raw bytes: from the connection's start, and from the first
byte of each later request on a kept-alive connection, the headers must end (blank line) within
`header_timeout_s`, or the connection is closed. Bodies are skipped by Content-Length; after an
upgrade (WebSocket) or a chunked body the connection is no longer watched. Idle time between
requests is aiohttp's keep-alive timeout (`IDLE_KEEPALIVE_S`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from enum import Enum

from aiohttp import web

log = logging.getLogger("agent_runtime.server")

IDLE_KEEPALIVE_S = 75.0
"""An idle kept-alive connection is closed after this (aiohttp's own default is an hour)."""
MAX_HEAD_BYTES = 64 * 1024
"""Past this the head is aiohttp's to refuse (its header size limits are smaller); we stop watching."""
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")


class _State(Enum):
    HEAD = "head"  # reading a request's headers: the deadline runs
    BODY = "body"  # skipping a Content-Length body
    IDLE = "idle"  # between requests: the next byte starts a head
    DONE = "done"  # upgraded, chunked, unparseable, or closed: not watched any more


def body_length(head: bytes) -> int | None:
    """The body length a request head announces (0 if none); None when it cannot be framed simply
    (an upgrade, CONNECT, a chunked or otherwise encoded body, a bad or repeated Content-Length)."""
    lines = head.split(b"\n")
    if lines[0].lstrip().upper().startswith(b"CONNECT "):
        return None
    length: int | None = 0
    seen = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in (b"upgrade", b"transfer-encoding"):
            return None
        if name == b"content-length":
            value = value.strip()
            if seen or not value.isdigit():
                return None
            seen, length = True, int(value)
    return length


class HeaderDeadline(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection; closes it when request headers come too slowly."""

    def __init__(self, inner: asyncio.Protocol, timeout_s: float) -> None:
        self.inner = inner
        self.timeout_s = timeout_s
        self.timed_out = False
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._state = _State.HEAD
        self._head = b""
        self._body_left = 0

    # -- asyncio.Protocol, delegated ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._arm()  # covers "connected and sent nothing"
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._state is not _State.DONE:
            self._watch(data)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # -- the deadline -------------------------------------------------------------------------------
    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stop(self) -> None:
        self._disarm()
        self._state = _State.DONE
        self._head = b""

    def _expire(self) -> None:
        self._timer = None
        self.timed_out = True
        self._stop()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            peer = transport.get_extra_info("peername")
            log.debug("closing connection from %s: no complete request headers within %g s", peer, self.timeout_s)
            transport.close()

    def _watch(self, data: bytes) -> None:
        """Advance the framing over `data` (which may hold several pipelined requests)."""
        while data:
            if self._state is _State.IDLE:
                self._state, self._head = _State.HEAD, b""
                self._arm()
            if self._state is _State.HEAD:
                search_from = max(0, len(self._head) - 3)
                self._head += data
                end = _END_OF_HEAD.search(self._head, search_from)
                if end is None:
                    if len(self._head) > MAX_HEAD_BYTES:
                        self._stop()
                    return
                self._disarm()
                data = self._head[end.end():]
                length = body_length(self._head[: end.start()])
                self._head = b""
                if length is None:
                    self._stop()
                    return
                self._state, self._body_left = _State.BODY, length
            if self._state is _State.BODY:
                take = min(self._body_left, len(data))
                self._body_left -= take
                data = data[take:]
                if self._body_left == 0:
                    self._state = _State.IDLE
            if self._state is _State.DONE:
                return


class HeaderTimeoutSite(web.BaseSite):
    """`web.TCPSite` (plain HTTP) whose connections must send complete request headers in `header_timeout_s`."""

    def __init__(
        self, runner: web.BaseRunner, host: str | None, port: int, *, header_timeout_s: float, backlog: int = 128
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._app_runner = runner
        self._host = host
        self._port = port
        self._listen_backlog = backlog
        self.header_timeout_s = header_timeout_s

    @property
    def name(self) -> str:
        return f"http://{self._host or '0.0.0.0'}:{self._port}"

    def protocol_factory(self) -> Callable[[], HeaderDeadline]:
        server = self._app_runner.server
        if server is None:
            raise RuntimeError("call runner.setup() before starting the site")
        timeout = self.header_timeout_s
        return lambda: HeaderDeadline(server(), timeout)

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.protocol_factory(), self._host, self._port, backlog=self._listen_backlog
        )


async def start_http(
    app: web.Application, host: str | None, port: int, *, header_timeout_s: float, handle_signals: bool = False
) -> web.AppRunner:
    """Set up `app` and listen on host:port with the header deadline; `await runner.cleanup()` to stop.

    The bound port is `runner.addresses[0][1]` (useful with port 0).
    """
    runner = web.AppRunner(
        app, handle_signals=handle_signals, access_log=None, keepalive_timeout=IDLE_KEEPALIVE_S
    )
    await runner.setup()
    try:
        await HeaderTimeoutSite(runner, host, port, header_timeout_s=header_timeout_s).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
