"""`agent-runtime plugins`: list the LLM backends and TTS engines found through entry points."""

from __future__ import annotations

import argparse
from importlib.metadata import EntryPoint, entry_points

GROUPS = (("LLM backends", "agent_runtime.llm_backends"), ("TTS engines", "agent_runtime.tts_engines"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plugins",
        help="list discovered LLM backends and TTS engines",
        description=(
            "List the plugins registered through Python entry points: LLM backends "
            "(group agent_runtime.llm_backends, chosen with llm.backend) and TTS engines "
            "(group agent_runtime.tts_engines, chosen with tts.engine). See docs/plugins.md."
        ),
    )
    p.add_argument("--check", action="store_true", help="also import each plugin and report failures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    failed = 0
    for title, group in GROUPS:
        eps = sorted({ep.name: ep for ep in reversed(list(entry_points(group=group)))}.values(), key=lambda e: e.name)
        print(f"{title} ({group}):")
        if not eps:
            print("  (none)")
        for ep in eps:
            status = _check(ep) if args.check else ""
            failed += status.startswith("  FAILED")
            print(f"  {ep.name:<12} {ep.value}  [{_dist(ep)}]{status}")
    return 1 if failed else 0


def _dist(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else "?"


def _check(ep: EntryPoint) -> str:
    try:
        ep.load()
    except Exception as exc:
        return f"  FAILED: {type(exc).__name__}: {exc}"
    return "  ok"
