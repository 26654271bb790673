"""report.html: one self-contained page (inline CSS and SVG, no scripts or CDN) with the plots.

Per run: latency CDF per concurrency level, latency percentiles vs concurrency, server RSS and CPU
over time; then the level table. With a Pipecat run beside it, a comparison table with the ratios.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"]
W, H, PAD_L, PAD_B, PAD_T, PAD_R = 560, 300, 56, 40, 24, 16


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** np.floor(np.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * mag:
            return float(m * mag)
    return float(10 * mag)


def line_chart(series: list[tuple[str, list[tuple[float, float]]]], title: str, xlabel: str, ylabel: str,
               *, step: bool = False, y_max: float | None = None, markers: bool = False,
               hline: float | None = None, vline: float | None = None) -> str:
    """An SVG line chart; `series` is [(label, [(x, y), ...])]; `hline`/`vline` draw an SLO limit."""
    pts = [p for _, s in series for p in s]
    if not pts:
        return f'<div class="empty">{html.escape(title)}: no data</div>'
    x0 = min(0.0, min(x for x, _ in pts))
    x1 = _nice_max(max([x for x, _ in pts] + [vline or 0])) if max(x for x, _ in pts) > 0 else 1.0
    y1 = y_max or _nice_max(max([y for _, y in pts] + [hline or 0]))
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def sx(x: float) -> float:
        return PAD_L + (x - x0) / max(x1 - x0, 1e-9) * pw

    def sy(y: float) -> float:
        return PAD_T + ph - y / y1 * ph

    out = [f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img"><title>{html.escape(title)}</title>',
           f'<text x="{W / 2}" y="15" class="t">{html.escape(title)}</text>']
    for i in range(6):
        y = y1 * i / 5
        x = x0 + (x1 - x0) * i / 5
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" class="g"/>')
        out.append(f'<text x="{PAD_L - 6}" y="{sy(y) + 4:.1f}" class="yl">{y:g}</text>')
        out.append(f'<text x="{sx(x):.1f}" y="{H - PAD_B + 16}" class="xl">{x:g}</text>')
    out.append(f'<text x="{W / 2}" y="{H - 4}" class="xl">{html.escape(xlabel)}</text>')
    out.append(f'<text x="12" y="{PAD_T + ph / 2}" class="yl" transform="rotate(-90 12 {PAD_T + ph / 2})">'
               f'{html.escape(ylabel)}</text>')
    if hline is not None:
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{sy(hline):.1f}" y2="{sy(hline):.1f}" class="slo"/>'
                   f'<text x="{PAD_L + 4}" y="{sy(hline) - 4:.1f}" class="sl">SLO {hline:g}</text>')
    if vline is not None:
        out.append(f'<line x1="{sx(vline):.1f}" x2="{sx(vline):.1f}" y1="{PAD_T}" y2="{PAD_T + ph}" class="slo"/>'
                   f'<text x="{sx(vline) + 4:.1f}" y="{PAD_T + ph - 6}" class="sl">SLO p95 {vline:g}</text>')
    for k, (label, s) in enumerate(series):
        if not s:
            continue
        color = COLORS[k % len(COLORS)]
        coords: list[str] = []
        for j, (x, y) in enumerate(s):
            if step and j:
                coords.append(f"{sx(x):.1f},{sy(s[j - 1][1]):.1f}")
            coords.append(f"{sx(x):.1f},{sy(min(y, y1)):.1f}")
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(coords)}"/>')
        if markers:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(min(y, y1)):.1f}" r="3" fill="{color}"/>' for x, y in s]
        out.append(f'<text x="{W - PAD_R - 4}" y="{PAD_T + 14 + 14 * k}" class="lg" fill="{color}">'
                   f'{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _cdf(values: list[float]) -> list[tuple[float, float]]:
    v = sorted(values)
    return [(x, (i + 1) / len(v)) for i, x in enumerate(v)]


def run_section(run: dict[str, Any]) -> str:
    levels = run["levels"]
    limit = run["slo"].get("voice_to_voice_p95_ms")
    samples = run["samples"]
    by_level = [
        (f"{lv['concurrency']} calls", _cdf([s["voice_to_voice_ms"] for s in samples
                                              if s["level"] == k and s["voice_to_voice_ms"] is not None]))
        for k, lv in enumerate(levels)
    ]
    pct = [(f"p{q}", [(lv["concurrency"], lv["voice_to_voice_ms"][f"p{q}"]) for lv in levels
                      if lv["voice_to_voice_ms"][f"p{q}"] is not None]) for q in (50, 95, 99)]
    barge = [("barge-in p95", [(lv["concurrency"], lv["barge_in_ms"]["p95"]) for lv in levels
                               if lv["barge_in_ms"]["p95"] is not None])]
    res = run["resources"]
    rss = [("RSS MB", [(r["t"], r["rss_mb"]) for r in res])]
    cpu = [("CPU %", [(r["t"], r["cpu_pct"]) for r in res]), ("active calls x10", [(r["t"], 10 * r.get("active_calls", 0)) for r in res])]
    v = run["verdict"]
    parts = [
        f'<h2>{html.escape(run["target"])} <small>({html.escape(run["mode"])}, {html.escape(run["url"])})</small></h2>',
        f'<p class="{"ok" if v["ok"] else "bad"}">{html.escape(v["line"])}</p>',
        '<div class="row">',
        line_chart(by_level, "Voice-to-voice latency CDF per concurrency", "ms (caller side)", "fraction",
                   step=True, y_max=1.0, vline=limit),
        line_chart(pct + barge, "Latency vs concurrency", "concurrent calls", "ms", markers=True, hline=limit),
        line_chart(rss, "Server RSS over time", "seconds", "MB"),
        line_chart(cpu, "Server CPU over time", "seconds", "% of one core"),
        "</div>", level_table(levels),
    ]
    if run.get("rss_growth_mb") is not None:
        parts.append(f"<p>Server RSS growth over the run: {run['rss_growth_mb']:+.1f} MB.</p>")
    return "\n".join(parts)


def _f(x: Any) -> str:
    return "–" if x is None else (f"{x:.0f}" if isinstance(x, float) else html.escape(str(x)))


def level_table(levels: list[dict[str, Any]]) -> str:
    head = ("<tr><th>concurrency</th><th>calls</th><th>turns</th><th>v2v p50</th><th>p95</th><th>p99</th>"
            "<th>barge-in p95</th><th>failed</th><th>dropped</th><th>underrun</th><th>server stages p95 (ms)</th>"
            "<th>CPU p50 %</th><th>RSS max MB</th><th>SLO</th></tr>")
    rows = []
    for lv in levels:
        v = lv["voice_to_voice_ms"]
        stages = ", ".join(f"{k} {_f(s.get('p95'))}" for k, s in lv["server_stage_ms"].items()) or "–"
        slo = "ok" if lv["slo_ok"] else "FAIL: " + "; ".join(lv["slo_failures"])
        rows.append(
            f"<tr><td>{lv['concurrency']}</td><td>{lv['calls']}</td><td>{lv['turns']}</td><td>{_f(v['p50'])}</td>"
            f"<td>{_f(v['p95'])}</td><td>{_f(v['p99'])}</td><td>{_f(lv['barge_in_ms']['p95'])}</td>"
            f"<td>{lv['failed_calls']}</td><td>{lv['dropped_calls']}</td><td>{lv['underrun_rate']:.2%}{_starved(lv)}</td>"
            f"<td class='small'>{html.escape(stages)}</td><td>{_f(lv['server_cpu_pct']['p50'])}</td>"
            f"<td>{_f(lv['server_rss_mb']['max'])}</td><td class='{'ok' if lv['slo_ok'] else 'bad'}'>{html.escape(slo)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def comparison_table(cmp: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{r['concurrency']}</td><td>{_f(r['runtime_p50'])}</td><td>{_f(r['pipecat_p50'])}</td>"
        f"<td>{_f(r['runtime_p95'])}</td><td>{_f(r['pipecat_p95'])}</td><td><b>{r['ratio_p95'] or '–'}</b></td>"
        f"<td>{_f(r.get('runtime_barge_in_p95'))}</td><td>{_f(r.get('pipecat_barge_in_p95'))}</td>"
        f"<td><b>{r.get('ratio_barge_in_p95') or '–'}</b></td></tr>"
        for r in cmp["levels"]
    )
    return ("<h2>agent-runtime vs Pipecat (same engines, same machine, same run)</h2>"
            f"<p>{html.escape(cmp['line'])}</p><table><tr><th>concurrency</th><th>runtime p50</th><th>pipecat p50</th>"
            f"<th>runtime p95</th><th>pipecat p95</th><th>pipecat/runtime p95</th><th>runtime barge-in p95</th>"
            f"<th>pipecat barge-in p95</th><th>pipecat/runtime barge-in</th></tr>{rows}</table>")


CSS = """body{font:14px system-ui,sans-serif;margin:24px;color:#111}h1{font-size:20px}h2{font-size:17px;margin-top:28px}
.row{display:flex;flex-wrap:wrap;gap:12px}svg{border:1px solid #ddd;background:#fff}
.t{font-size:13px;text-anchor:middle;font-weight:600}.xl{font-size:11px;text-anchor:middle;fill:#444}
.yl{font-size:11px;text-anchor:end;fill:#444}.lg{font-size:12px;text-anchor:end}.g{stroke:#eee}
table{border-collapse:collapse;margin-top:12px}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
.slo{stroke:#b91c1c;stroke-dasharray:5 4}.sl{font-size:11px;fill:#b91c1c}
.small{font-size:11px;text-align:left;max-width:320px}.ok{color:#15803d}.bad{color:#b91c1c}small{color:#555}"""


def render(doc: dict[str, Any]) -> str:
    runs = doc["runs"]
    body = [f"<h1>Load test: {html.escape(runs[0]['scenario']['name'])}</h1>",
            f"<p><b>{html.escape(doc['verdict']['line'])}</b></p>"]
    if doc.get("comparison"):
        body.append(comparison_table(doc["comparison"]))
    body += [run_section(r) for r in runs]
    body.append("<p><small>Latencies are measured at the simulated caller: voice-to-voice is the end of the "
                "caller's speech to the first audible agent frame received; barge-in is the onset of speech "
                "over the agent to the last agent frame received. Every sample is in report.json.</small></p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Load test report</title><style>{CSS}</style>"
            f"</head><body>{''.join(body)}</body></html>")


def write_html(doc: dict[str, Any], out: Path) -> Path:
    path = out / "report.html"
    path.write_text(render(doc))
    return path


def _starved(level: dict) -> str:
    """The server's own starvation share next to the client's underrun rate, where it is exported."""
    rate = level.get("server_starved_rate")
    return "" if rate is None else f" (server {rate:.2%})"
