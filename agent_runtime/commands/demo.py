"""`agent-runtime demo`: a whole simulated call on the embedded offline models."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path

log = logging.getLogger("agent_runtime.demo")
DEFAULT_CONFIG = Path("configs/demo.yaml")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run a simulated customer-service call on the embedded models",
        description=(
            "Runs a whole call in real time: a simulated caller (piper-synthesised, or WAV files) asks "
            "questions, pausing mid-sentence once and interrupting the agent once; the agent listens "
            "(webrtcvad + faster-whisper), thinks (SmolLM2) and speaks (piper). Prints both sides' "
            "transcript and a latency waterfall per turn, and writes the stereo call recording "
            "(caller left, agent right)."
        ),
    )
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: configs/demo.yaml if present)")
    p.add_argument("--caller", nargs="+", metavar="WAV", help="caller turns as WAV files instead of the script")
    p.add_argument("--out", type=Path, default=Path("out/demo_call.wav"), help="call recording (stereo WAV)")
    p.add_argument("--metrics-out", type=Path, default=Path("out/demo_turns.jsonl"), help="per-turn JSON lines")
    s2 = p.add_argument_group("S2-Pro (instead of the config's TTS; the caller keeps the piper voice)")
    s2.add_argument("--checkpoint", type=Path, metavar="DIR", help="S2-Pro Dual-AR checkpoint directory")
    s2.add_argument("--codec", type=Path, metavar="CODEC.pth", help="S2-Pro codec weights")
    s2.add_argument("--codec-config", type=Path, metavar="CFG.json", help="codec architecture (default: S2-Pro's)")
    s2.add_argument("--voice", metavar="NAME", help="voice-library name (default: the model's own voice)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from agent_runtime.config import CallerTurn, load_config

    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    config = load_config(path)
    if args.caller:
        turns = [CallerTurn(wav=str(w)) for w in args.caller]
        config = config.model_copy(update={"demo": config.demo.model_copy(update={"caller_turns": turns})})
    config = _with_s2pro_flags(config, args)
    if not config.demo.caller_turns:
        from agent_runtime.errors import ConfigError

        raise ConfigError("no caller turns: give --caller WAV... or demo.caller_turns in the config")
    return asyncio.run(_main(config, args))


def _with_s2pro_flags(config, args: argparse.Namespace):
    """`--checkpoint/--codec/--codec-config/--voice` switch the agent's TTS to S2-Pro."""
    flags = {"checkpoint": args.checkpoint, "codec": args.codec, "codec_config": args.codec_config, "voice": args.voice}
    given = {k: str(v) for k, v in flags.items() if v is not None}
    if not given:
        return config
    from agent_runtime.errors import ConfigError

    if config.tts.engine != "s2pro" and not {"checkpoint", "codec"} <= set(given):
        raise ConfigError("S2-Pro needs both --checkpoint DIR and --codec CODEC.pth")
    options = {**(config.tts.options if config.tts.engine == "s2pro" else {}), **given}
    tts = config.tts.model_copy(update={"engine": "s2pro", "options": options})
    return config.model_copy(update={"tts": tts})


async def _main(config, args: argparse.Namespace) -> int:
    from agent_runtime.demo.run import format_report, prepare_caller, run_call, save_recording
    from agent_runtime.engines import build_engines, warm_up

    log.info("loading engines (first run after install takes a few seconds)...")
    engines = await asyncio.to_thread(build_engines, config)
    await warm_up(engines)
    log.info("preparing the caller's voice...")
    caller_voice = engines.synthesizer
    if engines.synthesizer.name != "piper":  # the caller speaks piper whatever the agent's TTS
        from agent_runtime.tts.piper_engine import PiperSynthesizer

        caller_voice = await asyncio.to_thread(PiperSynthesizer)
    lines = await prepare_caller(list(config.demo.caller_turns), caller_voice)
    log.info("calling: %d caller turns, in real time", len(lines))
    result = await run_call(config, engines, lines)
    print(format_report(result))
    save_recording(result, args.out)
    args.metrics_out.parent.mkdir(parents=True, exist_ok=True)
    args.metrics_out.write_text("".join(t.to_json() + "\n" for t in result.metrics.turns))
    print(f"\ncall recording: {args.out} (caller left, agent right); per-turn metrics: {args.metrics_out}")
    print(json.dumps({"summary": result.metrics.summary()}))
    await engines.llm.aclose()
    return 0
