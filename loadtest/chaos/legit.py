"""Legit callers: real calls with the bearer token (WebRTC or the phone WebSocket), a few questions each.

A legit call is *lost* when it is refused (401/429/503), a question gets no agent audio within
`reply_wait_s`, the server ends it before the caller hangs up, or it overruns `call_timeout_s`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import numpy as np

from loadtest.callers.base import CallFailed, Leg
from loadtest.callers.twilio import RATE, TwilioLeg
from loadtest.callers.webrtc import WebRTCLeg
from loadtest.chaos.plan import Legit

AUDIBLE = 300


class TokenWebRTCLeg(WebRTCLeg):
    """A WebRTC caller that signals with `Authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    async def connect(self, base_url: str, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.peer.call_http(base_url, self.token)
                await self.peer.connected(timeout)
        except TimeoutError:
            raise CallFailed(f"WebRTC connection not up within {timeout:.0f} s") from None
        except Exception as exc:  # refused (401/429/503), bad answer, network
            raise CallFailed(f"{type(exc).__name__}: {exc}"[:300]) from None


class TokenTwilioLeg(TwilioLeg):
    """A phone caller whose WebSocket upgrade carries the bearer token (and the `start` too, as a
    customParameter, the way a TwiML <Parameter> would)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def new_http(self) -> aiohttp.ClientSession:
        """The HTTP client the call's WebSocket goes through (carries the bearer token)."""
        return aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.token}"})

    async def connect(self, base_url: str, timeout: float) -> None:
        url = base_url.replace("http://", "ws://", 1) + "/twilio"
        self._http = self.new_http()
        try:
            async with asyncio.timeout(timeout):
                self._ws = await self._http.ws_connect(url, max_msg_size=1 << 20, heartbeat=None)
                await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
                await self._send(start_message(self.sid, self.token))
        except Exception as exc:
            await self._close_http()
            raise CallFailed(f"phone WebSocket: {type(exc).__name__}: {exc}"[:300]) from None
        self._tasks = [asyncio.create_task(self._mic()), asyncio.create_task(self._read())]


def start_message(sid: str, token: str | None = None, **media_format: Any) -> dict[str, Any]:
    """A well-formed Twilio `start` message (mediaFormat keys overridable)."""
    fmt = {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1, **media_format}
    params = {"token": token} if token else {}
    return {"event": "start", "sequenceNumber": "1", "streamSid": sid,
            "start": {"accountSid": "AC-chaos", "callSid": "CA" + sid[2:], "streamSid": sid, "tracks": ["inbound"],
                      "customParameters": params, "mediaFormat": fmt}}


def new_sid() -> str:
    return "MZ" + uuid.uuid4().hex


def make_leg(transport: str, index: int, token: str) -> Leg:
    if transport == "mixed":
        transport = "webrtc" if index % 2 == 0 else "twilio"
    return TokenTwilioLeg(token) if transport == "twilio" else TokenWebRTCLeg(token)


@dataclass
class LegitCall:
    """One legit call as its caller saw it."""

    number: int
    transport: str
    status: str = "running"  # ok | refused | no_audio | dropped | timeout | failed
    error: str = ""
    http_status: int | None = None
    turns_answered: int = 0
    turns: int = 0
    seconds: float = 0.0

    @property
    def lost(self) -> bool:
        return self.status != "ok"


async def wait_audio(leg: Leg, after: float, timeout: float) -> float | None:
    """First audible agent frame after `after`, or None (timeout, or the call ended)."""
    deadline = time.monotonic() + timeout
    while leg.alive and time.monotonic() < deadline:
        t = leg.first_audible_after(after, AUDIBLE)
        if t is not None:
            return t
        await asyncio.sleep(0.02)
    return None


async def wait_quiet(leg: Leg, onset: float, quiet_s: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while leg.alive and time.monotonic() < deadline:
        if time.monotonic() - (leg.last_audible(AUDIBLE) or onset) >= quiet_s:
            return
        await asyncio.sleep(0.05)


async def legit_call(number: int, leg: Leg, url: str, plan: Legit, speech: np.ndarray) -> LegitCall:
    """One complete call: connect, ask `plan.turns` questions (each must be answered with audio), hang up."""
    rec = LegitCall(number, leg.kind)
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(plan.call_timeout_s):
            await _converse(rec, leg, url, plan, speech)
    except TimeoutError:
        rec.status, rec.error = "timeout", f"call took over {plan.call_timeout_s:.0f} s"
    except Exception as exc:  # a harness bug must not stop the other callers
        rec.status, rec.error = "failed", f"{type(exc).__name__}: {exc}"[:300]
    finally:
        await leg.hang_up()
        rec.seconds = round(time.monotonic() - t0, 2)
    return rec


async def _converse(rec: LegitCall, leg: Leg, url: str, plan: Legit, speech: np.ndarray) -> None:
    try:
        await leg.connect(url, 15.0)
    except CallFailed as exc:
        rec.status, rec.error = "refused", str(exc)
        m = re.search(r"\b(4\d\d|5\d\d)\b", str(exc))
        rec.http_status = int(m.group(1)) if m else None
        return
    await asyncio.sleep(0.3)
    for _ in range(plan.turns):
        rec.turns += 1
        _start, end = await leg.say(speech)
        onset = await wait_audio(leg, end, plan.reply_wait_s)
        if onset is None:
            if not leg.alive:
                rec.status, rec.error = "dropped", f"the server ended the call during turn {rec.turns}"
            else:
                rec.status, rec.error = "no_audio", f"no agent audio within {plan.reply_wait_s:g} s of turn {rec.turns}"
            return
        rec.turns_answered += 1
        await wait_quiet(leg, onset, plan.quiet_s, plan.reply_wait_s * 3)
    if not leg.alive:
        rec.status, rec.error = "dropped", "the server ended the call before the caller hung up"
        return
    rec.status = "ok"


@dataclass
class LegitStats:
    calls: list[LegitCall]

    def as_json(self) -> dict[str, Any]:
        lost = [c for c in self.calls if c.lost]
        by: dict[str, int] = {}
        for c in lost:
            by[c.status] = by.get(c.status, 0) + 1
        return {"attempted": len(self.calls), "completed": len(self.calls) - len(lost), "lost": len(lost),
                "lost_by_status": by, "calls": [asdict(c) for c in self.calls]}


def describe(call: LegitCall) -> str:
    return json.dumps({"n": call.number, "transport": call.transport, "status": call.status, "error": call.error})
