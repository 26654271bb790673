"""Per-level statistics of a TTS load test, report.json, report.html and the text summary."""

from __future__ import annotations

import html
from collections import Counter
from typing import Any

from loadtest.html import CSS, line_chart
from loadtest.monitor import counter, histogram_quantiles
from loadtest.report import stats
from loadtest.tts.spec import TTSSLO, Verdict, verdict


def _stats(values: list[float], digits: int = 1) -> dict[str, Any]:
    s = stats(values)
    if digits != 1 and values:  # RTF: keep the decimals that matter
        import numpy as np

        a = np.asarray(values, dtype=float)
        s.update({f"p{q}": round(float(np.percentile(a, q)), digits) for q in (50, 95, 99)})
        s.update(mean=round(float(a.mean()), digits), max=round(float(a.max()), digits))
    return s


def summarize_level(k: int, lv: dict[str, Any], replies: list[dict[str, Any]],
                    endpoint: str = "stream") -> dict[str, Any]:
    """Level `k`'s figures; `endpoint`: the server metrics' label of the protocol driven (stream or
    session: tts-serve's own WebSocket or sglang-omni's session)."""
    mine = [r for r in replies if r["level"] == k]
    ok = [r for r in mine if r["status"] == "ok"]
    errors = Counter(r["error_code"] for r in mine if r["status"] != "ok")
    audio_ms = sum(r["audio_s"] for r in ok) * 1000
    dry_ms = sum(r["underrun_ms"] for r in ok)
    before, after = lv.get("metrics_before"), lv.get("metrics_after")
    return {
        "concurrency": lv["concurrency"], "start_s": lv["start"], "end_s": lv["end"],
        "replies": len(mine), "ok_replies": len(ok), "errors": sum(errors.values()),
        "errors_by_code": dict(sorted(errors.items())),
        "first_audio_ms": _stats([r["first_audio_ms"] for r in ok]),
        "rtf": _stats([r["rtf"] for r in ok], digits=3),
        "underruns": sum(r["underruns"] for r in ok),
        "underrun_ms": round(dry_ms, 1),
        "underrun_rate": round(dry_ms / audio_ms, 5) if audio_ms else 0.0,
        "underrun_replies_rate": round(sum(r["underruns"] > 0 for r in ok) / len(ok), 4) if ok else 0.0,
        "audio_s": round(audio_ms / 1000, 2),
        "server_first_audio_ms": histogram_quantiles(before, after, "tts_time_to_first_audio_seconds",
                                                     "endpoint").get(endpoint),
        "server_rejected_busy": int(counter(after, "tts_rejected_total", reason="busy")
                                    - counter(before, "tts_rejected_total", reason="busy")),
    }


def build(scenario: dict[str, Any], slo: TTSSLO, levels_raw: list[dict[str, Any]], replies: list[dict[str, Any]],
          *, url: str, info: dict[str, Any] | None, stopped_early: str | None,
          warmup: list[dict[str, Any]]) -> tuple[dict[str, Any], Verdict]:
    endpoint = "session" if scenario.get("protocol") == "sglang-omni" else "stream"
    levels = [summarize_level(k, lv, replies, endpoint) for k, lv in enumerate(levels_raw)]
    v = verdict(slo, levels)
    for lv, chk in zip(levels, v.levels, strict=True):
        lv["slo_ok"], lv["slo_failures"] = chk.ok, chk.failures
    doc = {
        "schema": "agent-runtime-loadtest-tts/1",
        "target": "agent-runtime tts-serve" if endpoint == "stream" else "sglang-omni speech sessions", "url": url, "mode": "tts", "server_info": info,
        "scenario": scenario, "slo": slo.model_dump(mode="json"),
        "verdict": {"ok": v.ok, "max_concurrency_at_slo": v.max_concurrency_at_slo, "line": v.line},
        "stopped_early": stopped_early, "levels": levels, "replies": replies, "warmup": warmup,
    }
    return doc, v


def _f(x: Any, fmt: str = ".0f") -> str:
    return "-" if x is None else format(x, fmt)


def text_summary(doc: dict[str, Any]) -> str:
    lines = [f"{doc['target']} at {doc['url']}: scenario {doc['scenario']['name']!r}"]
    lines.append(f"{'streams':>7} {'replies':>7} {'1st audio p50':>13} {'p95':>6} {'p99':>6} {'RTF p50':>8} "
                 f"{'p95':>6} {'p99':>6} {'underruns':>9} {'dry':>7} {'errors':>7}  SLO")
    for lv in doc["levels"]:
        fa, r = lv["first_audio_ms"], lv["rtf"]
        errs = ",".join(f"{k}:{v}" for k, v in lv["errors_by_code"].items()) or "0"
        lines.append(
            f"{lv['concurrency']:>7} {lv['replies']:>7} {_f(fa['p50']):>13} {_f(fa['p95']):>6} {_f(fa['p99']):>6} "
            f"{_f(r['p50'], '.2f'):>8} {_f(r['p95'], '.2f'):>6} {_f(r['p99'], '.2f'):>6} {lv['underruns']:>9} "
            f"{lv['underrun_rate']:>7.2%} {errs:>7}  {'ok' if lv['slo_ok'] else 'FAIL'}"
        )
    if doc["stopped_early"]:
        lines.append(f"stopped early: {doc['stopped_early']}")
    return "\n".join(lines)


def render_html(doc: dict[str, Any]) -> str:
    levels, replies = doc["levels"], doc["replies"]
    slo = doc["slo"]

    def cdf(vals: list[float]) -> list[tuple[float, float]]:
        v = sorted(vals)
        return [(x, (i + 1) / len(v)) for i, x in enumerate(v)]

    by_level = [(f"{lv['concurrency']} streams", cdf([r["first_audio_ms"] for r in replies
                                                      if r["level"] == k and r["status"] == "ok"]))
                for k, lv in enumerate(levels)]
    fa = [(f"first audio p{q}", [(lv["concurrency"], lv["first_audio_ms"][f"p{q}"]) for lv in levels
                                 if lv["first_audio_ms"][f"p{q}"] is not None]) for q in (50, 95, 99)]
    rtf = [(f"RTF p{q}", [(lv["concurrency"], lv["rtf"][f"p{q}"]) for lv in levels
                          if lv["rtf"][f"p{q}"] is not None]) for q in (50, 95, 99)]
    head = ("<tr><th>streams</th><th>replies</th><th>first audio p50</th><th>p95</th><th>p99</th>"
            "<th>server first audio p95</th><th>RTF p50</th><th>p95</th><th>p99</th><th>underruns</th>"
            "<th>dry time</th><th>errors</th><th>SLO</th></tr>")
    rows = []
    for lv in levels:
        f, r = lv["first_audio_ms"], lv["rtf"]
        server = (lv.get("server_first_audio_ms") or {}).get("p95")
        errs = ", ".join(f"{k} {v}" for k, v in lv["errors_by_code"].items()) or "0"
        verdict_cell = "ok" if lv["slo_ok"] else "FAIL: " + "; ".join(lv["slo_failures"])
        rows.append(
            f"<tr><td>{lv['concurrency']}</td><td>{lv['replies']}</td><td>{_f(f['p50'])}</td><td>{_f(f['p95'])}</td>"
            f"<td>{_f(f['p99'])}</td><td>{_f(server)}</td><td>{_f(r['p50'], '.2f')}</td><td>{_f(r['p95'], '.2f')}</td>"
            f"<td>{_f(r['p99'], '.2f')}</td><td>{lv['underruns']}</td><td>{lv['underrun_rate']:.2%}</td>"
            f"<td>{html.escape(errs)}</td><td class='{'ok' if lv['slo_ok'] else 'bad'}'>{html.escape(verdict_cell)}</td></tr>"
        )
    v = doc["verdict"]
    body = [
        f"<h1>TTS load test: {html.escape(doc['scenario']['name'])}</h1>",
        f"<p>{html.escape(doc['target'])} at {html.escape(doc['url'])}</p>",
        f"<p class='{'ok' if v['ok'] else 'bad'}'><b>{html.escape(v['line'])}</b></p>",
        "<div class='row'>",
        line_chart(by_level, "Time to first audio CDF per concurrency", "ms (client side)", "fraction",
                   step=True, y_max=1.0, vline=slo.get("first_audio_p95_ms")),
        line_chart(fa, "First audio vs concurrency", "concurrent streams", "ms", markers=True,
                   hline=slo.get("first_audio_p95_ms")),
        line_chart(rtf, "RTF vs concurrency", "concurrent streams", "RTF", markers=True, hline=slo.get("rtf_p95")),
        "</div>", f"<table>{head}{''.join(rows)}</table>",
        "<p><small>First audio: first text delta sent to first audio message received. RTF: first text "
        "sent to done received, over the seconds of audio received. Underruns: a player that starts at the "
        "first chunk and plays in real time ran dry before done. Every reply is in report.json.</small></p>",
    ]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>TTS load test report</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
