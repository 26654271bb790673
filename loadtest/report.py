"""Per-level statistics, the report.json document, and the text summary printed at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.monitor import counter, histogram_quantiles
from loadtest.runner import RunResult
from loadtest.scenario import Scenario
from loadtest.slo import SLO, Verdict, verdict


def stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    a = np.asarray(values, dtype=float)
    return {
        "n": len(a), **{f"p{q}": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)},
        "mean": round(float(a.mean()), 1), "max": round(float(a.max()), 1),
    }


def summarize_level(k: int, lv: dict[str, Any], res: RunResult) -> dict[str, Any]:
    samples = [s for s in res.samples if s["level"] == k]
    calls = [c for c in res.calls if c["level"] == k]
    replies = [s for s in samples if s["reply_ms"] is not None]
    reply_ms = sum(s["reply_ms"] for s in replies)
    gap_ms = sum(s["gap_ms"] for s in replies)
    before, after = lv.get("metrics_before"), lv.get("metrics_after")
    stages = histogram_quantiles(before, after, "agent_turn_stage_latency_seconds", "stage")
    server_v2v = histogram_quantiles(before, after, "agent_voice_to_voice_seconds").get("")
    rss = [r["rss_mb"] for r in res.resources if r.get("level") == k]
    cpu = [r["cpu_pct"] for r in res.resources if r.get("level") == k]
    return {
        "concurrency": lv["concurrency"], "start_s": lv["start"], "end_s": lv["end"],
        "calls": len(calls), "ok_calls": sum(c["status"] == "ok" for c in calls),
        "failed_calls": sum(c["status"] == "failed" for c in calls),
        "dropped_calls": sum(c["status"] in ("dropped", "timeout") for c in calls),
        "turns": len(samples),
        "voice_to_voice_ms": stats([s["voice_to_voice_ms"] for s in replies]),
        "barge_in_ms": stats([s["barge_in_ms"] for s in samples if s["barge_in_ms"] is not None]),
        "barge_ins_expected": sum(1 for s in samples if s["barge_in"]),
        "unanswered_rate": round(sum(s["voice_to_voice_ms"] is None for s in samples) / max(len(samples), 1), 4),
        "gaps": sum(s["gaps"] for s in replies),
        "underrun_rate": round(gap_ms / reply_ms, 5) if reply_ms else 0.0,
        "server_starved_rate": _starved_rate(before, after),
        "server_stage_ms": stages,
        "server_voice_to_voice_ms": server_v2v,
        "server_barge_ins": int(counter(after, "agent_barge_ins_total") - counter(before, "agent_barge_ins_total")),
        "server_cpu_pct": stats(cpu), "server_rss_mb": stats(rss),
    }


def build(
    scenario: Scenario, slo: SLO, res: RunResult, *, target: str, url: str, mode: str
) -> tuple[dict[str, Any], Verdict]:
    levels = [summarize_level(k, lv, res) for k, lv in enumerate(res.levels)]
    v = verdict(slo, levels)
    for lv, chk in zip(levels, v.levels, strict=True):
        lv["slo_ok"], lv["slo_failures"] = chk.ok, chk.failures
    rss = [r["rss_mb"] for r in res.resources if r["t"] >= 0]  # after the warm-up calls
    doc = {
        "schema": "agent-runtime-loadtest/1",
        "target": target, "url": url, "mode": mode,
        "scenario": scenario.model_dump(mode="json"), "slo": slo.model_dump(mode="json"),
        "verdict": {"ok": v.ok, "max_concurrency_at_slo": v.max_concurrency_at_slo, "line": v.line},
        "stopped_early": res.stopped_early,
        "levels": levels,
        "rss_growth_mb": round(rss[-1] - rss[0], 1) if len(rss) > 1 else None,
        "calls": res.calls, "samples": res.samples, "resources": res.resources, "warmup": res.warmup,
    }
    return doc, v


def text_summary(doc: dict[str, Any]) -> str:
    lines = [f"{doc['target']} ({doc['mode']}) at {doc['url']}: scenario {doc['scenario']['name']!r}"]
    lines.append(f"{'calls':>6} {'conc':>5} {'v2v p50':>8} {'p95':>6} {'p99':>6} {'server':>7} {'barge p95':>10} "
                 f"{'fail':>5} {'drop':>5} {'underrun':>9} {'rss MB':>7}  SLO")
    for lv in doc["levels"]:
        v, b = lv["voice_to_voice_ms"], lv["barge_in_ms"]

        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.0f}"

        lines.append(
            f"{lv['calls']:>6} {lv['concurrency']:>5} {f(v['p50']):>8} {f(v['p95']):>6} {f(v['p99']):>6} "
            f"{f(_server_p50_ms(lv)):>7} {f(b['p95']):>10} {lv['failed_calls']:>5} {lv['dropped_calls']:>5} {lv['underrun_rate']:>9.2%} "
            f"{f(lv['server_rss_mb']['max']):>7}  {'ok' if lv['slo_ok'] else 'FAIL'}"
        )
    lines.append("v2v = at the caller: its last audible sound -> the first audible agent audio it received; "
                 "server = the server's own p50 (its end of speech -> first audio sent)")
    starved = [lv.get("server_starved_rate") for lv in doc["levels"]]
    if any(r is not None for r in starved):
        lines.append("underrun = silences > underrun_min_ms inside replies at the caller (pauses in the audio "
                     "included); the server's own starvation (TTS behind playout) per level: "
                     + ", ".join("-" if r is None else f"{r:.2%}" for r in starved))
    if doc.get("rss_growth_mb") is not None:
        lines.append(f"server RSS growth over the run (after warm-up): {doc['rss_growth_mb']:+.1f} MB")
    if doc["stopped_early"]:
        lines.append(f"stopped early: {doc['stopped_early']}")
    return "\n".join(lines)


def _starved_rate(before: dict | None, after: dict | None) -> float | None:
    """The server's own share of reply time the caller heard as starvation (TTS behind playout), from
    its /metrics counters; None where the server does not export them (e.g. Pipecat). The client's
    `underrun_rate` also counts silences inside the audio itself (pauses between sentences)."""
    if not after or ("agent_playout_seconds_total", ()) not in after:
        return None
    played = counter(after, "agent_playout_seconds_total") - counter(before, "agent_playout_seconds_total")
    starved = counter(after, "agent_playout_starved_seconds_total") - counter(before, "agent_playout_starved_seconds_total")
    return round(starved / played, 5) if played > 0 else 0.0


def _server_p50_ms(level: dict[str, Any]) -> float | None:
    """The server's voice-to-voice p50 for a level (from its Prometheus histogram), ms."""
    return (level.get("server_voice_to_voice_ms") or {}).get("p50")


def write_json(doc: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    path.write_text(json.dumps(doc, indent=1, default=str))
    return path
