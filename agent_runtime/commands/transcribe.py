"""`agent-runtime transcribe FILE`: print what is said in an audio file (faster-whisper)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent_runtime.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transcribe",
        help="transcribe an audio file with Whisper and print the text",
        description=(
            "Transcribe a WAV (or any file libsndfile reads): any sample rate, mono or stereo; it is "
            "mixed down and resampled to 16 kHz. Prints the text (an empty line if there is no speech)."
        ),
    )
    p.add_argument("file", type=Path, metavar="FILE.wav", help="audio file")
    p.add_argument("--model", default="tiny.en", help="local model dir, packaged name or hub name (default: tiny.en)")
    p.add_argument("--language", default=None, help="language code (default: en; 'auto' detects, multilingual models)")
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy, lowest latency (default: 1)")
    p.add_argument("--compute-type", default=None, help="CTranslate2 compute type (default: int8 on CPU)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the model (default: usable cores, at most 4)")
    p.add_argument("--prompt", default=None, help="initial prompt biasing vocabulary and spelling")
    p.add_argument("--timing", action="store_true", help="print audio length and load/transcription times to stderr")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="with --timing: warm up, transcribe N times, report the median and best time")
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> None:
    """Refuse numeric flags out of range with one line (before the audio or the model is loaded)."""
    if args.beam_size < 1:
        raise ConfigError(f"--beam-size {args.beam_size}: must be >= 1 (1 = greedy)")
    if args.threads < 0:
        raise ConfigError(f"--threads {args.threads}: must be >= 0 (0 = the default)")
    if args.repeat < 1:
        raise ConfigError(f"--repeat {args.repeat}: must be >= 1")


def run(args: argparse.Namespace) -> int:
    from agent_runtime.asr.whisper import WhisperRecognizer
    from agent_runtime.audio import read_audio

    check_args(args)
    audio, rate = read_audio(args.file, target_rate=WhisperRecognizer.sample_rate)  # fails fast, before loading
    language = None if args.language == "auto" else (args.language or "en")
    recognizer = WhisperRecognizer(
        args.model,
        compute_type=args.compute_type,
        cpu_threads=args.threads,
        language=language,
        beam_size=args.beam_size,
        initial_prompt=args.prompt,
    )
    runs = max(1, args.repeat)
    if runs > 1:
        recognizer.warmup()
    results = [recognizer.transcribe(audio) for _ in range(runs)]
    result = results[0]
    print(result.text.strip())
    if args.timing:
        times = sorted(r.processing_seconds for r in results)
        spent = f"{times[0]:.3f} s" if runs == 1 else f"median {times[runs // 2]:.3f} s, best {times[0]:.3f} s of {runs}"
        print(
            f"audio {result.audio_seconds:.2f} s at {rate} Hz, model load {recognizer.load_seconds:.2f} s, "
            f"transcription {spent}, language {result.language}",
            file=sys.stderr,
        )
    return 0
