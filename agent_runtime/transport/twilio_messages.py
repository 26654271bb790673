"""The Twilio Media Streams messages we read, validated: one text frame -> one typed message.

Known events (`connected`, `start`, `media`, `mark`, `dtmf`, `stop`) must have the shape Twilio sends;
a wrong shape raises TwilioProtocolError with a precise reason ("media.payload must be a base64
string"). Fields we do not use are not checked. Unknown events parse to `Unknown` (ignored by the
transport). See https://www.twilio.com/docs/voice/media-streams/websocket-messages.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from agent_runtime.json_limits import JSONTooDeep, loads

TWILIO_ENCODING = "audio/x-mulaw"
TWILIO_RATE = 8_000
DEFAULT_MAX_DEPTH = 32


class TwilioProtocolError(Exception):
    """The peer sent something that is not a Twilio Media Streams message (the reason is the message)."""


@dataclass
class StreamStart:
    """What the `start` message told us about the call."""

    stream_sid: str
    call_sid: str = ""
    custom_parameters: dict[str, str] = field(default_factory=dict)
    media_format: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Connected:
    event = "connected"


@dataclass(frozen=True)
class Start:
    stream: StreamStart
    event = "start"


@dataclass(frozen=True)
class Media:
    payload: bytes
    """The decoded mu-law bytes (may be empty)."""
    event = "media"


@dataclass(frozen=True)
class Mark:
    name: str
    event = "mark"


@dataclass(frozen=True)
class Dtmf:
    digit: str
    event = "dtmf"


@dataclass(frozen=True)
class Stop:
    event = "stop"


@dataclass(frozen=True)
class Unknown:
    """An event this runtime does not know (ignored)."""

    event: str


TwilioMessage = Connected | Start | Media | Mark | Dtmf | Stop | Unknown


def _object(parent: dict[str, Any], key: str, path: str, *, optional: bool = False) -> dict[str, Any]:
    value = parent.get(key)
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise TwilioProtocolError(f"{path} must be an object")
    return value


def _string(parent: dict[str, Any], key: str, path: str, *, optional: bool = False) -> str:
    value = parent.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise TwilioProtocolError(f"{path} must be a string")
    return value


def _media_format(start: dict[str, Any]) -> dict[str, Any]:
    fmt = _object(start, "mediaFormat", "start.mediaFormat", optional=True)
    encoding = fmt.get("encoding", TWILIO_ENCODING)
    if encoding != TWILIO_ENCODING:
        raise TwilioProtocolError(f"start.mediaFormat.encoding must be {TWILIO_ENCODING!r}")
    rate = fmt.get("sampleRate", TWILIO_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate != TWILIO_RATE:
        raise TwilioProtocolError(f"start.mediaFormat.sampleRate must be {TWILIO_RATE}")
    channels = fmt.get("channels", 1)
    if isinstance(channels, bool) or channels != 1:
        raise TwilioProtocolError("start.mediaFormat.channels must be 1")
    return {"encoding": TWILIO_ENCODING, "sampleRate": TWILIO_RATE, "channels": 1}


def _start(msg: dict[str, Any]) -> Start:
    start = _object(msg, "start", "start")
    sid = msg.get("streamSid") or start.get("streamSid")
    if not isinstance(sid, str) or not sid:
        raise TwilioProtocolError("start.streamSid must be a non-empty string")
    params = _object(start, "customParameters", "start.customParameters", optional=True)
    if not all(isinstance(v, str) for v in params.values()):
        raise TwilioProtocolError("start.customParameters values must be strings")
    return Start(StreamStart(
        stream_sid=sid,
        call_sid=_string(start, "callSid", "start.callSid", optional=True),
        custom_parameters=dict(params),
        media_format=_media_format(start),
    ))


def _media(msg: dict[str, Any]) -> Media:
    media = _object(msg, "media", "media")
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise TwilioProtocolError("media.payload must be a base64 string")
    try:
        return Media(base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        raise TwilioProtocolError("media.payload must be a base64 string") from None


def parse_message(data: str, max_depth: int = DEFAULT_MAX_DEPTH) -> TwilioMessage:
    """One text frame -> a validated message; raises TwilioProtocolError with the reason otherwise."""
    try:
        msg = loads(data, max_depth)
    except JSONTooDeep:
        raise TwilioProtocolError(f"message too deeply nested (over {max_depth} levels)") from None
    except ValueError:
        raise TwilioProtocolError("not JSON") from None
    if not isinstance(msg, dict):
        raise TwilioProtocolError("message must be a JSON object")
    event = msg.get("event")
    if not isinstance(event, str):
        raise TwilioProtocolError("not a Media Streams message (no 'event' string)")
    if msg.get("streamSid") is not None and not isinstance(msg["streamSid"], str):
        raise TwilioProtocolError("streamSid must be a string")
    if event == "media":
        return _media(msg)
    if event == "mark":
        return Mark(_string(_object(msg, "mark", "mark"), "name", "mark.name"))
    if event == "start":
        return _start(msg)
    if event == "connected":
        return Connected()
    if event == "dtmf":
        return Dtmf(_string(_object(msg, "dtmf", "dtmf"), "digit", "dtmf.digit"))
    if event == "stop":
        _object(msg, "stop", "stop", optional=True)
        return Stop()
    return Unknown(event[:40])
