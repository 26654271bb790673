"""The `agent-runtime` command line.

Each subcommand lives with the code it drives and registers itself here through a small
`register(subparsers)` function, so `--help` stays fast (heavy imports happen inside handlers).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from agent_runtime.errors import AgentRuntimeError

# (module, attribute) pairs; each attribute is `register(subparsers) -> None`.
_TOP_LEVEL_COMMANDS: list[tuple[str, str]] = [
    ("agent_runtime.commands.demo", "register"),
    ("agent_runtime.commands.transcribe", "register"),
    ("agent_runtime.commands.synth", "register"),
    ("agent_runtime.commands.llm_serve", "register"),
    ("agent_runtime.commands.bench", "register"),
    ("agent_runtime.commands.plugins", "register"),
    ("agent_runtime.commands.config_cmd", "register"),
    ("agent_runtime.commands.serve", "register"),
    ("agent_runtime.commands.tts_serve", "register"),
    ("agent_runtime.commands.bench_media", "register"),
    ("agent_runtime.commands.loadtest", "register"),
    ("agent_runtime.tts.s2pro.cli_voice", "register"),
]
# Subcommands under `agent-runtime s2pro ...`.
_S2PRO_COMMANDS: list[tuple[str, str]] = [
    ("agent_runtime.tts.s2pro.cli_generate", "register"),
    ("agent_runtime.tts.s2pro.cli_codec", "register"),
    ("agent_runtime.tts.s2pro.cli_synth", "register"),
    ("agent_runtime.tts.s2pro.serving.bench_serve", "register"),
]


def _register_all(sub: argparse._SubParsersAction, table: list[tuple[str, str]]) -> None:
    for module_name, attr in table:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # not written yet / not installed: skip silently
                continue
            raise
        getattr(module, attr)(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-runtime",
        description="Real-time voice-agent runtime: VAD -> ASR -> LLM -> streaming TTS, with barge-in.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _register_all(sub, _TOP_LEVEL_COMMANDS)
    s2pro = sub.add_parser(
        "s2pro",
        help="S2-Pro Dual-AR generation and codec tools",
        description="Fish Audio S2-Pro: text-to-codes generation, codec encode/decode, benchmarks.",
    )
    s2pro_sub = s2pro.add_subparsers(dest="s2pro_command", metavar="S2PRO_COMMAND")
    _register_all(s2pro_sub, _S2PRO_COMMANDS)
    s2pro.set_defaults(func=lambda _args: s2pro.print_help() or 2)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        sys.exit(2)
    try:
        rc = func(args)
    except AgentRuntimeError as exc:
        print(f"agent-runtime: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if exc.filename is None:
            raise
        print(f"agent-runtime: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)  # a user's path
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(int(rc or 0))


if __name__ == "__main__":
    main()
