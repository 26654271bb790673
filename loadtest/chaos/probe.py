"""What one attack attempt did, and whether that is what the server should have done."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Probe:
    """One attempt of one attack (a socket, a request, a peer)."""

    attack: str
    case: str
    outcome: str  # what the server did, e.g. "closed 1007 after 2.0 s", "HTTP 429", "held 20 s"
    ok: bool  # the outcome matches the expectation
    t: float = 0.0  # seconds from the campaign's start
    detail: str = ""


@dataclass
class ProbeLog:
    """All attempts of a campaign; attacks append from their tasks."""

    t0: float = field(default_factory=time.monotonic)
    probes: list[Probe] = field(default_factory=list)

    def add(self, attack: str, case: str, outcome: str, ok: bool, detail: str = "") -> Probe:
        p = Probe(attack, case, outcome, ok, round(time.monotonic() - self.t0, 2), detail[:300])
        self.probes.append(p)
        return p

    def of(self, attack: str) -> list[Probe]:
        return [p for p in self.probes if p.attack == attack]

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.probes]
