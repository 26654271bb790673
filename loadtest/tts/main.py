"""`agent-runtime loadtest tts`: concurrent LLM-paced speech streams against `agent-runtime tts-serve`.

Levels of N concurrent streams (`streams:` of the scenario, or `--streams 1,4,16`), each stream one
WebSocket sending `replies` replies one after another; per reply first audio, RTF, underruns and
errors (client.py); per level p50/p95/p99 and the server's own first-audio histogram from /metrics;
the SLO verdict (configs/slo/tts.yaml), DIR/report.json and DIR/report.html.
Exit status: 0 the SLO holds, 1 it does not, 2 harness error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from agent_runtime.tts_service.protocol import INFO_PATH
from loadtest.monitor import scrape
from loadtest.progress import Progress
from loadtest.safety import NotLoopbackError, require_answering, require_loopback
from loadtest.scenario import ScenarioError
from loadtest.server import ServerStartError
from loadtest.tts.client import StreamError, one_reply, session_reply, ws_url
from loadtest.tts.report import build, render_html, text_summary
from loadtest.tts.spec import TTSScenario, load_scenario, load_slo

log = logging.getLogger("loadtest.tts")
TOKEN_ENV = "AGENT_RUNTIME_TTS_TOKEN"


def _headers() -> dict[str, str]:
    token = os.environ.get(TOKEN_ENV, "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ScenarioError(f"--streams must be comma-separated integers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise ScenarioError(f"--streams needs positive integers, got {text!r}")
    return levels


def scenario_from_args(args: argparse.Namespace) -> TTSScenario:
    sc = load_scenario(args.scenario)
    update: dict[str, Any] = {}
    if getattr(args, "streams", None):
        update["streams"] = parse_levels(args.streams)
    if getattr(args, "replies", None):
        update["replies"] = args.replies
    if getattr(args, "protocol", None):
        update["protocol"] = args.protocol
    return TTSScenario.model_validate({**sc.model_dump(), **update}) if update else sc


class Run:
    def __init__(self, sc: TTSScenario, url: str, progress: Progress) -> None:
        self.sc, self.url, self.progress = sc, url, progress
        self.replies: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.total = sum(sc.streams) * sc.replies
        self.finished = 0
        self.level_label = ""

    def _text(self, n: int) -> str:
        return self.sc.texts[n % len(self.sc.texts)]

    async def stream(self, http: aiohttp.ClientSession, level: int | None, idx: int, count: int,
                     sink: list[dict[str, Any]]) -> None:
        """One stream: a socket carrying `count` replies (reconnecting after a lost connection)."""
        sc = self.sc
        ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            for n in range(count):
                rec: dict[str, Any] = {"level": level, "stream": idx, "reply": n,
                                       "t": round(time.monotonic() - self.t0, 3)}
                try:
                    if sc.protocol == "sglang-omni":  # a session per reply (the server closes it after)
                        figures = await session_reply(
                            http, self.url, self._text(idx + n), chars_per_s=sc.chars_per_s,
                            delta_chars=sc.delta_chars, first_token_ms=sc.first_token_ms,
                            timeout_s=sc.stream_timeout_s, voice=sc.voice,
                            split_granularity=sc.split_granularity, headers=_headers(),
                        )
                    else:
                        if ws is None or ws.closed:
                            try:
                                ws = await http.ws_connect(ws_url(self.url), headers=_headers(), heartbeat=None,
                                                           timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
                            except (aiohttp.ClientError, OSError) as exc:
                                raise StreamError("connect_failed", str(exc)) from None
                        figures = await one_reply(ws, self._text(idx + n), chars_per_s=sc.chars_per_s,
                                                  delta_chars=sc.delta_chars, first_token_ms=sc.first_token_ms,
                                                  timeout_s=sc.stream_timeout_s, voice=sc.voice)
                    rec.update(status="ok", error_code=None, **figures)
                except StreamError as exc:
                    rec.update(status="error", error_code=exc.code, error=str(exc)[:300])
                    if exc.code in ("connection_lost", "timeout", "protocol") and ws is not None:
                        await ws.close()
                        ws = None
                except (aiohttp.ClientError, ConnectionError) as exc:
                    rec.update(status="error", error_code="connection_lost", error=str(exc)[:300])
                    ws = None
                except TimeoutError:
                    rec.update(status="error", error_code="timeout", error="no answer to start")
                    if ws is not None:
                        await ws.close()
                    ws = None
                sink.append(rec)
                if level is not None:
                    self.finished += 1
                    self.progress.update(self.finished / max(self.total, 1), self._status())
                await asyncio.sleep(sc.pause_between_ms / 1000)
        finally:
            if ws is not None and not ws.closed:
                await ws.close()

    def _status(self) -> str:
        done = [r for r in self.replies if r["status"] == "ok"]
        errs = len(self.replies) - len(done)
        last = sorted(r["first_audio_ms"] for r in done[-20:])
        med = f"first audio ~{last[len(last) // 2]:.0f} ms" if last else "no audio yet"
        return f"{self.level_label}, {len(self.replies)} replies, {med}, {errs} errors"


async def _info(url: str) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(url + INFO_PATH, headers=_headers(),
                                                             timeout=aiohttp.ClientTimeout(total=5)) as r:
            return await r.json() if r.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def run_async(args: argparse.Namespace) -> int:
    sc = scenario_from_args(args)
    slo = load_slo(args.slo)
    proc = None
    if args.start_server:
        from loadtest.server import start_tts_serve

        print("starting agent-runtime tts-serve ...", file=sys.stderr, flush=True)
        proc = await start_tts_serve(config=args.server_config, timeout=300.0)
        url = proc.url
    else:
        url = require_loopback(args.url)
        await asyncio.to_thread(require_answering, url)
    progress = Progress("tts load", enabled=not args.no_progress)
    run = Run(sc, url, progress)
    levels: list[dict[str, Any]] = []
    warmup: list[dict[str, Any]] = []
    stopped_early = None
    try:
        info = await _info(url)
        if info and isinstance(info.get("max_streams"), int) and max(sc.streams) > info["max_streams"]:
            log.warning("the server takes %d streams at once; levels above that will see busy errors",
                        info["max_streams"])
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            for i in range(sc.warmup_streams):
                await run.stream(http, None, i, 1, warmup)
            run.t0 = time.monotonic()
            try:
                async with asyncio.timeout(sc.max_duration_s):
                    for k, n in enumerate(sc.streams):
                        run.level_label = f"{n} streams"
                        before = await scrape(url)
                        start = time.monotonic() - run.t0
                        await asyncio.gather(*(run.stream(http, k, i, sc.replies, run.replies) for i in range(n)))
                        levels.append({"concurrency": n, "start": round(start, 2),
                                       "end": round(time.monotonic() - run.t0, 2),
                                       "metrics_before": before, "metrics_after": await scrape(url)})
            except TimeoutError:
                stopped_early = f"max_duration_s {sc.max_duration_s:g} reached"
    finally:
        progress.close()
        if proc is not None:
            await proc.stop()
    doc, v = build(sc.model_dump(mode="json"), slo, levels, run.replies, url=url, info=info,
                   stopped_early=stopped_early, warmup=warmup)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(doc, indent=1, default=str))
    (out / "report.html").write_text(render_html(doc))
    print(text_summary(doc))
    print(v.line)
    print(f"report: {out / 'report.json'}, {out / 'report.html'}")
    return 0 if v.ok else 1


def run(args: argparse.Namespace) -> int:
    if bool(args.url) == bool(args.start_server) or args.compare_pipecat:
        print("error: loadtest tts needs exactly one of --url and --start-server", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_async(args))
    except (ScenarioError, NotLoopbackError, ConnectionError, ServerStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
