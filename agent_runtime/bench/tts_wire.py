"""`agent-runtime bench tts-wire`: what the speech service's wire adds to time to first audio.

For one engine config, in one run: the local synthesizer (in process, `create_synthesizer(...)` and
`open_stream`) against the `remote` one (`RemoteSynthesizer.from_options(urls=[url])`) talking to an
`agent-runtime tts-serve` subprocess on loopback that this bench starts with the same config. At each
concurrency level, rounds alternate which side goes first (local, remote, remote, local, ...) so machine
noise hits both. Each stream pushes a reply's text in small deltas at an LLM's pace and measures the
first text pushed -> the first chunk with audio. The server's own first-audio histogram
(`tts_time_to_first_audio_seconds{endpoint="stream"}` on /metrics, scraped around the remote rounds)
separates engine time under contention from the wire (client + WebSocket + JSON/base64 + loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

log = logging.getLogger("agent_runtime.bench.tts_wire")

TEXTS = [
    "Sure, we open at nine tomorrow morning and close at six.",
    "Yes, we deliver on weekends, before noon on Saturdays.",
    "Delivery is free over fifty dollars, otherwise it is five.",
    "Of course, you can return it within thirty days.",
]
SERVER_LINE = re.compile(r"stream \S+ stream: .*first audio (\d+) ms")
DEFAULT_CONFIG = {"tts": {"engine": "piper", "options": {"noise_scale": 0}}}
TARGET_MS = 10.0


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None}
    a = np.asarray(values, dtype=float)
    return {"n": len(a), "p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1)}


async def first_audio_ms(synth: Any, text: str, *, chars_per_s: float, delta_chars: int) -> float:
    """One reply: push `text` in deltas at `chars_per_s`, flush, read to the end; first text -> first audio."""
    stream = synth.open_stream()
    first: list[float] = []

    async def consume() -> None:
        async for chunk in stream:
            if not first and len(chunk.audio):
                first.append(time.monotonic())

    reader = asyncio.create_task(consume())
    t0 = time.monotonic()
    step = delta_chars / chars_per_s
    try:
        for i in range(0, len(text), delta_chars):
            await asyncio.sleep(max(0.0, t0 + (i // delta_chars) * step - time.monotonic()))
            stream.push_text(text[i:i + delta_chars])
        stream.flush()
        await asyncio.wait_for(reader, 120)
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(BaseException):
                await stream.cancel()
    if not first:
        raise RuntimeError("the stream ended without audio")
    return (first[0] - t0) * 1000


async def one_round(synth: Any, streams: int, offset: int, *, chars_per_s: float, delta_chars: int,
                    errors: list[str] | None = None) -> list[float]:
    """`streams` concurrent replies; their first-audio times (a failed stream goes to `errors`)."""
    got = await asyncio.gather(*(
        first_audio_ms(synth, TEXTS[(offset + i) % len(TEXTS)], chars_per_s=chars_per_s, delta_chars=delta_chars)
        for i in range(streams)
    ), return_exceptions=True)
    for g in got:
        if isinstance(g, BaseException):
            if errors is None or not isinstance(g, Exception):
                raise g
            errors.append(f"{type(g).__name__}: {g}"[:200])
    return [g for g in got if isinstance(g, float)]


def _config_file(path: Path | None, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """The config the server gets and the `tts:` section the local engine gets (the same)."""
    from agent_runtime.config import load_config

    if path is None:
        path = tmp / "tts-wire.yaml"
        path.write_text(yaml.safe_dump(DEFAULT_CONFIG))
    cfg = load_config(path)
    return path, {"engine": cfg.tts.engine, "options": dict(cfg.tts.options)}


async def run_tts_wire(levels: list[int], rounds: int, *, config: Path | None = None, chars_per_s: float = 60.0,
                       delta_chars: int = 4, server_timeout: float = 600.0) -> dict[str, Any]:
    from agent_runtime.tts.registry import create_synthesizer
    from agent_runtime.tts.remote.synthesizer import RemoteSynthesizer
    from loadtest.monitor import histogram_quantiles, scrape
    from loadtest.server import free_port, start

    tmp = tempfile.TemporaryDirectory()
    cfg_path, tts = _config_file(config, Path(tmp.name))
    log.info("loading the local %s engine", tts["engine"])
    local = await asyncio.to_thread(create_synthesizer, tts["engine"], tts["options"])
    await asyncio.to_thread(local.warmup)
    log.info("starting tts-serve on loopback with the same config")
    # As loadtest.server.start_tts_serve, with its log kept: each stream's line has the server's own
    # first-audio time in ms (the /metrics histogram is bucketed too coarsely to resolve the wire).
    server_log = Path(tmp.name) / "tts-serve.log"
    argv = [sys.executable, "-m", "agent_runtime.cli", "tts-serve", "--host", "127.0.0.1", "--port",
            str(free_port()), "--config", str(cfg_path), "--max-streams", str(max(max(levels), 1))]
    proc = await start("agent-runtime tts-serve", argv, "/readyz", server_timeout,
                       env={"AGENT_RUNTIME_TTS_TOKEN": ""}, stderr_path=server_log)
    log_pos = 0

    def server_first_audio() -> list[float]:
        nonlocal log_pos
        with server_log.open("rb") as f:
            f.seek(log_pos)
            data = f.read()
        end = data.rfind(b"\n") + 1
        log_pos += end
        return [float(m) for m in SERVER_LINE.findall(data[:end].decode(errors="replace"))]

    remote = None
    try:
        # Generous timeouts and no retries: a slow stream under contention is a figure, not a failover.
        remote = await asyncio.to_thread(RemoteSynthesizer.from_options, urls=[proc.url], retries=0,
                                         first_audio_timeout_s=600.0, read_timeout_s=600.0)
        sides = {"local": local, "remote": remote}
        kw = {"chars_per_s": chars_per_s, "delta_chars": delta_chars}
        for name, synth in sides.items():  # warm both paths (connections, first-call costs)
            await one_round(synth, 1, 0, **kw)
            log.debug("warmed %s", name)
        await asyncio.sleep(0.2)
        server_first_audio()  # skip the warm-up's line
        out: dict[str, Any] = {"engine": tts["engine"], "options": tts["options"], "url": proc.url,
                               "chars_per_s": chars_per_s, "delta_chars": delta_chars, "rounds": rounds,
                               "levels": {}}
        for n in levels:
            samples: dict[str, list[float]] = {"local": [], "remote": []}
            errors: dict[str, list[str]] = {"local": [], "remote": []}
            server: list[dict | None] = []
            server_ms: list[float] = []
            for r in range(rounds):
                order = ("local", "remote") if r % 2 == 0 else ("remote", "local")
                for name in order:
                    before = await scrape(proc.url) if name == "remote" else None
                    samples[name] += await one_round(sides[name], n, r * n, errors=errors[name], **kw)
                    if name == "remote":
                        await asyncio.sleep(0.2)  # the server logs a stream's line after its done
                        server_ms += server_first_audio()
                        server.append(histogram_quantiles(before, await scrape(proc.url),
                                                          "tts_time_to_first_audio_seconds", "endpoint").get("stream"))
                log.info("%d streams: round %d/%d done", n, r + 1, rounds)
            loc, rem, srv = _pct(samples["local"]), _pct(samples["remote"]), _pct(server_ms)
            out["levels"][str(n)] = {
                "streams": n, "local_ms": loc, "remote_ms": rem,
                "wire_p50_ms": round(rem["p50"] - loc["p50"], 1) if loc["p50"] is not None and rem["p50"] is not None else None,
                "server_first_audio_ms": srv,
                "wire_vs_server_p50_ms": round(rem["p50"] - srv["p50"], 1) if rem["p50"] is not None and srv["p50"] is not None else None,
                "server_histogram_first_audio_ms": _merge_server(server),
                "errors": {k: len(v) for k, v in errors.items()}, "error_messages": errors,
                "samples": {k: [round(x, 2) for x in v] for k, v in samples.items()},
            }
        return out
    finally:
        if remote is not None:
            with contextlib.suppress(Exception):
                await remote.aclose()
        await proc.stop()
        with contextlib.suppress(Exception):
            local.close()
        tmp.cleanup()


def _merge_server(per_round: list[dict | None]) -> dict[str, float | None]:
    """The server histogram's p50/p95 over the rounds (a count-weighted mean of each round's)."""
    rows = [r for r in per_round if r and r.get("n")]
    if not rows:
        return {"n": 0, "p50": None, "p95": None}
    total = sum(r["n"] for r in rows)
    return {"n": total, **{q: round(sum(r[q] * r["n"] for r in rows if r.get(q) is not None) / total, 1)
                           for q in ("p50", "p95")}}


def format_table(out: dict[str, Any], machine: str) -> str:
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    lines = [f"tts-wire: time to first audio, local in-process {out['engine']} vs remote over tts-serve "
             f"(loopback WebSocket) on {machine}",
             f"  text at {out['chars_per_s']:g} chars/s in {out['delta_chars']}-char deltas; {out['rounds']} "
             "alternating rounds per level",
             f"  {'streams':>7} {'n':>4} {'local p50':>10} {'p95':>7} {'remote p50':>11} {'p95':>7} "
             f"{'remote-local':>12} {'server p50':>11} {'p95':>7} {'remote-server':>13} {'errors':>7}"]
    for lv in out["levels"].values():
        loc, rem, srv = lv["local_ms"], lv["remote_ms"], lv["server_first_audio_ms"]
        lines.append(f"  {lv['streams']:>7} {loc['n']:>4} {f(loc['p50']):>10} {f(loc['p95']):>7} {f(rem['p50']):>11} "
                     f"{f(rem['p95']):>7} {f(lv['wire_p50_ms']):>12} {f(srv['p50']):>11} {f(srv['p95']):>7} "
                     f"{f(lv.get('wire_vs_server_p50_ms')):>13} {sum(lv.get('errors', {}).values()):>7}")
    for key, what in (("wire_p50_ms", "remote p50 - local p50"), ("wire_vs_server_p50_ms", "remote p50 - server p50")):
        vals = [lv.get(key) for lv in out["levels"].values() if lv.get(key) is not None]
        if vals:
            worst = max(vals)
            verdict = "within" if worst <= TARGET_MS else "OVER"
            lines.append(f"  {what}: largest {worst:+.1f} ms, {verdict} the {TARGET_MS:.0f} ms target")
    lines.append("  server = tts-serve's own first text received -> first audio sent per stream (its log; "
                 "/metrics has the same as tts_time_to_first_audio_seconds): the engine under contention; "
                 "remote - server is the wire (client, WebSocket, JSON/base64, loopback)")
    return "\n".join(lines)
