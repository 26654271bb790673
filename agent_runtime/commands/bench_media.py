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
    "decimator) in the same process and prints p50/p99 of each. With --voice-calls, whole turns too: a "
    "server on loopback with the configured engines, an aiortc caller asking three kinds of question (plain, "
    "a mid-sentence pause, long), voice to voice measured at the client (caller's last audible sound -> "
    "first audible agent sound, on the audio it sent and received) next to the server's own figure, with "
    "the VAD's end of speech as before (webrtcvad) and after (energy gate)."
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
    p.add_argument(
        "--voice-calls", type=int, default=0, metavar="N",
        help="also N calls per question kind and VAD mode, voice to voice at the client (0 = skip; a short run: 1)",
    )
    p.add_argument("--config", default=None, help="server config for --voice-calls (e.g. configs/demo.yaml)")
    p.add_argument(
        "--instant-engines", action="store_true",
        help="--voice-calls with stand-in engines that answer at once (media path and VAD only)",
    )
    p.add_argument("--no-bursts", action="store_true", help="skip the tone-burst media-path figures")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from agent_runtime.bench.machine import machine_description
    from agent_runtime.server.media_bench import compare, voice_calls

    if not getattr(args, "verbose", False):
        logging.getLogger("aioice").setLevel(logging.WARNING)  # one INFO line per ICE check otherwise
    out: dict = {}
    if not args.no_bursts:
        results = asyncio.run(compare(bursts=args.bursts))
        out["media_path"] = results
        print(f"\nWebRTC media path on loopback ({machine_description()}), {args.bursts} bursts per direction")
        print(f"  {'receive path':<62}{'in p50':>8}{'in p99':>8}{'out p50':>9}{'out p99':>9}  (ms)")
        for label, r in results.items():
            i, o = r["inbound_ms"], r["outbound_ms"]
            print(f"  {label:<62}{i['p50']:>8.1f}{i['p99']:>8.1f}{o['p50']:>9.1f}{o['p99']:>9.1f}")
        print("  in  = caller frame leaves its track -> the frame containing it reaches the VAD")
        print("  out = synthesizer chunk ready -> caller receives its first decoded frame")
    if args.voice_calls > 0:
        voice = asyncio.run(voice_calls(args.config, args.voice_calls, instant=args.instant_engines))
        out["voice_to_voice"] = voice
        print(f"\n{voice_table(voice, args.voice_calls, args.instant_engines)}")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(out, indent=2))
    return 0


def voice_table(voice: dict, calls: int, instant: bool) -> str:
    """The voice-to-voice figures as a text table (client vs server p50 per question kind)."""
    from agent_runtime.bench.machine import machine_description

    engines = "instant stand-in engines" if instant else "the configured engines"
    lines = [
        f"Voice to voice over WebRTC on loopback ({machine_description()}), {engines}, "
        f"{calls} call(s) per question kind",
        f"  {'end of speech':<56}{'kind':<7}{'client p50':>11}{'server p50':>11}{'gap':>6}  (ms)",
    ]
    for label, r in voice.items():
        for kind, v in r.items():
            if not isinstance(v, dict):
                continue
            c, s = v["client_p50_ms"], v["server_p50_ms"]
            gap = "-" if c is None or s is None else f"{c - s:.0f}"
            fc = "-" if c is None else f"{c:.0f}"
            fs = "-" if s is None else f"{s:.0f}"
            lines.append(f"  {label:<56}{kind:<7}{fc:>11}{fs:>11}{gap:>6}")
        lines.append(
            f"  {'':<56}premature replies heard {r['premature_replies']}, unanswered {r['unanswered']}, "
            f"replies whose first (silent) audio left while the caller spoke {r['server_started_early']}"
        )
    lines.append("  client = caller's last audible sound leaving its track -> first audible agent sample received")
    lines.append("  server = the server's end of speech (VAD) -> its first agent audio frame sent")
    return "\n".join(lines)
