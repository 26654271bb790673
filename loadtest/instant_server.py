"""`agent-runtime serve --instant-engines` whose instant LLM gives a long reply (about 4 s of tone).

The stock instant reply lasts about 0.6 s, too short to talk over, so a barge-in scenario could not
interrupt anything. This runs the real `serve` command (same server, signals and draining) with only
the instant engines' reply text replaced. Usage: python -m loadtest.instant_server [serve options].

`--llm-from-config` (this module's own flag, needs `--config`): instant ASR and TTS, but the LLM the
config names (e.g. `backend: openai` pointed at the chaos campaign's fault-injecting LLM server), so
the real LLM client path is exercised while the rest answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

LONG_REPLY = (
    "We are open from nine in the morning until six in the evening, Monday to Saturday. "
    "On Sunday the shop is closed, but you can still order online and we deliver within two days. "
    "Returns are accepted within thirty days with the receipt."
)
LLM_FROM_CONFIG = "--llm-from-config"


def instant_engines():
    """The instant engines of `agent-runtime serve --instant-engines`, with LONG_REPLY."""
    from agent_runtime.bench.instant import InstantLLM, InstantRecognizer, InstantSynthesizer
    from agent_runtime.turn.session import Engines

    return Engines(recognizer=InstantRecognizer(), llm=InstantLLM(LONG_REPLY), synthesizer=InstantSynthesizer())


def instant_with_configured_llm(config_path: Path):
    """Engines factory: instant recognizer and synthesizer, the LLM backend `config_path` configures."""

    def load():
        from agent_runtime.bench.instant import InstantRecognizer, InstantSynthesizer
        from agent_runtime.config import load_config
        from agent_runtime.llm.registry import create_backend
        from agent_runtime.turn.session import Engines

        llm = load_config(config_path).llm
        return Engines(recognizer=InstantRecognizer(), llm=create_backend(llm.backend, dict(llm.options)),
                       synthesizer=InstantSynthesizer())

    return load


def _config_arg(argv: list[str]) -> Path | None:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if a.startswith("--config="):
            return Path(a.split("=", 1)[1])
    return None


def main(argv: list[str] | None = None) -> None:
    from agent_runtime import cli
    from agent_runtime.commands import serve

    args = list(sys.argv[1:] if argv is None else argv)
    if LLM_FROM_CONFIG in args:
        args.remove(LLM_FROM_CONFIG)
        config = _config_arg(args)
        if config is None:
            sys.exit(f"{LLM_FROM_CONFIG} needs --config FILE")
        serve.instant_engines = instant_with_configured_llm(config)
    else:
        serve.instant_engines = instant_engines  # serve() looks it up at call time
    cli.main(["serve", "--instant-engines", *args])


if __name__ == "__main__":
    main()
