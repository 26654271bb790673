"""SLO files and the verdict: which concurrency levels meet the SLO, and does the run pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from loadtest.scenario import ScenarioError, _one_line, _Strict, read_yaml


class SLO(_Strict):
    """Latency and reliability objectives, checked per concurrency level. A limit left out is not checked."""

    voice_to_voice_p95_ms: float | None = Field(None, gt=0, description="p95 end of caller speech -> agent audio")
    voice_to_voice_p99_ms: float | None = Field(None, gt=0, description="p99 of the same")
    barge_in_p95_ms: float | None = Field(None, gt=0, description="p95 caller speech onset -> agent audio stops")
    max_dropped_calls: int = Field(0, ge=0, description="calls cut off before the caller hung up")
    max_failed_calls: int = Field(0, ge=0, description="calls that never connected (refused, ICE timeout)")
    max_unanswered_rate: float = Field(0.0, ge=0, le=1, description="fraction of turns with no reply in time")
    max_underrun_rate: float | None = Field(
        None, ge=0, le=1, description="silent-gap time inside replies / reply time"
    )
    min_samples: int = Field(1, ge=0, description="a level with fewer voice-to-voice samples fails")
    min_concurrency: int | None = Field(
        None, ge=1, description="the run passes when at least this many concurrent calls meet the SLO; "
        "left out: every tested level must"
    )


def load_slo(path: str | Path | None) -> SLO:
    """The SLO in `path` (None: the defaults, which check only dropped/failed calls)."""
    if path is None:
        return SLO()
    p = Path(path)
    try:
        return SLO.model_validate(read_yaml(p))
    except ValidationError as exc:
        raise ScenarioError(_one_line(exc, p)) from None


@dataclass
class LevelVerdict:
    concurrency: int
    ok: bool
    failures: list[str] = field(default_factory=list)


def check_level(slo: SLO, level: dict[str, Any]) -> LevelVerdict:
    """Check one level's summary (report.summarize_level) against the SLO."""
    fails: list[str] = []
    v2v = level["voice_to_voice_ms"]
    barge = level["barge_in_ms"]

    def over(name: str, value: float | None, limit: float | None, unit: str = " ms") -> None:
        if limit is not None and value is not None and value > limit:
            fails.append(f"{name} {value:.0f}{unit} > {limit:.0f}{unit}")

    if v2v["n"] < slo.min_samples:
        fails.append(f"only {v2v['n']} voice-to-voice samples (< {slo.min_samples})")
    over("voice-to-voice p95", v2v.get("p95"), slo.voice_to_voice_p95_ms)
    over("voice-to-voice p99", v2v.get("p99"), slo.voice_to_voice_p99_ms)
    if slo.barge_in_p95_ms is not None and barge["n"] == 0 and level.get("barge_ins_expected", 0):
        fails.append("no barge-in was measured")
    over("barge-in p95", barge.get("p95"), slo.barge_in_p95_ms)
    if level["dropped_calls"] > slo.max_dropped_calls:
        fails.append(f"{level['dropped_calls']} dropped calls > {slo.max_dropped_calls}")
    if level["failed_calls"] > slo.max_failed_calls:
        fails.append(f"{level['failed_calls']} failed calls > {slo.max_failed_calls}")
    if level["unanswered_rate"] > slo.max_unanswered_rate:
        fails.append(f"unanswered turns {level['unanswered_rate']:.1%} > {slo.max_unanswered_rate:.1%}")
    if slo.max_underrun_rate is not None and level["underrun_rate"] > slo.max_underrun_rate:
        fails.append(f"underrun rate {level['underrun_rate']:.2%} > {slo.max_underrun_rate:.2%}")
    return LevelVerdict(level["concurrency"], not fails, fails)


@dataclass
class Verdict:
    ok: bool
    max_concurrency_at_slo: int  # 0 when even the lowest level fails
    levels: list[LevelVerdict]
    line: str


def verdict(slo: SLO, levels: list[dict[str, Any]]) -> Verdict:
    """Per-level checks, the highest concurrency up to which every level passes, and the run verdict."""
    checks = [check_level(slo, lv) for lv in sorted(levels, key=lambda x: x["concurrency"])]
    return rank(checks, slo.min_concurrency, "calls")


def rank(checks: list[LevelVerdict], min_concurrency: int | None, unit: str) -> Verdict:
    """The run verdict from per-level checks (ascending concurrency): the highest level up to which
    every level passes must reach `min_concurrency` (None: the highest level tested). `unit` names
    what runs concurrently ("calls", "TTS streams")."""
    best = 0
    for c in checks:
        if not c.ok:
            break
        best = c.concurrency
    tested = max((c.concurrency for c in checks), default=0)
    need = min_concurrency if min_concurrency is not None else tested
    ok = bool(checks) and best >= need
    first_fail = next((c for c in checks if not c.ok), None)
    why = f"; at {first_fail.concurrency} {unit.split()[-1]}: {', '.join(first_fail.failures)}" if first_fail else ""
    line = (
        f"SLO {'HOLDS' if ok else 'VIOLATED'}: max concurrent {unit} at SLO = {best} "
        f"(required {need}, tested up to {tested}){why}"
    )
    return Verdict(ok, best, checks, line)
