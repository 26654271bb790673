"""Attacks on the phone WebSocket (/twilio): squatters, silent streams, malformed streams, killed callers.

Each attacker connects from its own loopback address (127.0.0.x), so per-client limits apply to it and
not to the legit callers on 127.0.0.1. Every wait is bounded; each attempt is one `Probe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from loadtest.callers.base import CallFailed
from loadtest.chaos.legit import TokenTwilioLeg, new_sid, start_message, wait_audio
from loadtest.chaos.probe import ProbeLog

SQUATTER_ADDR = "127.0.0.2"
SILENT_ADDR = "127.0.0.3"
MALFORMED_ADDR = "127.0.0.4"
KILLED_ADDR = "127.0.0.6"
CLOSE_INVALID = 1007


@dataclass
class Ctx:
    """What every attacker needs: where, the token, the server's timeouts, the log, when to stop."""

    url: str
    token: str
    log: ProbeLog
    deadline: float
    setup_timeout_s: float
    media_timeout_s: float
    header_timeout_s: float
    margin_s: float
    speech: np.ndarray
    reply_wait_s: float = 12.0

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/twilio"

    def running(self) -> bool:
        return time.monotonic() < self.deadline


def client(addr: str, token: str | None = None) -> aiohttp.ClientSession:
    """An HTTP client whose connections come from loopback address `addr`."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(addr, 0), force_close=True),
                                 headers=headers)


async def wait_closed(ws: aiohttp.ClientWebSocketResponse, within: float) -> float | None:
    """Seconds until the server closed `ws` (reading and dropping what it sends), None if it did not."""
    t0 = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while True:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.ERROR):
                    return time.monotonic() - t0
    return None


# -- squatters ------------------------------------------------------------------------------------------
async def squatters(ctx: Ctx, sockets: int) -> None:
    """`sockets` unauthenticated /twilio WebSockets that connect, send nothing, and reconnect when dropped."""
    await asyncio.gather(*(_squat(ctx, i) for i in range(sockets)))


async def _squat(ctx: Ctx, i: int) -> None:
    bound = ctx.setup_timeout_s + ctx.margin_s
    async with client(SQUATTER_ADDR) as http:
        while ctx.running():
            try:
                ws = await http.ws_connect(ctx.ws_url, heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=2))
            except aiohttp.WSServerHandshakeError as exc:
                ctx.log.add("squatters", "idle_unauthenticated_socket", f"refused HTTP {exc.status}",
                            exc.status in (401, 403, 429, 503))
                await asyncio.sleep(0.5)
                continue
            except (aiohttp.ClientError, OSError) as exc:
                ctx.log.add("squatters", "idle_unauthenticated_socket", f"connection refused ({type(exc).__name__})",
                            True)
                await asyncio.sleep(0.5)
                continue
            async with ws:
                took = await wait_closed(ws, bound + 1.0)
            if took is None:
                ctx.log.add("squatters", "idle_unauthenticated_socket", f"held over {bound + 1:.0f} s", False,
                            f"socket {i}: the server kept an unauthenticated socket that sent nothing")
            else:
                ctx.log.add("squatters", "idle_unauthenticated_socket",
                            f"reaped after {took:.1f} s (close {ws.close_code})", took <= bound)
            await asyncio.sleep(0.1)


# -- silent phone stream ---------------------------------------------------------------------------------
async def silent_twilio(ctx: Ctx, every_s: float) -> None:
    """A phone stream with the token that sends `start` and then nothing: the server must hang up."""
    bound = ctx.media_timeout_s + ctx.margin_s
    async with client(SILENT_ADDR, ctx.token) as http:
        while ctx.running():
            t0 = time.monotonic()
            try:
                ws = await http.ws_connect(ctx.ws_url, heartbeat=None)
            except aiohttp.WSServerHandshakeError as exc:
                ctx.log.add("silent_twilio", "start_then_nothing", f"refused HTTP {exc.status}", False,
                            "an authenticated phone stream was refused")
            else:
                async with ws:
                    sid = new_sid()
                    await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
                    await ws.send_str(json.dumps(start_message(sid, ctx.token)))
                    took = await wait_closed(ws, bound + 1.0)
                if took is None:
                    ctx.log.add("silent_twilio", "start_then_nothing", f"still open after {bound + 1:.0f} s", False)
                else:
                    ctx.log.add("silent_twilio", "start_then_nothing",
                                f"hung up after {took:.1f} s (close {ws.close_code})", took <= bound)
            await asyncio.sleep(max(0.0, every_s - (time.monotonic() - t0)))


# -- malformed phone streams ------------------------------------------------------------------------------
def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _fmt_list(sid: str, token: str) -> dict[str, Any]:
    m = start_message(sid, token)
    m["start"]["mediaFormat"] = ["audio/x-mulaw", 8000, 1]
    return m


# name -> (needs a valid start first, the frame to send: str (text) or bytes (binary))
MALFORMED: dict[str, tuple[bool, Callable[[str, str], str | bytes]]] = {
    "non_json": (False, lambda sid, tok: "hello, this is not JSON"),
    "binary_frame": (False, lambda sid, tok: b"\x00\xff binary \x01"),
    "event_not_string": (False, lambda sid, tok: json.dumps({"event": 5, "streamSid": sid})),
    "start_not_object": (False, lambda sid, tok: json.dumps({"event": "start", "streamSid": sid, "start": "x"})),
    "mediaformat_list": (False, lambda sid, tok: json.dumps(_fmt_list(sid, tok))),
    "samplerate_text": (False, lambda sid, tok: json.dumps(start_message(sid, tok, sampleRate="fast"))),
    "deep_nesting_first": (False, lambda sid, tok: '{"event":"start","start":' + _deep(20_000) + "}"),
    "media_string": (True, lambda sid, tok: json.dumps({"event": "media", "streamSid": sid, "media": "AAAA"})),
    "mark_string": (True, lambda sid, tok: json.dumps({"event": "mark", "streamSid": sid, "mark": "m1"})),
    "media_payload_number": (True, lambda sid, tok: json.dumps({"event": "media", "streamSid": sid,
                                                                  "media": {"payload": 12345}})),
    "deep_nesting_media": (True, lambda sid, tok: '{"event":"media","media":' + _deep(20_000) + "}"),
}


async def malformed_twilio(ctx: Ctx, every_s: float) -> None:
    """One malformed phone stream at a time, the cases in turn; each must be closed with 1007."""
    bound = 5.0 + ctx.margin_s
    names = list(MALFORMED)
    k = 0
    async with client(MALFORMED_ADDR, ctx.token) as http:
        while ctx.running():
            t0 = time.monotonic()
            name = names[k % len(names)]
            k += 1
            needs_start, frame = MALFORMED[name]
            sid = f"MZchaos{k:026d}"
            try:
                ws = await http.ws_connect(ctx.ws_url, heartbeat=None, max_msg_size=1 << 20)
            except aiohttp.WSServerHandshakeError as exc:
                ctx.log.add("malformed_twilio", name, f"refused HTTP {exc.status}", False,
                            "refused before the malformed frame could be sent")
            else:
                async with ws:
                    try:
                        if needs_start:
                            await ws.send_str(json.dumps(start_message(sid, ctx.token)))
                            await asyncio.sleep(0.2)
                        data = frame(sid, ctx.token)
                        await (ws.send_bytes(data) if isinstance(data, bytes) else ws.send_str(data))
                    except (ConnectionError, RuntimeError) as exc:
                        took, sent = None, f"send failed: {type(exc).__name__}"
                    else:
                        took, sent = await wait_closed(ws, bound), ""
                code = ws.close_code
                if sent:
                    ctx.log.add("malformed_twilio", name, sent, False)
                elif took is None:
                    ctx.log.add("malformed_twilio", name, f"still open after {bound:.0f} s", False)
                else:
                    ctx.log.add("malformed_twilio", name, f"closed {code} after {took:.1f} s", code == CLOSE_INVALID)
            await asyncio.sleep(max(0.0, every_s - (time.monotonic() - t0)))


# -- killed phone caller ------------------------------------------------------------------------------------
class _AddrTwilioLeg(TokenTwilioLeg):
    """A token phone caller from a given loopback address, which can drop its TCP connection."""

    def __init__(self, token: str, addr: str) -> None:
        super().__init__(token)
        self.addr = addr

    def new_http(self) -> aiohttp.ClientSession:
        return client(self.addr, self.token)

    async def drop(self) -> None:
        """Vanish: shut the TCP connection down without a WebSocket close or a Twilio `stop`."""
        self.hung_up = True
        sock = self._ws.get_extra_info("socket") if self._ws is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:  # release the (now dead) connection so the client does not leak it
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._ws.close()
        await self._close_http()


async def reply_then_vanish(ctx: Ctx, leg: Any, name: str, outcome: str) -> None:
    """Ask the question and let the agent's reply play 300 ms; the caller then vanishes (the caller's
    `finally`), and the attempt counts if there was a reply to vanish in."""
    await asyncio.sleep(0.3)
    _s, end = await leg.say(ctx.speech)
    onset = await wait_audio(leg, end, ctx.reply_wait_s)
    if onset is not None:
        await asyncio.sleep(0.3)
    ctx.log.add("killed_callers", name, outcome if onset is not None else "no reply to drop in", onset is not None)


async def killed_twilio_call(ctx: Ctx) -> None:
    """A real phone call that drops its connection 300 ms into the agent's reply."""
    leg = _AddrTwilioLeg(ctx.token, KILLED_ADDR)
    try:
        await leg.connect(ctx.url, 10.0)
    except CallFailed as exc:
        ctx.log.add("killed_callers", "twilio_drop_mid_reply", "refused", False, str(exc))
        return
    try:
        await reply_then_vanish(ctx, leg, "twilio_drop_mid_reply", "dropped mid-reply")
    finally:
        await leg.drop()
