"""Call admission: the lifecycle of a call, and the limits on what one client may hold.

A connection is PENDING while it holds no call slot (a phone socket that has not sent a valid
`start` yet). It is ADMITTED once authenticated and given a slot, ACTIVE when its media path is up
(the WebRTC peer connected; the phone stream started), and ENDED when it is over. `Admission.move`
is the only place a call changes state. Connections that are PENDING or ADMITTED are *pending*: set
up but not yet a running call; each client address may have `max_pending_per_client` of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from agent_runtime.transport.base import Transport
from agent_runtime.turn.session import Session


class CallState(Enum):
    """Where a call is in its lifecycle."""

    PENDING = "pending"  # connected, not authenticated or not started: holds no call slot
    ADMITTED = "admitted"  # holds a call slot; media path not up yet
    ACTIVE = "active"  # media path up: the session is talking to the caller
    ENDED = "ended"


TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.PENDING: frozenset({CallState.ADMITTED, CallState.ENDED}),
    CallState.ADMITTED: frozenset({CallState.ACTIVE, CallState.ENDED}),
    CallState.ACTIVE: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}
SLOT_STATES = frozenset({CallState.ADMITTED, CallState.ACTIVE})
PENDING_STATES = frozenset({CallState.PENDING, CallState.ADMITTED})


@dataclass
class Call:
    """One connection that is, or may become, a call."""

    call_id: str
    kind: str  # webrtc | twilio
    client: str  # the peer's address (request.remote)
    state: CallState = CallState.PENDING
    transport: Transport | None = None
    session: Session | None = None
    task: asyncio.Task[None] | None = None
    channel: Any = None  # the WebRTC data channel the page listens on
    started: float = field(default_factory=time.monotonic)

    def send_event(self, event: dict[str, Any]) -> None:
        ch = self.channel
        if ch is not None and ch.readyState == "open":
            with contextlib.suppress(Exception):
                ch.send(json.dumps(event, separators=(",", ":")))


@dataclass(frozen=True)
class Refusal:
    """Why a connection may not have (or keep waiting for) a call slot."""

    reason: str  # metrics label: busy | per_client
    message: str
    retry_after_s: int = 5


class Admission:
    """The connections of one server by state, and its limits (`server.max_sessions` and per client)."""

    def __init__(self, max_sessions: int, max_pending_per_client: int, max_calls_per_client: int = 0) -> None:
        self.max_sessions = max_sessions
        self.max_pending_per_client = max_pending_per_client
        self.max_calls_per_client = max_calls_per_client
        self._conns: dict[str, Call] = {}

    # -- views ------------------------------------------------------------------------------------
    def calls(self) -> dict[str, Call]:
        """Calls holding a slot (ADMITTED or ACTIVE)."""
        return {k: c for k, c in self._conns.items() if c.state in SLOT_STATES}

    def connections(self) -> list[Call]:
        """Every connection not ENDED."""
        return list(self._conns.values())

    def pending(self, client: str | None = None, kind: str | None = None) -> int:
        """Connections set up but not yet running a call (PENDING or ADMITTED)."""
        return sum(
            c.state in PENDING_STATES and (client is None or c.client == client) and (kind is None or c.kind == kind)
            for c in self._conns.values()
        )

    def slots_of(self, client: str) -> int:
        return sum(c.state in SLOT_STATES and c.client == client for c in self._conns.values())

    @property
    def full(self) -> bool:
        return sum(c.state in SLOT_STATES for c in self._conns.values()) >= self.max_sessions

    # -- checks -----------------------------------------------------------------------------------
    def refuse_pending(self, client: str, retry_after_s: int = 5) -> Refusal | None:
        """A refusal if `client` already has `max_pending_per_client` connections being set up."""
        limit = self.max_pending_per_client
        if self.pending(client) < limit:
            return None
        return Refusal(
            "per_client",
            f"too many calls being set up from {client}: {limit} have not started yet "
            "(server.max_pending_per_client); try again shortly",
            retry_after_s,
        )

    def refuse_slot(self, client: str) -> Refusal | None:
        """A refusal if no call slot is free for `client` (server full, or its own limit reached)."""
        if self.full:
            return Refusal("busy", f"busy: all {self.max_sessions} call slots are in use; try again shortly")
        limit = self.max_calls_per_client
        if limit and self.slots_of(client) >= limit:
            return Refusal(
                "per_client",
                f"too many calls from {client}: {limit} in progress (server.max_calls_per_client)",
            )
        return None

    # -- transitions ------------------------------------------------------------------------------
    def open(self, kind: str, client: str) -> Call:
        """Register a new PENDING connection."""
        call = Call(uuid.uuid4().hex[:12], kind, client)
        self._conns[call.call_id] = call
        return call

    def admit(self, call: Call) -> Refusal | None:
        """Give `call` a slot (PENDING -> ADMITTED), or say why not (it stays PENDING)."""
        refusal = self.refuse_slot(call.client)
        if refusal is None:
            self.move(call, CallState.ADMITTED)
        return refusal

    def move(self, call: Call, state: CallState) -> bool:
        """Change `call`'s state; False if it already is `state`. Raises on a transition not in TRANSITIONS."""
        if call.state is state:
            return False
        if state not in TRANSITIONS[call.state]:
            raise RuntimeError(f"call {call.call_id}: no transition {call.state.value} -> {state.value}")
        call.state = state
        if state is CallState.ENDED:
            self._conns.pop(call.call_id, None)
        return True
