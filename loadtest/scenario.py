"""Scenario files: what each simulated caller does and how many callers run when.

A scenario is YAML (see configs/scenarios/ and docs/loadtest.md). It is validated strictly: an unknown
key or a bad value is a `ScenarioError` with a one-line message naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ScenarioError(ValueError):
    """A scenario or SLO file is invalid (the message is one line)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Strict):
    """One thing the caller does. Exactly one of text, wav, silence_ms, noise_ms, hang_up_after_ms."""

    text: str | None = Field(
        None,
        description="say this (synthesized once with the embedded piper voice); ' | ' marks a pause inside "
        "the utterance (`pause_ms` of silence, as a caller who hesitates mid-sentence)",
    )
    wav: str | None = Field(None, description="or play this WAV file (relative to the scenario file)")
    silence_ms: int | None = Field(None, ge=1, le=60_000, description="or stay silent this long")
    noise_ms: int | None = Field(None, ge=1, le=60_000, description="or play white noise this long")
    noise_dbfs: float = Field(-45.0, le=0, description="RMS level of noise segments, dBFS")
    barge_in_after_ms: int | None = Field(
        None, ge=0, le=30_000,
        description="speak this long after the agent's reply to the previous utterance begins (talk over it)",
    )
    hang_up_after_ms: int | None = Field(
        None, ge=0, le=30_000, description="hang up this long after the agent's reply begins (mid-reply)"
    )
    pause_before_ms: int = Field(0, ge=0, le=60_000, description="silence before this step")
    pause_ms: int = Field(700, ge=0, le=5_000, description="silence at each ' | ' of the text")

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        actions = [self.text, self.wav, self.silence_ms, self.noise_ms, self.hang_up_after_ms]
        if sum(a is not None for a in actions) != 1:
            raise ValueError("a step needs exactly one of text, wav, silence_ms, noise_ms, hang_up_after_ms")
        if self.barge_in_after_ms is not None and self.text is None and self.wav is None:
            raise ValueError("barge_in_after_ms applies to a text or wav step")
        return self

    @property
    def speaks(self) -> bool:
        return self.text is not None or self.wav is not None


class CallerScript(_Strict):
    """What every simulated caller does in one call."""

    steps: list[Step] = Field(min_length=1, description="the caller's steps, in order")
    repeat: int = Field(1, ge=1, le=100, description="play the steps this many times per call (turns)")
    start_silence_ms: int = Field(500, ge=0, le=10_000, description="silence after connecting, before the first step")
    wait_after_reply_ms: int = Field(600, ge=100, le=10_000, description="agent silence that ends its reply")
    max_reply_wait_s: float = Field(20.0, gt=0, le=120, description="give up waiting for a reply after this")
    voice_speed: float = Field(1.0, gt=0.3, le=3.0, description="piper speed for synthesized caller text")


class Load(_Strict):
    """How many callers run when. step: levels held for step_s each; linear: start..end in ramp_s;
    soak: one concurrency for duration_s."""

    kind: Literal["step", "linear", "soak"] = Field(description="step, linear or soak")
    levels: list[int] | None = Field(None, description="step: the concurrency levels, e.g. [1, 2, 4]")
    step_s: float = Field(30.0, gt=0, le=3600, description="step: seconds each level is held")
    start: int = Field(1, ge=1, le=256, description="linear: first concurrency")
    end: int | None = Field(None, ge=1, le=256, description="linear: last concurrency")
    ramp_s: float = Field(60.0, gt=0, le=7200, description="linear: seconds from start to end")
    concurrency: int | None = Field(None, ge=1, le=256, description="soak: callers in flight")
    duration_s: float = Field(300.0, gt=0, le=86_400, description="soak: seconds")

    @model_validator(mode="after")
    def _shape(self) -> Load:
        if self.kind == "step" and not self.levels:
            raise ValueError("load.kind step needs levels, e.g. [1, 2, 4]")
        if self.kind == "step" and any(not 1 <= c <= 256 for c in self.levels or []):
            raise ValueError("load.levels must be between 1 and 256")
        if self.kind == "linear" and (self.end is None or self.end < self.start):
            raise ValueError("load.kind linear needs end >= start")
        if self.kind == "soak" and self.concurrency is None:
            raise ValueError("load.kind soak needs concurrency")
        return self

    def plan(self) -> list[tuple[int, float]]:
        """The schedule as (concurrency, seconds) levels, in order."""
        if self.kind == "step":
            return [(c, self.step_s) for c in self.levels or []]
        if self.kind == "soak":
            return [(int(self.concurrency or 1), self.duration_s)]
        count = int(self.end or self.start) - self.start + 1
        return [(c, self.ramp_s / count) for c in range(self.start, self.start + count)]


class Limits(_Strict):
    """Hard bounds: the run stops by itself when any is reached."""

    max_duration_s: float = Field(900.0, gt=0, le=86_400, description="whole run, wall clock")
    max_calls: int = Field(1000, ge=1, le=100_000, description="calls started in the whole run")
    call_timeout_s: float = Field(120.0, gt=0, le=3600, description="one call, connect to hang-up")
    connect_timeout_s: float = Field(15.0, gt=0, le=120, description="signaling + ICE, or WebSocket start")
    warmup_calls: int = Field(1, ge=0, le=10, description="calls made (one at a time) before measuring")


class Measure(_Strict):
    """How agent audio is read at the caller."""

    audible_peak: int = Field(300, ge=1, le=32767, description="int16 peak above which a frame is agent audio")
    underrun_min_ms: int = Field(300, ge=40, le=5000, description="silence inside a reply that counts as a gap")
    stop_quiet_ms: int = Field(300, ge=40, le=5000, description="silence that marks agent audio as stopped")
    sample_interval_s: float = Field(1.0, ge=0.1, le=60, description="server CPU/RSS sampling period")


class Scenario(_Strict):
    """A load-test scenario file."""

    name: str = Field(description="shown in the report")
    description: str = Field("", description="free text")
    transport: Literal["webrtc", "twilio", "mixed"] = Field("webrtc", description="how callers connect; mixed alternates")
    caller: CallerScript
    load: Load
    limits: Limits = Limits()
    measure: Measure = Measure()
    base_dir: Path = Field(Path("."), exclude=True, description="(set by the loader) where wav paths are relative to")


def _one_line(exc: ValidationError, path: Path) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{path}: {where}: {msg}{more}"


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from `path`, or ScenarioError."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{p}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{p}: expected a mapping at the top level")
    return data


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; raises ScenarioError with a one-line message."""
    p = Path(path)
    data = read_yaml(p)
    data.pop("base_dir", None)
    try:
        scenario = Scenario.model_validate(data).model_copy(update={"base_dir": p.resolve().parent})
    except ValidationError as exc:
        raise ScenarioError(_one_line(exc, p)) from None
    for step in scenario.caller.steps:
        if step.wav is not None and not (scenario.base_dir / step.wav).is_file():
            raise ScenarioError(f"{p}: caller.steps: wav file not found: {step.wav}")
    return scenario
