"""deploy/gpu-bench.sh's agent-runtime command lines parse with the real CLI (a GPU run is rare and
short: a typo there would waste it). The script's bash is checked with `bash -n`."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from agent_runtime.cli import build_parser
from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "deploy" / "gpu-bench.sh"


def _commands() -> dict[str, list[str]]:
    """Each step's `agent_runtime.cli` arguments, with the script's arrays and variables filled in."""
    text = SCRIPT.read_text(encoding="utf-8").replace("\\\n", " ")
    arrays = {name: shlex.split(body) for name, body in re.findall(r"^(\w+)=\((.*)\)$", text, re.M)}
    out: dict[str, list[str]] = {}
    for name, body in re.findall(r"^\s+([\w-]+)\) step [\w-]+ \d+ (.*?);;", text, re.M):
        args: list[str] = []
        for word in shlex.split(body):
            m = re.fullmatch(r"\$\{(\w+)\[@\]\}", word)
            args += arrays[m.group(1)] if m else [word]
        if "agent_runtime.cli" in args:
            args = args[args.index("agent_runtime.cli") + 1 :]
            out[name] = [a.replace("$SERVE_DURATION", "10").replace("$OUT", "/tmp/out") for a in args]
    return out


def test_the_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_default_steps_include_bench_serve() -> None:
    assert {"bench-serve", "bench-serve-profile", "dual-ar", "synth"} <= set(_commands())


@pytest.mark.parametrize("step", sorted(_commands()))
def test_each_step_parses(step: str) -> None:
    args = build_parser().parse_args(_commands()[step])
    assert callable(args.func)
