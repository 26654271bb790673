"""`agent-runtime loadtest chaos`: validate, run the campaign, print the table, write chaos.json, judge.

Exit codes: 0 the server held (no legit call lost, slots recovered, no traceback, stayed up, RSS growth
bounded, every attack and LLM fault handled as expected), 1 it did not, 2 a harness error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from loadtest.scenario import ScenarioError
from loadtest.server import REPO, ServerStartError

log = logging.getLogger("loadtest.chaos")
DEFAULT_PLAN = REPO / "configs" / "scenarios" / "chaos" / "default.yaml"


def run(args: argparse.Namespace) -> int:
    """The command; returns the exit code."""
    from loadtest.chaos.campaign import Campaign, caller_speech
    from loadtest.chaos.plan import load_plan
    from loadtest.chaos.verdict import build, table, write

    if not getattr(args, "verbose", False):
        for name in ("aioice", "aiortc"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if args.url or args.compare_pipecat or not args.start_server:
            raise ScenarioError("chaos starts its own server (auth on, short timeouts, the fault LLM): "
                                "give --start-server [--instant-engines], not --url or --compare-pipecat")
        plan_path: Path = args.scenario or DEFAULT_PLAN
        plan = load_plan(plan_path, args.duration)
        from agent_runtime.transport.webrtc import use_loopback_host_candidates

        use_loopback_host_candidates(True)  # every ICE candidate of ours: 127.0.0.1
        speech = caller_speech(plan.legit.text)
        mode = "instant ASR/TTS, fault LLM" if args.instant_engines else "real ASR/TTS, fault LLM"
        print(f"chaos: {plan.name}, {plan.duration_s:g} s ({mode}); reports in {args.out}", file=sys.stderr)
        raw = asyncio.run(Campaign(plan, args.out, instant=args.instant_engines, speech=speech).run())
    except (ScenarioError, ServerStartError) as exc:
        print(f"agent-runtime loadtest chaos: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agent-runtime loadtest chaos: interrupted", file=sys.stderr)
        return 2
    except Exception as exc:  # the harness's failure, not a verdict
        log.debug("harness error", exc_info=True)
        print(f"agent-runtime loadtest chaos: harness error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    doc = build(raw, plan, mode)
    path = write(doc, args.out)
    print(table(doc))
    print(f"report: {path}; server stderr: {doc['stderr']}")
    if raw["harness_errors"]:
        print("agent-runtime loadtest chaos: harness error: " + "; ".join(raw["harness_errors"]), file=sys.stderr)
        return 2
    return 0 if doc["verdict"]["ok"] else 1
