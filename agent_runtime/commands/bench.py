"""`agent-runtime bench voice|overhead|tts-wire|asr-pool`: latency benchmarks that print figures and same-run ratios."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("agent_runtime.bench")

VOICE_TURNS = [
    "What time do you open tomorrow?",
    "Can you tell me about your return policy?",
    "Do you deliver on weekends?",
    "How much does delivery cost?",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency benchmarks (voice-to-voice, runtime overhead)")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH")
    v = bsub.add_parser(
        "voice",
        help="voice-to-voice latency on the embedded models vs a sequential sentence-buffered pipeline",
        description=(
            "Runs the same caller turns through two pipelines built from the same models in one run: "
            "agent-runtime (speculative ASR/LLM/TTS from the first pause, clause-level TTS) and a "
            "sequential baseline shaped like Pipecat's default pipeline (ASR after the end-of-turn "
            "decision, whole-sentence TTS). Prints voice-to-voice p50/p95 with a per-stage breakdown "
            "and the ratio."
        ),
    )
    v.add_argument("--config", type=Path, default=None, help="YAML config (default: configs/demo.yaml if present)")
    v.add_argument("--rounds", type=int, default=1, help="how many times to run the turn list per pipeline")
    v.add_argument("--json-out", type=Path, default=None, help="write the figures as JSON")
    v.set_defaults(func=_voice)
    o = bsub.add_parser(
        "overhead",
        help="what the runtime adds between the end-of-turn decision and the first audio (instant engines)",
    )
    o.add_argument("--sessions", type=int, nargs="+", default=[1, 20], help="concurrency levels")
    o.add_argument("--turns", type=int, default=3, help="caller turns per session")
    o.add_argument("--json-out", type=Path, default=None)
    o.set_defaults(func=_overhead)
    w = bsub.add_parser(
        "tts-wire",
        help="time to first audio of the local TTS engine vs the same engine behind tts-serve (remote)",
        description=(
            "For one engine config, in one run: the in-process synthesizer against the `remote` engine talking "
            "to an `agent-runtime tts-serve` subprocess on loopback (started here with the same config), at "
            "each concurrency level, rounds alternating which side goes first. Text goes in as small deltas at "
            "an LLM's pace; prints first-audio p50/p95 of both, the difference at p50 (what the wire adds; "
            "target <= 10 ms) and tts-serve's own first-audio histogram from /metrics. See docs/performance.md."
        ),
    )
    w.add_argument("--config", type=Path, default=None,
                   help="YAML config whose tts: section picks the engine (default: piper with noise_scale 0)")
    w.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16], help="concurrency levels")
    w.add_argument("--rounds", type=int, default=4, help="rounds per side per level (alternating order)")
    w.add_argument("--chars-per-s", type=float, default=60.0, help="text rate of the simulated LLM")
    w.add_argument("--json-out", type=Path, default=None, help="write the figures and samples as JSON")
    w.set_defaults(func=_tts_wire)
    a = bsub.add_parser(
        "asr-pool",
        help="ASR wait and transcript latency at 1, 8 and 16 concurrent calls: one lane vs the worker pool",
        description=(
            "Simulated calls share one Whisper tiny.en recognizer as the calls of one server do: each speaks a "
            "caller line, asks for its transcript, waits for the agent's reply, repeats. Runs every level twice "
            "in one run: before = one lane (asr.workers: 1) with all the threads, after = --workers lanes "
            "(asr.workers) with the same threads shared out. Prints ASR wait (queued for a free worker) and "
            "transcript latency p50/p99 with after/before ratios. See docs/performance.md."
        ),
    )
    a.add_argument("--calls", type=int, nargs="+", default=[1, 8, 16], help="concurrency levels")
    a.add_argument("--workers", type=int, default=None,
                   help="workers of the pool (default: the usable CPU cores, at most 4)")
    a.add_argument("--threads", type=int, default=None,
                   help="CPU threads in all, on both sides (default: the usable CPU cores, at most 4)")
    a.add_argument("--worker-threads", type=int, default=None,
                   help="CPU threads of each pool worker (default: --threads shared out between the workers)")
    a.add_argument("--turns", type=int, default=3, help="caller turns per call")
    a.add_argument("--gap-s", type=float, default=2.0, help="seconds of agent reply between a call's turns")
    a.add_argument("--rounds", type=int, default=2, help="runs per side per level, alternating which side goes first")
    a.add_argument("--json-out", type=Path, default=None, help="write the figures as JSON")
    a.set_defaults(func=_asr_pool)
    p.set_defaults(func=lambda _a: p.print_help() or 2)


def _config(path: Path | None):
    from agent_runtime.config import load_config

    default = Path("configs/demo.yaml")
    return load_config(path or (default if default.is_file() else None))


def _voice(args: argparse.Namespace) -> int:
    return asyncio.run(_voice_main(args))


async def _voice_main(args: argparse.Namespace) -> int:
    from agent_runtime.bench.machine import machine_description
    from agent_runtime.config import CallerTurn
    from agent_runtime.demo.run import prepare_caller, run_call
    from agent_runtime.engines import build_engines, warm_up
    from agent_runtime.metrics.turns import MetricsCollector

    config = _config(args.config)
    engines = await asyncio.to_thread(build_engines, config)
    await warm_up(engines)
    lines = await prepare_caller([CallerTurn(text=t) for t in VOICE_TURNS], engines.synthesizer)
    pipelines = {
        "agent-runtime": config,
        "sequential-baseline": config.model_copy(
            update={
                "turn": config.turn.model_copy(update={"speculative": False}),
                "tts": config.tts.model_copy(update={"first_segment": "sentence"}),
            }
        ),
    }
    results: dict[str, dict] = {}
    for name, cfg in pipelines.items():
        collected = MetricsCollector()
        for r in range(args.rounds):
            log.info("%s: round %d/%d (%d turns, real time)", name, r + 1, args.rounds, len(lines))
            res = await run_call(cfg, engines, lines)
            collected.turns.extend(res.metrics.turns)
        results[name] = collected.summary()
    print(f"\nvoice-to-voice on {machine_description()}")
    print(f"  turns per pipeline: {len(lines) * args.rounds}; end-of-turn silence {config.turn.end_of_turn_silence_ms} ms")
    header = f"  {'stage (ms after end of user speech)':<36}" + "".join(f"{n:>22}" for n in pipelines)
    print(header)
    for key in ("asr_final_ms", "llm_first_token_ms", "tts_first_audio_ms", "end_of_turn_ms", "voice_to_voice_ms"):
        row = f"  {key + ' p50':<36}"
        for n in pipelines:
            s = results[n].get(key)
            row += f"{(s['p50'] if s else float('nan')):>22.0f}"
        print(row)
    a = results["agent-runtime"]["voice_to_voice_ms"]
    b = results["sequential-baseline"]["voice_to_voice_ms"]
    print(f"  voice_to_voice p95{'':<18}{a['p95']:>22.0f}{b['p95']:>22.0f}")
    print(f"\n  ratio agent-runtime / sequential baseline (p50): {a['p50'] / b['p50']:.2f}x")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=2))
    await engines.llm.aclose()
    return 0


def _overhead(args: argparse.Namespace) -> int:
    return asyncio.run(_overhead_main(args))


async def _overhead_main(args: argparse.Namespace) -> int:
    from agent_runtime.bench.machine import machine_description
    from agent_runtime.bench.overhead import run_overhead
    from agent_runtime.demo.run import synthesize_text
    from agent_runtime.tts.registry import create_synthesizer

    piper = await asyncio.to_thread(create_synthesizer, "piper", {})
    speech = await synthesize_text(piper, "What time do you open tomorrow?")
    log.info("running %s concurrent sessions x %d turns (real time)", args.sessions, args.turns)
    out = await run_overhead(args.sessions, args.turns, speech)
    print(f"\nruntime overhead with instant engines on {machine_description()}")
    print(f"  {'sessions':>8} {'turns':>6} {'decision->audio p50':>20} {'p99':>8} {'v2v p50':>9} {'p99':>8}")
    for n, r in out.items():
        d, v = r["decision_to_audio_ms"], r["voice_to_voice_ms"]
        print(f"  {n:>8} {int(d['n']):>6} {d['p50']:>17.1f} ms {d['p99']:>5.1f} ms {v['p50']:>6.0f} ms {v['p99']:>5.0f} ms")
    print("  (voice-to-voice includes the end-of-turn silence; decision->audio is what the runtime adds)")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(out, indent=2))
    return 0


def _tts_wire(args: argparse.Namespace) -> int:
    return asyncio.run(_tts_wire_main(args))


async def _tts_wire_main(args: argparse.Namespace) -> int:
    from agent_runtime.bench.tts_wire import format_table, run_tts_wire

    if min(args.streams) < 1 or args.rounds < 1:
        print("bench tts-wire: --streams and --rounds must be >= 1")
        return 2
    out = await run_tts_wire(args.streams, args.rounds, config=args.config, chars_per_s=args.chars_per_s)
    return _report(out, format_table, args.json_out)


def _asr_pool(args: argparse.Namespace) -> int:
    return asyncio.run(_asr_pool_main(args))


async def _asr_pool_main(args: argparse.Namespace) -> int:
    from agent_runtime.bench.asr_pool import format_table, run_asr_pool
    from agent_runtime.cores import usable_cores

    cores = usable_cores(4)
    threads = args.threads or cores
    workers = args.workers or cores
    if min(args.calls) < 1 or min(args.turns, args.rounds, threads, workers, args.worker_threads or 1) < 1 \
            or args.gap_s < 0:
        print("bench asr-pool: --calls, --turns, --rounds, --threads and --workers must be >= 1, --gap-s >= 0")
        return 2
    out = await run_asr_pool(args.calls, workers=workers, threads=threads, turns=args.turns, gap_s=args.gap_s,
                             rounds=args.rounds, worker_threads=args.worker_threads)
    return _report(out, format_table, args.json_out)


def _report(out: dict, format_table: Callable[[dict, str], str], json_out: Path | None) -> int:
    """Print a bench's table (with the machine it ran on) and write its figures to `json_out`."""
    from agent_runtime.bench.machine import machine_description

    machine = machine_description()
    out["machine"] = machine
    print()
    print(format_table(out, machine))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(out, indent=2))
    return 0
