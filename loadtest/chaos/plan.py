"""The chaos campaign file (configs/scenarios/chaos/default.yaml): how long, how many, which attacks, bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loadtest.scenario import ScenarioError

Behaviour = Literal["normal", "stall", "long", "garbage", "close"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Legit(_Strict):
    transport: Literal["webrtc", "twilio", "mixed"] = Field("mixed", description="legit callers' transport")
    concurrency: int = Field(2, ge=1, le=8, description="legit calls in flight at once")
    turns: int = Field(2, ge=1, le=10, description="questions per legit call")
    text: str = Field("What time do you open tomorrow?", description="what the legit caller says")
    reply_wait_s: float = Field(12.0, gt=0, le=60, description="no agent audio by then after a question: lost")
    quiet_s: float = Field(
        2.5, gt=0, le=10,
        description="agent silence that ends a reply (longer than llm.inter_token_timeout_s: a stall must be cut "
        "by the runtime, not by the caller talking again)",
    )
    call_timeout_s: float = Field(45.0, gt=0, le=300, description="one legit call, connect to hang-up")
    max_calls: int = Field(40, ge=1, le=500, description="legit calls started in the whole run")


class Squatters(_Strict):
    sockets: int = Field(6, ge=1, le=50, description="unauthenticated /twilio sockets held open at once")


class Silent(_Strict):
    every_s: float = Field(4.0, gt=0, le=60, description="a new silent peer of each kind this often")


class Malformed(_Strict):
    every_s: float = Field(1.0, gt=0, le=60, description="one malformed phone stream this often (cases rotate)")


class HostileHTTP(_Strict):
    every_s: float = Field(1.0, gt=0, le=60, description="one hostile request this often (cases rotate)")
    slowloris: int = Field(3, ge=0, le=20, description="slow-header connections held open at once")


class Killed(_Strict):
    every_s: float = Field(5.0, gt=0, le=60, description="one caller that drops its connection mid-reply this often")


class FaultLLM(_Strict):
    schedule: list[Behaviour] = Field(
        default_factory=lambda: ["normal", "stall", "long", "garbage", "close"],
        min_length=1, description="behaviour of request n is schedule[n % len]",
    )
    stall_cap_s: float = Field(20.0, gt=0, le=120, description="a stalled stream ends by itself after this")
    long_chars: int = Field(20_000, ge=100, le=200_000, description="length of the unpunctuated reply")


class Bounds(_Strict):
    recover_s: float = Field(20.0, gt=0, le=300, description="after the run, slots must be free within this")
    max_rss_growth_mb: float = Field(
        250.0, gt=0,
        description="server RSS growth allowed over the whole run: engines grow their buffers to the largest "
        "input they see (bounded by tts.max_segment_chars, llm.max_reply_chars), then level off",
    )
    max_rss_late_growth_mb: float = Field(
        40.0, gt=0,
        description="server RSS growth allowed over the run's second half, when every attack and LLM fault "
        "has run at least once: a leak keeps climbing there",
    )
    reap_margin_s: float = Field(6.0, ge=0, le=120, description="slack on top of a timeout before a peer counts as not reaped")


class ChaosPlan(_Strict):
    name: str = "chaos"
    description: str = ""
    duration_s: float = Field(60.0, gt=0, le=1800, description="how long attacks and legit calls run")
    server: dict[str, Any] = Field(default_factory=dict, description="server config overrides (`server:` keys)")
    llm: dict[str, Any] = Field(default_factory=dict, description="llm config overrides (besides the backend)")
    tts: dict[str, Any] = Field(default_factory=dict, description="tts config overrides")
    legit: Legit = Legit()
    squatters: Squatters = Squatters()
    silent: Silent = Silent()
    malformed: Malformed = Malformed()
    hostile_http: HostileHTTP = HostileHTTP()
    killed: Killed = Killed()
    fault_llm: FaultLLM = FaultLLM()
    bounds: Bounds = Bounds()


def load_plan(path: Path, duration_s: float | None = None) -> ChaosPlan:
    """Parse and validate; `duration_s` (the --duration flag) overrides the file's."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ScenarioError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: top level must be a mapping")
    if duration_s is not None:
        raw["duration_s"] = duration_s
    try:
        return ChaosPlan.model_validate(raw)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            parts.append(f"{loc}: {'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}")
        raise ScenarioError(f"{path}: {'; '.join(parts)}") from None
