"""Attacks over WebRTC: an offer whose peer never connects, a peer that connects and sends no audio, and a
caller that vanishes mid-reply. Signaling comes from the attacker's own loopback address."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiortc import RTCPeerConnection, RTCSessionDescription

from loadtest.chaos.attacks_ws import SILENT_ADDR, Ctx, client, reply_then_vanish
from loadtest.chaos.legit import TokenWebRTCLeg


async def _offer(ctx: Ctx, pc: RTCPeerConnection, addr: str) -> tuple[int, dict]:
    """POST our offer with the token from `addr`; (HTTP status, JSON body)."""
    await pc.setLocalDescription(await pc.createOffer())
    body = {"sdp": pc.localDescription.sdp, "type": "offer"}
    async with client(addr, ctx.token) as http, http.post(ctx.url + "/offer", json=body) as r:
        try:
            data = await r.json(content_type=None)
        except ValueError:
            data = {}
        return r.status, data if isinstance(data, dict) else {}


def _silent_pc() -> RTCPeerConnection:
    """A peer that only receives audio (sends no RTP at all) and has the events data channel."""
    pc = RTCPeerConnection()
    pc.createDataChannel("events")
    pc.addTransceiver("audio", direction="recvonly")
    return pc


async def offer_never_connects(ctx: Ctx) -> None:
    """An authenticated offer whose peer disappears before ICE: the slot must come back (setup_timeout_s)."""
    pc = _silent_pc()
    try:
        status, _ = await _offer(ctx, pc, SILENT_ADDR)
    finally:
        await pc.close()
    ctx.log.add("silent_webrtc", "offer_never_connects", f"HTTP {status}", status in (200, 429),
                "" if status in (200, 429) else "an authenticated offer was refused")


async def connected_no_audio(ctx: Ctx) -> None:
    """A peer that completes ICE/DTLS and then sends no audio: the server must hang up (media_timeout_s)."""
    bound = ctx.media_timeout_s + ctx.margin_s
    pc = _silent_pc()
    ended = asyncio.Event()
    try:
        status, data = await _offer(ctx, pc, SILENT_ADDR)
        if status != 200 or "sdp" not in data:
            ctx.log.add("silent_webrtc", "connected_no_audio", f"HTTP {status}", False, "refused")
            return

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                ended.set()

        await pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type="answer"))
        try:
            async with asyncio.timeout(10.0):
                while pc.connectionState != "connected":
                    await asyncio.sleep(0.02)
        except TimeoutError:
            ctx.log.add("silent_webrtc", "connected_no_audio", "ICE never connected", False)
            return
        t0 = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bound + 1.0):
                while not ended.is_set() and not _channel_closed(pc):
                    await asyncio.sleep(0.05)
        took = time.monotonic() - t0
        if ended.is_set() or _channel_closed(pc):
            ctx.log.add("silent_webrtc", "connected_no_audio", f"hung up after {took:.1f} s", took <= bound)
        else:
            ctx.log.add("silent_webrtc", "connected_no_audio", f"still connected after {bound + 1:.0f} s", False)
    finally:
        await pc.close()


def _channel_closed(pc: RTCPeerConnection) -> bool:
    """The server's side went away: the SCTP association (data channel transport) is closed."""
    sctp = pc.sctp
    return sctp is not None and sctp.state == "closed"


async def silent_webrtc(ctx: Ctx, every_s: float) -> None:
    """Alternately an offer that never connects and a connected peer that never speaks."""
    k = 0
    while ctx.running():
        t0 = time.monotonic()
        await (offer_never_connects(ctx) if k % 2 == 0 else connected_no_audio(ctx))
        k += 1
        await asyncio.sleep(max(0.0, every_s - (time.monotonic() - t0)))


async def killed_webrtc_call(ctx: Ctx) -> None:
    """A real WebRTC call whose caller closes its peer connection 300 ms into the agent's reply."""
    from loadtest.callers.base import CallFailed

    leg = TokenWebRTCLeg(ctx.token)
    try:
        await leg.connect(ctx.url, 15.0)
    except CallFailed as exc:
        ctx.log.add("killed_callers", "webrtc_close_mid_reply", "refused", False, str(exc))
        await leg.hang_up()
        return
    try:
        await reply_then_vanish(ctx, leg, "webrtc_close_mid_reply", "closed mid-reply")
    finally:
        await leg.hang_up()  # pc.close(): no goodbye on the data channel, the media just stops
