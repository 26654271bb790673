"""Caller legs: how a simulated caller reaches the server (WebRTC or the Twilio phone WebSocket)."""

from __future__ import annotations

from loadtest.callers.base import CallFailed, Leg


def make_leg(transport: str, index: int) -> Leg:
    """A new leg for `transport` (webrtc, twilio; mixed alternates by caller index)."""
    if transport == "mixed":
        transport = "webrtc" if index % 2 == 0 else "twilio"
    if transport == "twilio":
        from loadtest.callers.twilio import TwilioLeg

        return TwilioLeg()
    from loadtest.callers.webrtc import WebRTCLeg

    return WebRTCLeg()


__all__ = ["CallFailed", "Leg", "make_leg"]
