"""Server metrics in the Prometheus text exposition format (version 0.0.4), without a client library.

Counters, gauges and histograms with fixed label sets; `ServerMetrics.observe_event()` turns the
session events (turn metrics, barge-ins) into samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from agent_runtime.metrics.turns import STAGES, TurnMetrics, turn_violations

REJECT_REASONS = ("busy", "per_client", "unauthorized", "setup_timeout", "not_ready", "draining")
"""`agent_sessions_rejected_total` reasons: no slot free, a per-client limit, bad token, no valid phone
`start` within server.setup_timeout_s, engines loading, shutting down."""
RECLAIM_REASONS = ("setup_timeout", "media_timeout", "keepalive")
"""`agent_calls_reclaimed_total` reasons: WebRTC peer never connected, no caller audio, missed pong."""
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
ASR_WAIT_BUCKETS = (0.001, 0.005, *LATENCY_BUCKETS)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    esc = [v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values]
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, esc, strict=True)) + "}"


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = labels

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + by

    def render(self) -> list[str]:
        return self.header() + [
            f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in sorted(self.values.items())
        ]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        self.values[labels] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = (), buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        counts, totals = self.series.setdefault(labels, ([0] * (len(self.buckets) + 1), [0.0]))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        counts[-1] += 1
        totals[0] += value

    def render(self) -> list[str]:
        out = self.header()
        for key, (counts, totals) in sorted(self.series.items()):
            names = (*self.label_names, "le")
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                out.append(f"{self.name}_bucket{_labels(names, (*key, _num(bound)))} {count}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(totals[0])}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {counts[-1]}")
        return out


class ServerMetrics:
    """Everything `/metrics` shows."""

    def __init__(self) -> None:
        self.active_sessions = Gauge("agent_active_sessions", "calls in progress", ("transport",))
        self.sessions = Counter("agent_sessions_total", "calls started", ("transport",))
        self.rejected = Counter("agent_sessions_rejected_total", "calls refused", ("reason",))
        self.reclaimed = Counter(
            "agent_calls_reclaimed_total", "calls the server hung up because they stalled", ("reason",)
        )
        self.pending = Gauge(
            "agent_pending_connections",
            "connections being set up: phone sockets before a valid start, WebRTC answers not yet connected",
            ("transport",),
        )
        self.turns = Counter("agent_turns_total", "finished user turns (with a reply or interrupted)")
        self.barge_ins = Counter("agent_barge_ins_total", "replies interrupted by the caller")
        self.errors = Counter("agent_errors_total", "errors by kind", ("kind",))
        self.metrics_violations = Counter(
            "agent_turn_metrics_violations_total",
            "turn records whose stage times were negative or out of pipeline order (a runtime bug)",
        )
        self.stage_latency = Histogram(
            "agent_turn_stage_latency_seconds",
            "time from the end of the caller's speech to each stage of the reply",
            ("stage",),
        )
        self.voice_to_voice = Histogram(
            "agent_voice_to_voice_seconds", "end of caller speech to first agent audio sent"
        )
        self.asr_wait = Histogram(
            "agent_asr_wait_seconds", "time each transcription queued for a free ASR worker (asr.workers), all calls",
            buckets=ASR_WAIT_BUCKETS,
        )
        self.playout = Counter("agent_playout_seconds_total", "agent audio sent to callers in replies")
        self.playout_starved = Counter(
            "agent_playout_starved_seconds_total",
            "silence callers heard inside replies because the next audio was not ready (TTS behind playout)",
        )
        self.asr_queued = Gauge("agent_asr_queued", "transcriptions waiting for a free ASR worker now")
        self.asr_busy = Gauge("agent_asr_busy_workers", "ASR workers transcribing now")
        for t in ("webrtc", "twilio"):
            self.active_sessions.set(0, t)
            self.pending.set(0, t)
            self.sessions.values[(t,)] = 0.0
        for reason in REJECT_REASONS:
            self.rejected.values[(reason,)] = 0.0
        for reason in RECLAIM_REASONS:
            self.reclaimed.values[(reason,)] = 0.0

    def observe_turn(self, turn: TurnMetrics) -> None:
        self.turns.inc()
        if turn_violations(turn):  # logged with the turn id by MetricsCollector.record
            self.metrics_violations.inc()
        if turn.voice_to_voice is not None:
            self.voice_to_voice.observe(turn.voice_to_voice)
        for stage, ms in turn.relative_ms().items():
            if stage != "user_speech_end" and ms is not None and ms >= 0:
                self.stage_latency.observe(ms / 1000, stage)
        self.playout.inc(by=turn.extra.get("playout_ms", 0.0) / 1000)
        self.playout_starved.inc(by=turn.extra.get("playout_starved_ms", 0.0) / 1000)
        if turn.llm_error:
            self.errors.inc("llm")
        if turn.tts_error:
            self.errors.inc("tts")

    def observe_event(self, kind: str, data: dict) -> None:
        if kind == "turn":
            self.observe_turn(data["metrics"])
        elif kind == "barge_in" and data.get("phase") == "interrupt":
            self.barge_ins.inc()

    def render(self) -> str:
        metrics = [
            self.active_sessions, self.pending, self.sessions, self.rejected, self.reclaimed, self.turns, self.barge_ins, self.errors,
            self.metrics_violations,
            self.stage_latency, self.voice_to_voice, self.asr_wait, self.asr_queued, self.asr_busy,
            self.playout, self.playout_starved,
        ]
        return "\n".join(line for m in metrics for line in m.render()) + "\n"


STAGE_NAMES = [key for key, _ in STAGES[1:]]
