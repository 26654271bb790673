"""Per-turn latency metrics: plain events that logs, the demo's waterfall, /metrics and the load
harness all read. All timestamps are `time.monotonic()` seconds."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

import numpy as np

log = logging.getLogger("agent_runtime.metrics")

# The stages of a turn, in the order they normally happen, with their display names.
STAGES: list[tuple[str, str]] = [
    ("user_speech_end", "end of user speech (VAD)"),
    ("asr_final", "ASR final transcript"),
    ("llm_first_token", "LLM first token"),
    ("tts_first_text", "first text chunk to TTS"),
    ("tts_first_audio", "TTS first audio"),
    ("end_of_turn", "end-of-turn decision"),
    ("first_audio_out", "first audio frame to transport"),
]


@dataclass
class TurnMetrics:
    """What happened when, in one user turn and the agent's reply to it."""

    session_id: str
    turn_id: int
    user_speech_end: float | None = None
    end_of_turn: float | None = None
    asr_final: float | None = None
    llm_first_token: float | None = None
    tts_first_text: float | None = None
    tts_first_audio: float | None = None
    first_audio_out: float | None = None
    interrupted: bool = False
    premature_replies_dropped: int = 0
    """Speculative replies discarded unheard because the caller kept talking."""
    llm_error: str | None = None
    """The LLM failed or stalled ("stalled: no token for 4.0 s"): the fallback or stall line was spoken."""
    reply_truncated: bool = False
    """The reply reached `llm.max_reply_chars`: the LLM stream was closed there."""
    tts_error: str | None = None
    """The TTS engine failed during this reply (the caller heard only what was played before)."""
    user_text: str = ""
    agent_text: str = ""
    """What the caller heard of the reply."""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def voice_to_voice(self) -> float | None:
        """End of the caller's speech to the first agent audio handed to the transport (seconds)."""
        if self.user_speech_end is None or self.first_audio_out is None:
            return None
        return self.first_audio_out - self.user_speech_end

    @property
    def decision_to_audio(self) -> float | None:
        """End-of-turn decision to the first agent audio (what the runtime adds after deciding)."""
        if self.end_of_turn is None or self.first_audio_out is None:
            return None
        return self.first_audio_out - self.end_of_turn

    def relative_ms(self) -> dict[str, float | None]:
        """Each stage in ms after the end of user speech."""
        base = self.user_speech_end
        out: dict[str, float | None] = {}
        for key, _ in STAGES:
            value = getattr(self, key)
            out[key] = None if value is None or base is None else round((value - base) * 1000, 1)
        return out

    def to_json(self) -> str:
        data = asdict(self)
        data["voice_to_voice_ms"] = _ms(self.voice_to_voice)
        data["decision_to_audio_ms"] = _ms(self.decision_to_audio)
        data["stages_ms"] = self.relative_ms()
        return json.dumps(data, separators=(",", ":"))

    def waterfall(self, width: int = 40) -> str:
        """A text waterfall of the stages relative to the end of user speech."""
        rel = self.relative_ms()
        values = [v for v in rel.values() if v is not None]
        span = max([*values, 1.0])
        lines = []
        for key, label in STAGES:
            v = rel[key]
            if v is None:
                lines.append(f"  {label:<32} {'-':>8}")
                continue
            bar = "#" * max(1, round(width * max(v, 0) / span)) if v > 0 else "|"
            lines.append(f"  {label:<32} {v:>6.0f} ms {bar}")
        return "\n".join(lines)


# Timestamps the pipeline orders: each one, when present, is no earlier than the present ones before it.
_REPLY_CHAIN = ("user_speech_end", "asr_final", "llm_first_token", "tts_first_text", "tts_first_audio")
ORDERED_CHAINS: list[tuple[str, ...]] = [
    (*_REPLY_CHAIN, "first_audio_out"),
    ("user_speech_end", "end_of_turn", "first_audio_out"),
]


def turn_violations(turn: TurnMetrics) -> list[str]:
    """What is wrong with a turn record: stage durations below zero or stages out of pipeline order.

    Only the timestamps a record has are checked (a failed or interrupted turn may lack some). An empty
    list means the record is consistent; anything else is a bug in whoever filled it in.
    """
    problems: list[str] = []
    for key, ms in turn.relative_ms().items():
        if ms is not None and ms < 0:
            problems.append(f"{key} is {ms} ms after the end of user speech")
    derived = {"voice_to_voice": turn.voice_to_voice, "decision_to_audio": turn.decision_to_audio}
    for name, value in derived.items():
        if value is not None and value < 0:
            problems.append(f"{name} is {_ms(value)} ms")
    for chain in ORDERED_CHAINS:
        prev_key: str | None = None
        prev: float | None = None
        for key in chain:
            value = getattr(turn, key)
            if value is None:
                continue
            if prev is not None and value < prev:
                problems.append(f"{key} is {_ms(value - prev)} ms after {prev_key}")
            prev_key, prev = key, value
    if turn.premature_replies_dropped < 0:
        problems.append(f"premature_replies_dropped is {turn.premature_replies_dropped}")
    return list(dict.fromkeys(problems))


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


class MetricsCollector:
    """Collects finished turns; logs each as one JSON line; summarises p50/p95."""

    def __init__(self) -> None:
        self.turns: list[TurnMetrics] = []
        self.violations: list[tuple[int, list[str]]] = []
        """(turn id, problems) for each recorded turn that failed `turn_violations`."""

    def record(self, turn: TurnMetrics) -> None:
        self.turns.append(turn)
        problems = turn_violations(turn)
        if problems:
            self.violations.append((turn.turn_id, problems))
            log.error(
                "session %s turn %d: inconsistent turn metrics: %s",
                turn.session_id, turn.turn_id, "; ".join(problems),
            )  # fmt: skip
        log.info("turn %s", turn.to_json())

    def summary(self) -> dict[str, dict[str, float]]:
        series: dict[str, list[float]] = {"voice_to_voice_ms": [], "decision_to_audio_ms": []}
        for key, _ in STAGES[1:]:
            series[f"{key}_ms"] = []
        for t in self.turns:
            if t.voice_to_voice is not None:
                series["voice_to_voice_ms"].append(t.voice_to_voice * 1000)
            if t.decision_to_audio is not None:
                series["decision_to_audio_ms"].append(t.decision_to_audio * 1000)
            for key, value in t.relative_ms().items():
                if key != "user_speech_end" and value is not None:
                    series[f"{key}_ms"].append(value)
        return {k: percentiles(v) for k, v in series.items() if v}


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "n": float(len(arr)),
        "p50": round(float(np.percentile(arr, 50)), 1),
        "p95": round(float(np.percentile(arr, 95)), 1),
        "p99": round(float(np.percentile(arr, 99)), 1),
        "mean": round(float(arr.mean()), 1),
    }
