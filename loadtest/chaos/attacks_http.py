"""Hostile HTTP: deep JSON, oversized and malformed offers, no token, a wrong Host header, slowloris."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from loadtest.chaos.attacks_ws import Ctx, client

HOSTILE_ADDR = "127.0.0.5"
HOST_REFUSED = (400, 403, 421)
_OFFER_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


@dataclass(frozen=True)
class Case:
    """One hostile request and the statuses that are a correct answer."""

    method: str
    path: str
    body: Callable[[], bytes] | None
    expect: tuple[int, ...]
    token: bool = True
    host: str | None = None  # a Host header other than the server's own


def _deep_offer() -> bytes:
    n = 20_000
    return ('{"type":"offer","sdp":"v=0","x":' + "[" * n + "]" * n + "}").encode()


CASES: dict[str, Case] = {
    "offer_without_token": Case("POST", "/offer", lambda: json.dumps({"type": "offer", "sdp": _OFFER_SDP}).encode(),
                                (401,), token=False),
    "offer_not_json": Case("POST", "/offer", lambda: b"{{{ not json", (400,)),
    "offer_bad_sdp": Case("POST", "/offer", lambda: json.dumps({"type": "offer", "sdp": _OFFER_SDP + "a=garbage\r\n"
                                                                "m=audio x y z\r\n"}).encode(), (400,)),
    "offer_deep_json": Case("POST", "/offer", _deep_offer, (400,)),
    "offer_oversized": Case("POST", "/offer", lambda: b'{"type":"offer","sdp":"' + b"v" * 300_000 + b'"}', (413,)),
    "wrong_host_readyz": Case("GET", "/readyz", None, HOST_REFUSED, token=False, host="rebind.attacker.example"),
    "wrong_host_offer": Case("POST", "/offer", lambda: json.dumps({"type": "offer", "sdp": _OFFER_SDP}).encode(),
                             HOST_REFUSED, host="rebind.attacker.example:80"),
}


async def hostile_http(ctx: Ctx, every_s: float) -> None:
    """The hostile requests in turn, one every `every_s`, until the campaign's end."""
    names = list(CASES)
    k = 0
    async with client(HOSTILE_ADDR) as http:
        while ctx.running():
            t0 = time.monotonic()
            name = names[k % len(names)]
            k += 1
            c = CASES[name]
            headers = {"Content-Type": "application/json"}
            if c.token:
                headers["Authorization"] = f"Bearer {ctx.token}"
            if c.host:
                headers["Host"] = c.host
            try:
                async with http.request(c.method, ctx.url + c.path, data=c.body() if c.body else None,
                                        headers=headers, timeout=aiohttp.ClientTimeout(total=15)) as r:
                    await r.read()
                    ctx.log.add("hostile_http", name, f"HTTP {r.status}", r.status in c.expect,
                                f"expected {'/'.join(map(str, c.expect))}")
            except Exception as exc:  # a dropped connection is not an answer
                ctx.log.add("hostile_http", name, f"no answer: {type(exc).__name__}", False,
                            f"expected {'/'.join(map(str, c.expect))}")
            await asyncio.sleep(max(0.0, every_s - (time.monotonic() - t0)))


async def slowloris(ctx: Ctx, connections: int) -> None:
    """`connections` sockets that send request headers one byte every 0.5 s, never finishing them."""
    await asyncio.gather(*(_slow(ctx, i) for i in range(connections)))


async def _slow(ctx: Ctx, i: int) -> None:
    parts = urlsplit(ctx.url)
    bound = ctx.header_timeout_s + ctx.margin_s
    while ctx.running():
        try:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port, local_addr=(HOSTILE_ADDR, 0))
        except OSError as exc:
            ctx.log.add("slowloris", "slow_headers", f"connection refused ({type(exc).__name__})", True)
            await asyncio.sleep(0.5)
            continue
        t0 = time.monotonic()
        answer = b""
        closed = False
        try:
            writer.write(f"GET /healthz HTTP/1.1\r\nHost: {parts.netloc}\r\nX-Slow-{i}: ".encode())
            reading = asyncio.ensure_future(reader.read(4096))
            while time.monotonic() - t0 < bound + 1.0:
                done, _ = await asyncio.wait({reading}, timeout=0.5)
                if done:
                    with contextlib.suppress(Exception):
                        answer = reading.result()
                    closed = True
                    break
                writer.write(b"a")
                await writer.drain()
            reading.cancel()
        except (ConnectionError, OSError):
            closed = True
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        took = time.monotonic() - t0
        status = answer.split(b"\r\n", 1)[0].decode(errors="replace")[:40] if answer else "no answer"
        if closed:
            ctx.log.add("slowloris", "slow_headers", f"closed after {took:.1f} s ({status})", took <= bound)
        else:
            ctx.log.add("slowloris", "slow_headers", f"still open after {took:.0f} s", False)
        await asyncio.sleep(0.2)
