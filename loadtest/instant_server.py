"""`agent-runtime serve --instant-engines` whose instant LLM gives a long reply (about 4 s of tone).

The stock instant reply lasts about 0.6 s, too short to talk over, so a barge-in scenario could not
interrupt anything. This runs the real `serve` command (same server, signals and draining) with only
the instant engines' reply text replaced. Usage: python -m loadtest.instant_server [serve options].
"""

from __future__ import annotations

import sys

LONG_REPLY = (
    "We are open from nine in the morning until six in the evening, Monday to Saturday. "
    "On Sunday the shop is closed, but you can still order online and we deliver within two days. "
    "Returns are accepted within thirty days with the receipt."
)


def instant_engines():
    """The instant engines of `agent-runtime serve --instant-engines`, with LONG_REPLY."""
    from agent_runtime.bench.instant import InstantLLM, InstantRecognizer, InstantSynthesizer
    from agent_runtime.turn.session import Engines

    return Engines(recognizer=InstantRecognizer(), llm=InstantLLM(LONG_REPLY), synthesizer=InstantSynthesizer())


def main(argv: list[str] | None = None) -> None:
    from agent_runtime import cli
    from agent_runtime.commands import serve

    serve.instant_engines = instant_engines  # serve() looks it up at call time
    cli.main(["serve", "--instant-engines", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
