"""The campaign's checks, its table and its JSON: exit 0 only if every check holds."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

SCHEMA = "agent-runtime-chaos/1"

EXPECT: dict[str, str] = {
    "squatters": "unauthenticated /twilio sockets that send nothing: refused (401/403/429/503) or closed by the "
                 "server within server.setup_timeout_s (+margin); they never take a legit caller's slot",
    "silent_twilio": "phone stream with the token, `start`, then no media: hung up within server.media_timeout_s (+margin)",
    "silent_webrtc": "offer whose peer never connects: answered 200 (or 429) and its slot freed after "
                     "server.setup_timeout_s; connected peer sending no RTP: hung up within server.media_timeout_s (+margin)",
    "malformed_twilio": "wrong shapes (non-JSON, binary, mediaFormat list, mark/media as strings, deep nesting...): "
                        "the socket is closed with 1007",
    "hostile_http": "no token 401; not JSON, bad SDP, JSON deeper than server.max_json_depth 400; body over "
                    "server.max_body_bytes 413; a Host header that is not the server's 400/403/421",
    "slowloris": "request headers sent one byte at a time: connection closed within server.header_timeout_s (+margin)",
    "killed_callers": "a caller that drops its connection mid-reply (phone: TCP shut, no stop; WebRTC: peer closed): "
                      "the reply was under way; the call ends and its slot comes back (see slot recovery)",
}


def _attack_rows(probes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, expect in EXPECT.items():
        mine = [p for p in probes if p["attack"] == name]
        cases: dict[str, dict[str, Any]] = defaultdict(lambda: {"n": 0, "ok": 0, "outcomes": []})
        for p in mine:
            c = cases[p["case"]]
            c["n"] += 1
            c["ok"] += p["ok"]
            if p["outcome"] not in c["outcomes"] and len(c["outcomes"]) < 4:
                c["outcomes"].append(p["outcome"])
        failed = [p for p in mine if not p["ok"]]
        out[name] = {"expect": expect, "executed": len(mine), "passed": len(mine) - len(failed),
                     "failed": len(failed), "ok": bool(mine) and not failed, "cases": dict(cases),
                     "failures": [f"{p['case']}: {p['outcome']} {p['detail']}".strip() for p in failed[:8]]}
    return out


def _llm_row(llm: dict[str, Any], inter_token_s: float, patience_s: float, max_reply: int) -> dict[str, Any]:
    reqs = llm["requests"]
    counts = llm["counts"]
    problems = [f"no '{b}' request was made" for b, n in counts.items() if n == 0]
    stalls = [r for r in reqs if r["behaviour"] == "stall"]
    slow = [r for r in stalls if not r["client_left"] or (r["left_after_s"] or 0) >= patience_s]
    if slow:
        problems.append(f"{len(slow)}/{len(stalls)} stalled stream(s) not cut by the runtime within {patience_s:g} s "
                        f"(llm.inter_token_timeout_s {inter_token_s:g})")
    longs = [r for r in reqs if r["behaviour"] == "long"]
    slack = 1_000  # what was in flight when the runtime closed the stream
    runaway = [r for r in longs if not r["client_left"] or r["chars_sent"] > max_reply + slack]
    if runaway:
        problems.append(f"{len(runaway)}/{len(longs)} {llm['long_chars']}-character reply(ies) read to the end "
                        f"or past llm.max_reply_chars ({max_reply}) + {slack}: the stream should be closed there")
    cut = [r["left_after_s"] for r in stalls if r["client_left"] and r["left_after_s"] is not None]
    return {
        "expect": f"stall: stream closed by the runtime ~llm.inter_token_timeout_s ({inter_token_s:g} s) after the last "
                  f"token (before the caller's {patience_s:g} s patience), stall_line spoken; long: stream closed at "
                  "llm.max_reply_chars; garbage SSE / dropped connection: the call goes on (fallback line), no traceback",
        "counts": counts, "ok": not problems, "problems": problems,
        "stall_cut_after_s": sorted(cut), "long_chars_read": [r["chars_sent"] for r in longs],
    }


def _signed(mb: float | None) -> str:
    return "?" if mb is None else f"{mb:+.1f}"


def build(raw: dict[str, Any], plan: Any, mode: str) -> dict[str, Any]:
    """The report document, with `checks` and `verdict`."""
    cfg = raw["config"]
    attacks = _attack_rows(raw["probes"])
    llm = _llm_row(raw["llm"], cfg["llm"]["inter_token_timeout_s"], plan.legit.quiet_s, cfg["llm"]["max_reply_chars"])
    lg = raw["legit"]
    rss = raw["rss_mb"]
    growth = None if rss["before"] is None or rss["after"] is None else round(rss["after"] - rss["before"], 1)
    series = rss.get("samples") or []
    mid = series[len(series) // 2][1] if series else None  # levelling off vs still climbing
    late = None if mid is None or rss["after"] is None else round(rss["after"] - mid, 1)
    b = plan.bounds
    rec = raw["recovery"]
    h = raw["health"]
    checks = {
        "no_legit_call_lost": {"ok": lg["attempted"] > 0 and lg["lost"] == 0,
                               "detail": f"{lg['completed']}/{lg['attempted']} completed, {lg['lost']} lost "
                                         f"{lg['lost_by_status'] or ''}".strip()},
        "slots_recovered": {"ok": rec["recovered"],
                            "detail": f"after {rec['waited_s']} s: sessions={rec['last']['sessions']} "
                                      f"pending={rec['last']['pending'] if rec['last']['pending'] is not None else rec['last']['pending_metric']}"},
        "server_stayed_up": {"ok": h["alive"] and h["failed"] == 0,
                             "detail": f"/healthz {h['ok']} ok, {h['failed']} failed; process "
                                       f"{'alive' if h['alive'] else 'EXITED'}"},
        "no_tracebacks": {"ok": not raw["tracebacks"], "detail": f"{len(raw['tracebacks'])} in {raw['stderr']}"},
        "rss_growth_bounded": {
            "ok": growth is not None and growth <= b.max_rss_growth_mb
            and late is not None and late <= b.max_rss_late_growth_mb,
            "detail": f"{rss['before']} -> {rss['after']} MB: {_signed(growth)} MB (bound {b.max_rss_growth_mb:g}); "
                      f"second half {mid} -> {rss['after']} MB: {_signed(late)} MB (bound {b.max_rss_late_growth_mb:g})"},
        "attacks_as_expected": {"ok": all(a["ok"] for a in attacks.values()),
                                "detail": ", ".join(f"{k} {a['passed']}/{a['executed']}" for k, a in attacks.items())},
        "llm_faults_handled": {"ok": llm["ok"], "detail": "; ".join(llm["problems"]) or
                               ", ".join(f"{k} {v}" for k, v in llm["counts"].items())},
        "harness_ok": {"ok": not raw["harness_errors"] and not raw["stopped_early"],
                       "detail": "; ".join(raw["harness_errors"]) or raw["stopped_early"] or "all tasks ended by themselves"},
    }
    ok = all(c["ok"] for c in checks.values())
    failed = [k for k, c in checks.items() if not c["ok"]]
    line = ("CHAOS: SERVER HELD" if ok else "CHAOS: FAILED (" + ", ".join(failed) + ")")
    return {"schema": SCHEMA, "name": plan.name, "mode": mode, "url": raw["url"], "duration_s": plan.duration_s,
            "ran_s": raw["ran_s"], "verdict": {"ok": ok, "line": line, "failed": failed}, "checks": checks,
            "legit": lg, "attacks": attacks, "llm": {**llm, "requests": raw["llm"]["requests"]},
            "recovery": rec, "health": h, "rss_mb": {**rss, "growth": growth, "mid": mid},
            "tracebacks": raw["tracebacks"], "stderr": raw["stderr"], "probes": raw["probes"],
            "server_counters": raw.get("server_counters", {}),
            "server_config": cfg}


def table(doc: dict[str, Any]) -> str:
    """The summary printed at the end."""
    rows = [f"chaos campaign '{doc['name']}' ({doc['mode']}), {doc['ran_s']} s against {doc['url']}", ""]
    lg = doc["legit"]
    rows.append(f"legit calls: {lg['attempted']} attempted, {lg['completed']} completed, {lg['lost']} lost "
                f"{lg['lost_by_status'] or ''}".rstrip())
    rows.append("")
    rows.append(f"{'attack':<18} {'runs':>5} {'ok':>5} {'fail':>5}  outcomes")
    for name, a in doc["attacks"].items():
        outs = "; ".join(f"{case} {c['ok']}/{c['n']}" for case, c in a["cases"].items())
        rows.append(f"{name:<18} {a['executed']:>5} {a['passed']:>5} {a['failed']:>5}  {outs}"[:200])
        for f in a["failures"][:3]:
            rows.append(f"{'':<18}   ! {f}"[:200])
    llm = doc["llm"]
    rows.append(f"{'fault_llm':<18} {sum(llm['counts'].values()):>5} {'':>5} {len(llm['problems']):>5}  "
                + ", ".join(f"{k} {v}" for k, v in llm["counts"].items())
                + (f"; stalls cut after {llm['stall_cut_after_s']} s" if llm["stall_cut_after_s"] else ""))
    for p in llm["problems"]:
        rows.append(f"{'':<18}   ! {p}"[:200])
    for name, by in doc["server_counters"].items():
        rows.append(f"server {name}: " + ", ".join(f"{k} +{v:g}" for k, v in sorted(by.items())))
    rows.append("")
    for name, c in doc["checks"].items():
        rows.append(f"[{'ok' if c['ok'] else 'FAIL':>4}] {name:<22} {c['detail']}"[:220])
    for tb in doc["tracebacks"][:5]:
        rows.append(f"       traceback: {tb}"[:220])
    rows.append("")
    rows.append(doc["verdict"]["line"])
    return "\n".join(rows)


def write(doc: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "chaos.json"
    path.write_text(json.dumps(doc, indent=1))
    return path
