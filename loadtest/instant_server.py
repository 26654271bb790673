"""Deprecated alias: `python -m loadtest.instant_server [serve options]` runs
`agent-runtime serve --instant-engines --instant-reply long [serve options]`.

The harness now starts `agent-runtime serve` with those flags itself (loadtest/server.py,
loadtest/chaos/target.py); this module only keeps old command lines working. Its own flag
`--llm-from-config` becomes `--instant-llm-from-config`. Nothing of the runtime is imported here:
the server is the real `serve` command in a process of its own.
"""

from __future__ import annotations

import os
import sys

LLM_FROM_CONFIG = "--llm-from-config"


def serve_argv(args: list[str]) -> list[str]:
    """The `agent-runtime serve` command line this alias stands for."""
    args = list(args)
    if LLM_FROM_CONFIG in args:
        args.remove(LLM_FROM_CONFIG)
        flags = ["--instant-engines", "--instant-llm-from-config"]
    else:
        flags = ["--instant-engines", "--instant-reply", "long"]
    return [sys.executable, "-m", "agent_runtime.cli", "serve", *flags, *args]


def main(argv: list[str] | None = None) -> None:
    command = serve_argv(sys.argv[1:] if argv is None else argv)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
