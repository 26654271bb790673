"""`agent-runtime loadtest`: validate the files, start what is under test if asked, run, report, judge.

Exit codes: 0 the SLO holds, 1 it does not, 2 a harness error (bad file, non-loopback URL, a server that
would not start).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from loadtest.progress import Progress
from loadtest.report import build, text_summary, write_json
from loadtest.safety import NotLoopbackError, require_answering, require_loopback
from loadtest.scenario import Scenario, ScenarioError, load_scenario
from loadtest.server import Proc, ServerStartError
from loadtest.slo import SLO, load_slo

log = logging.getLogger("loadtest")


def runtime_config(out: Path, base: Path | None, max_calls: int, llm_url: str | None) -> Path:
    """The config the harness starts `agent-runtime serve` with: `base` plus enough call slots (and the
    shared LLM server when comparing)."""
    from agent_runtime.config import load_config

    raw: dict[str, Any] = {}
    if base is not None:
        raw = yaml.safe_load(base.read_text()) or {}
    server = dict(raw.get("server") or {})
    server["max_sessions"] = max(int(server.get("max_sessions", 8)), max_calls + 2)
    # every simulated caller comes from 127.0.0.1: a ramp step sets up many calls from one address at once
    server["max_pending_per_client"] = max(int(server.get("max_pending_per_client", 4)), max_calls + 2)
    raw["server"] = server
    if llm_url is not None:
        llm = dict(raw.get("llm") or {})
        llm["backend"] = "openai"
        llm["options"] = {"base_url": llm_url + "/v1", "model": "smollm2", "timeout_s": 10.0}
        raw["llm"] = llm
    out.mkdir(parents=True, exist_ok=True)
    path = out / "server-config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_config(path)  # fail now, with the config's own message, rather than in the subprocess
    return path


async def _run_one(scenario: Scenario, slo: SLO, audio: list, url: str, pid: int | None, target: str,
                   mode: str, show_progress: bool) -> tuple[dict[str, Any], Any]:
    from loadtest.runner import Runner

    bar = Progress(f"{target} ({mode})", enabled=show_progress)
    try:
        result = await Runner(scenario, url, audio, pid=pid, progress=bar.update).run()
    finally:
        bar.close()
    return build(scenario, slo, result, target=target, url=url, mode=mode)


async def orchestrate(args: argparse.Namespace, scenario: Scenario, slo: SLO, audio: list) -> dict[str, Any]:
    """Run the scenario against each target; returns the report document."""
    from loadtest import server as srv

    max_calls = max(c for c, _ in scenario.load.plan())
    procs: list[Proc] = []
    runs: list[tuple[dict[str, Any], Any]] = []
    show = not args.no_progress
    try:
        if args.compare_pipecat:
            llm = await srv.start_llm_server()
            procs.append(llm)
            cfg = runtime_config(args.out, args.server_config, max_calls, llm.url)
            rt = await srv.start_runtime(instant=False, config=cfg)
            procs.append(rt)
            runs.append(await _run_one(scenario, slo, audio, rt.url, rt.pid, "agent-runtime", "real engines, shared llm-serve", show))
            await rt.stop()
            from agent_runtime.config import load_config

            rc = load_config(cfg)
            bot = await srv.start_pipecat(
                llm.url, system_prompt=rc.llm.system_prompt, max_tokens=rc.llm.max_tokens,
                stop_secs=rc.turn.end_of_turn_silence_ms / 1000, max_calls=rc.server.max_sessions,
            )
            procs.append(bot)
            runs.append(await _run_one(scenario, slo, audio, bot.url, bot.pid, "pipecat", "same engines, shared llm-serve", show))
        elif args.start_server:
            cfg = runtime_config(args.out, args.server_config, max_calls, None)
            rt = await srv.start_runtime(instant=args.instant_engines, config=cfg)
            procs.append(rt)
            mode = "instant engines" if args.instant_engines else "real engines"
            runs.append(await _run_one(scenario, slo, audio, rt.url, rt.pid, "agent-runtime", mode, show))
        else:
            runs.append(await _run_one(scenario, slo, audio, args.url, args.server_pid, "server", "external", show))
    finally:
        for p in reversed(procs):
            await p.stop()
    docs = [d for d, _ in runs]
    doc: dict[str, Any] = {"schema": "agent-runtime-loadtest/1", "verdict": docs[0]["verdict"], "runs": docs,
                           "comparison": compare(docs[0], docs[1]) if len(docs) > 1 else None}
    return doc


def compare(rt: dict[str, Any], pc: dict[str, Any]) -> dict[str, Any]:
    """Pipecat / agent-runtime voice-to-voice latency per concurrency level (> 1: the runtime is faster)."""
    rows = []
    for a, b in zip(rt["levels"], pc["levels"], strict=False):
        ra, rb = a["voice_to_voice_ms"], b["voice_to_voice_ms"]

        def ratio(x: float | None, y: float | None) -> float | None:
            return round(y / x, 2) if x and y else None

        ba, bb = a["barge_in_ms"], b["barge_in_ms"]
        rows.append({"concurrency": a["concurrency"], "runtime_p50": ra["p50"], "pipecat_p50": rb["p50"],
                     "runtime_p95": ra["p95"], "pipecat_p95": rb["p95"],
                     "ratio_p50": ratio(ra["p50"], rb["p50"]), "ratio_p95": ratio(ra["p95"], rb["p95"]),
                     "runtime_barge_in_p95": ba["p95"], "pipecat_barge_in_p95": bb["p95"],
                     "ratio_barge_in_p95": ratio(ba["p95"], bb["p95"])})
    parts = []
    for r in rows:
        bits = [f"{name} {r[key]:.2f}x" for name, key in
                (("p50", "ratio_p50"), ("p95", "ratio_p95"), ("barge-in p95", "ratio_barge_in_p95")) if r[key]]
        if bits:
            parts.append(f"at {r['concurrency']} call(s): {', '.join(bits)}")
    line = ("Pipecat / agent-runtime latency (voice-to-voice, barge-in; > 1: agent-runtime is faster) "
            + "; ".join(parts)) if parts else "no comparable samples"
    return {"levels": rows, "line": line,
            "max_concurrency_at_slo": {"agent-runtime": rt["verdict"]["max_concurrency_at_slo"],
                                       "pipecat": pc["verdict"]["max_concurrency_at_slo"]}}


def run(args: argparse.Namespace) -> int:
    """The command; returns the exit code."""
    from loadtest.audio import prepare
    from loadtest.html import write_html

    if not getattr(args, "verbose", False):
        for name in ("aioice", "aiortc"):  # one INFO line per ICE check otherwise
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if args.scenario is None:
            raise ScenarioError("--scenario FILE is required (configs/scenarios/)")
        if getattr(args, "duration", None) is not None:
            raise ScenarioError("--duration applies to `loadtest chaos` only")
        if args.url and (args.start_server or args.compare_pipecat):
            raise ScenarioError("give either --url or --start-server/--compare-pipecat, not both")
        scenario = load_scenario(args.scenario)
        slo = load_slo(args.slo)
        if args.url:
            args.url = require_loopback(args.url)
            require_answering(args.url)
        elif not (args.start_server or args.compare_pipecat):
            raise ScenarioError("give --url URL of a running server, or --start-server")
        if args.instant_engines and not args.start_server:
            raise ScenarioError("--instant-engines needs --start-server")
        if args.compare_pipecat:
            from loadtest.server import require_pipecat

            require_pipecat()  # now, not after the agent-runtime half has run for minutes
        audio = prepare(scenario)
        from agent_runtime.transport.webrtc import use_loopback_host_candidates

        use_loopback_host_candidates(True)  # the callers' own ICE candidates: 127.0.0.1 only
        doc = asyncio.run(orchestrate(args, scenario, slo, audio))
    except (ScenarioError, NotLoopbackError, ServerStartError, ConnectionError) as exc:
        print(f"agent-runtime loadtest: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agent-runtime loadtest: interrupted", file=sys.stderr)
        return 2
    except Exception as exc:  # any other failure is the harness's, not an SLO verdict
        log.debug("harness error", exc_info=True)
        print(f"agent-runtime loadtest: harness error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(doc, args.out)
    write_html(doc, args.out)
    for r in doc["runs"]:
        print(text_summary(r))
        print(r["verdict"]["line"])
        print()
    if doc["comparison"]:
        print(doc["comparison"]["line"])
    v = doc["verdict"]
    print(f"max concurrent calls at your SLO: {v['max_concurrency_at_slo']}")
    print(f"reports: {args.out / 'report.json'}, {args.out / 'report.html'}")
    return 0 if v["ok"] else 1
