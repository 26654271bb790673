"""`agent-runtime bench media`: WebRTC media-path latency on loopback, before/after, in one run.

Registered under the existing `bench` command when it is there (after `commands.bench` in the
CLI table), else as a top-level `bench-media`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path

_DESCRIPTION = (
    "Two aiortc peers over 127.0.0.1 UDP (a caller and the agent's WebRTC transport). Tone bursts time "
    "each direction: a caller frame leaving its track -> the 16 kHz frame handed to the VAD, and a "
    "synthesizer chunk -> the caller receiving its first decoded frame. Runs aiortc's shipped receive "
    "path (4-packet jitter buffer, soxr resampling) and this runtime's (pass-through buffer, FIR "
    "decimator) in the same process and prints p50/p99 of each."
)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.choices.get("bench")
    bench_sub = _subparsers(bench) if bench is not None else None
    if bench_sub is not None:
        p = bench_sub.add_parser("media", help="WebRTC media-path latency on loopback", description=_DESCRIPTION)
    else:
        p = sub.add_parser("bench-media", help="WebRTC media-path latency on loopback", description=_DESCRIPTION)
    p.add_argument("--bursts", type=int, default=40, help="tone bursts per direction and mode")
    p.add_argument("--json-out", type=Path, default=None, help="write the figures as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from agent_runtime.bench.overhead import machine_description
    from agent_runtime.server.media_bench import compare

    if not getattr(args, "verbose", False):
        logging.getLogger("aioice").setLevel(logging.WARNING)  # one INFO line per ICE check otherwise
    results = asyncio.run(compare(bursts=args.bursts))
    print(f"\nWebRTC media path on loopback ({machine_description()}), {args.bursts} bursts per direction")
    print(f"  {'receive path':<62}{'in p50':>8}{'in p99':>8}{'out p50':>9}{'out p99':>9}  (ms)")
    for label, r in results.items():
        i, o = r["inbound_ms"], r["outbound_ms"]
        print(f"  {label:<62}{i['p50']:>8.1f}{i['p99']:>8.1f}{o['p50']:>9.1f}{o['p99']:>9.1f}")
    print("  in  = caller frame leaves its track -> the frame containing it reaches the VAD")
    print("  out = synthesizer chunk ready -> caller receives its first decoded frame")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=2))
    return 0
