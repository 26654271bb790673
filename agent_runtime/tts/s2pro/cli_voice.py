"""`agent-runtime voice add | list | remove | show`: manage the S2-Pro voice library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `voice` command group to the top-level `agent-runtime` subcommands."""
    voice = sub.add_parser(
        "voice",
        help="manage cloned voices (S2-Pro zero-shot references)",
        description=(
            "A voice is a reference recording encoded with the S2-Pro codec plus its transcript; the\n"
            "synthesizer uses it as the zero-shot cloning prompt. Library: --library DIR, else\n"
            "$AGENT_RUNTIME_VOICES, else ~/.local/share/agent-runtime/voices."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    vsub = voice.add_subparsers(dest="voice_command", metavar="VOICE_COMMAND")
    voice.set_defaults(func=lambda _args: voice.print_help() or 2)

    def library_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--library", metavar="DIR", help="voice library directory (default: see `voice --help`)")

    add = vsub.add_parser(
        "add",
        help="encode a reference recording and store it as a named voice",
        description=(
            "Check a reference recording (3-30 s of clean speech: refused under 3 s, silent or heavily\n"
            "clipped; warned over 30 s), encode it with the codec and store codes + transcript + metadata.\n\n"
            "example:\n  agent-runtime voice add alice --audio alice.wav --text \"Hello, I'm Alice.\" --codec codec.pth"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add.add_argument("name", help="voice name: letters, digits, '_' or '-' (max 64)")
    add.add_argument("--audio", required=True, metavar="REF.wav", help="reference recording (any rate, mono or stereo)")
    add.add_argument("--text", required=True, help="exact transcript of the reference recording")
    add.add_argument("--codec", required=True, metavar="CODEC.pth", help="S2-Pro codec checkpoint")
    add.add_argument("--codec-config", metavar="CFG.json", help="codec architecture JSON (default: S2-Pro)")
    add.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="codec dtype (default fp32)")
    add.add_argument("--replace", action="store_true", help="overwrite an existing voice of that name")
    add.add_argument("--force", action="store_true", help="accept heavily clipped audio")
    library_arg(add)
    add.set_defaults(func=cmd_add)

    lst = vsub.add_parser("list", help="list the stored voices", description="List the voices of the library.")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    library_arg(lst)
    lst.set_defaults(func=cmd_list)

    show = vsub.add_parser("show", help="print one voice's metadata", description="Print a voice's metadata as JSON.")
    show.add_argument("name")
    library_arg(show)
    show.set_defaults(func=cmd_show)

    rm = vsub.add_parser("remove", help="delete a stored voice", description="Delete a voice from the library.")
    rm.add_argument("name")
    library_arg(rm)
    rm.set_defaults(func=cmd_remove)


def _library(args: argparse.Namespace):  # -> VoiceLibrary
    from agent_runtime.tts.s2pro.voices import VoiceLibrary

    return VoiceLibrary(Path(args.library) if args.library else None)


def cmd_add(args: argparse.Namespace) -> int:
    from agent_runtime.tts.s2pro.codec_loader import load_codec
    from agent_runtime.tts.s2pro.voices import check_name

    check_name(args.name)  # fail before loading a 1.9 GB codec
    lib = _library(args)
    if args.name in lib and not args.replace:
        from agent_runtime.tts.s2pro.voices import VoiceError

        raise VoiceError(f"a voice named {args.name!r} already exists in {lib.root} (use --replace)")
    codec = load_codec(args.codec, args.codec_config, dtype=args.dtype)
    info = {"checkpoint": str(Path(args.codec).resolve()), "config": codec.config.name, "dtype": args.dtype}
    voice, report = lib.add_from_audio(args.name, args.audio, args.text, codec, replace=args.replace,
                                       force=args.force, codec_info=info)
    for w in report.warnings:
        print(f"agent-runtime: warning: {args.audio}: {w}", file=sys.stderr)
    print(f"added voice {voice.name!r}: {report.duration_s:.1f} s -> {voice.frames} frames, stored in {voice.path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    lib = _library(args)
    voices = list(lib)
    if args.json:
        print(json.dumps([{"name": v.name, "frames": v.frames, "duration_s": v.duration_s, "text": v.text,
                           "created_at": v.meta.get("created_at")} for v in voices], indent=2, ensure_ascii=False))
        return 0
    if not voices:
        print(f"no voices in {lib.root}")
        return 0
    width = max(len(v.name) for v in voices)
    for v in voices:
        text = v.text if len(v.text) <= 60 else v.text[:57] + "..."
        print(f"{v.name:<{width}}  {v.duration_s:5.1f} s  {v.frames:4d} frames  {text}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    v = _library(args).get(args.name)
    print(json.dumps({**v.meta, "text": v.text, "path": str(v.path)}, indent=2, ensure_ascii=False))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    lib = _library(args)
    lib.remove(args.name)
    print(f"removed voice {args.name!r} from {lib.root}")
    return 0
