"""Why a transport hung up a call on its own (the caller did not hang up)."""

from __future__ import annotations

from enum import Enum


class HangUp(Enum):
    """The reason a transport ended a call it was not told to end; its value is the metrics label."""

    SETUP_TIMEOUT = "setup_timeout"  # the call never started (no valid `start`, peer never connected)
    MEDIA_TIMEOUT = "media_timeout"  # no caller audio for `media_timeout_s`, from the start of the call
    KEEPALIVE = "keepalive"  # the peer stopped answering keepalive pings (a dead TCP peer)
