"""`agent-runtime synth "text" -o out.wav`: speak text with a TTS engine through the streaming contract.

The text goes through the same path as a reply (chunker -> engine -> `TTSChunk`s), so `--stream`
shows when each chunk became available. Engines are `agent_runtime.tts_engines` entry points built
with `from_options(**options)`; engine flags are declared in `ENGINE_FLAGS` (flag -> option name),
so an engine adds its own flags there (S2-Pro: `--checkpoint`, `--codec`, `--codec-config`, `--voice`;
`--checkpoint` alone selects the s2pro engine). `--config` takes the engine and options from a config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_runtime.errors import AgentRuntimeError, ConfigError


@dataclass(frozen=True)
class EngineFlag:
    """A command-line flag that becomes `options[option]` for the engine's `from_options`."""

    flags: tuple[str, ...]
    option: str
    help: str
    kwargs: dict[str, Any] = field(default_factory=dict)


ENGINE_FLAGS: list[EngineFlag] = [
    EngineFlag(("--voice",), "voice",
               "voice to use (piper: packaged name or .onnx path, default en_US-joe-medium; "
               "s2pro: a voice-library name, default the model's own voice)", {"metavar": "NAME"}),
    EngineFlag(("--speed",), "speed", "speaking rate, >1 is faster (piper)", {"type": float}),
    EngineFlag(("--noise",), "noise_scale", "generator noise (piper; 0 = deterministic)", {"type": float}),
    EngineFlag(("--checkpoint",), "checkpoint", "S2-Pro Dual-AR checkpoint directory (selects --engine s2pro)",
               {"metavar": "DIR"}),
    EngineFlag(("--codec",), "codec", "S2-Pro codec weights (codec.pth)", {"metavar": "CODEC.pth"}),
    EngineFlag(("--codec-config",), "codec_config", "S2-Pro codec architecture JSON (default: the S2-Pro codec)",
               {"metavar": "CFG.json"}),
    EngineFlag(("--voice-library",), "voice_library", "S2-Pro voice library root (default: $AGENT_RUNTIME_VOICES)",
               {"metavar": "DIR"}),
    EngineFlag(("--device",), "device", "S2-Pro torch device (cpu, cuda)", {}),
    EngineFlag(("--seed",), "seed", "S2-Pro sampling seed (reproducible audio)", {"type": int}),
]  # fmt: skip
# Flags that only the S2-Pro engine understands: giving one selects it when --engine is not given.
S2PRO_ONLY = ("checkpoint", "codec", "codec_config", "voice_library", "device", "seed")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="synthesise text to a WAV file with the TTS engine (streaming, clause by clause)",
        description=(
            "Speak TEXT with a TTS engine and write a mono PCM16 WAV at the engine's rate. The text is cut "
            "into segments as a reply would be (first clause first), so --stream shows the streaming latency."
        ),
    )
    p.add_argument("text", metavar="TEXT", help="text to speak ('-' reads standard input)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.wav", help="WAV file to write")
    p.add_argument("--engine", default=None,
                   help="TTS engine entry-point name (default: the config's, s2pro with --checkpoint, else piper)")
    p.add_argument("--config", type=Path, default=None, metavar="CFG.yaml",
                   help="take the engine and its options from this config's tts section (flags override)")
    for flag in ENGINE_FLAGS:
        p.add_argument(*flag.flags, dest=f"engine_{flag.option}", default=None, help=flag.help, **flag.kwargs)
    p.add_argument("-O", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other engine option (VALUE parsed as JSON when it can be); repeatable")
    p.add_argument("--stream", action="store_true",
                   help="print each chunk as it becomes available: time since start, duration, segment")
    p.add_argument("--word-delay-ms", type=float, default=0.0,
                   help="push the text word by word with this delay, as an LLM would stream it")
    p.add_argument("--no-warmup", action="store_true", help="time the cold first synthesis too")
    p.set_defaults(func=run)


def engine_choice(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(engine name, options): the config's tts section (if --config), overridden by the flags."""
    engine, options = "piper", {}
    if getattr(args, "config", None) is not None:
        from agent_runtime.config import load_config

        tts = load_config(args.config).tts
        engine, options = tts.engine, dict(tts.options)
    flags = engine_options(args)
    if args.engine is not None:
        if args.engine != engine:
            options = {}
        engine = args.engine
    elif any(k in flags for k in S2PRO_ONLY):
        if engine != "s2pro":
            options = {}
        engine = "s2pro"
    return engine, {**options, **flags}


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for the engine's `from_options`, from the engine flags and `-O KEY=VALUE`."""
    options: dict[str, Any] = {}
    for flag in ENGINE_FLAGS:
        value = getattr(args, f"engine_{flag.option}", None)
        if value is not None:
            options[flag.option] = value
    for item in args.option:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def run(args: argparse.Namespace) -> int:
    import asyncio

    from agent_runtime.tts.registry import create_synthesizer

    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        raise AgentRuntimeError("nothing to speak: the text is empty")
    if args.output.is_dir():
        raise ConfigError(f"-o {args.output}: is a directory; give a .wav file name")
    engine, options = engine_choice(args)
    started = time.perf_counter()
    synth = create_synthesizer(engine, options)
    load_s = time.perf_counter() - started
    if not args.no_warmup:
        synth.warmup()
    print(f"{engine}: loaded in {load_s:.2f} s, {synth.sample_rate} Hz", file=sys.stderr)
    try:
        audio, first_s, total_s = asyncio.run(
            _speak(synth, text, args.stream, args.word_delay_ms / 1000, max_segment_chars(args))
        )
    finally:
        synth.close()
    if audio.size == 0:
        raise AgentRuntimeError("the engine produced no audio (nothing speakable in the text?)")
    from agent_runtime.audio import write_wav

    write_wav(args.output, audio, synth.sample_rate)
    seconds = audio.size / synth.sample_rate
    print(
        f"wrote {args.output}: {seconds:.2f} s of audio; first audio after {first_s:.3f} s, "
        f"all after {total_s:.3f} s (RTF {total_s / seconds:.3f})",
        file=sys.stderr,
    )
    return 0


def max_segment_chars(args: argparse.Namespace) -> int:
    """`tts.max_segment_chars` of `--config` (or the default): the longest segment, as in a call."""
    from agent_runtime.config import load_config

    return load_config(getattr(args, "config", None)).tts.max_segment_chars


async def _speak(
    synth: Any, text: str, show: bool, word_delay: float, max_segment: int
) -> tuple[Any, float, float]:
    """Push the text, collect the chunks; returns (int16 audio, first-chunk time, total time)."""
    import asyncio

    import numpy as np

    stream = synth.open_stream(max_segment_chars=max_segment)
    start = time.monotonic()

    async def feed() -> None:
        if word_delay > 0:
            words = text.split(" ")
            for i, word in enumerate(words):
                stream.push_text(word if i == len(words) - 1 else word + " ")
                await asyncio.sleep(word_delay)
        else:
            stream.push_text(text)
        stream.flush()

    feeder = asyncio.create_task(feed())
    blocks: list[np.ndarray] = []
    first: float | None = None
    async for chunk in stream:
        if chunk.audio.size == 0:
            continue
        at = chunk.created_at - start
        first = at if first is None else first
        blocks.append(chunk.audio)
        if show:
            print(
                f"+{at:7.3f} s  segment {chunk.segment_id:<3d} {chunk.audio.size / chunk.sample_rate:6.2f} s  "
                f"{chunk.text!r}",
                flush=True,
            )
    await feeder
    total = time.monotonic() - start
    audio = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int16)
    return audio, (first if first is not None else total), total
