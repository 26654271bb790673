"""The load harness is a wire client: it starts `agent-runtime serve` as a process with flags and
imports nothing of the turn manager; the instant-engine flags of `serve` behave."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from loadtest.chaos.target import target_argv
from loadtest.server import runtime_argv
from tests.conftest import REPO_ROOT

HARNESS = ["loadtest.main", "loadtest.server", "loadtest.runner", "loadtest.chaos.main", "loadtest.chaos.campaign",
           "loadtest.chaos.target", "loadtest.callers.webrtc", "loadtest.callers.twilio"]


def test_harness_imports_nothing_of_the_turn_manager() -> None:
    code = (
        f"import importlib, sys\nfor m in {HARNESS!r}: importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k.startswith(('agent_runtime.turn', 'agent_runtime.engine',"
        " 'agent_runtime.commands.serve', 'agent_runtime.bench')))\nprint(bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_harness_starts_the_real_serve_command_with_flags(tmp_path: Path) -> None:
    argv = runtime_argv(instant=True, config=tmp_path / "c.yaml", port=1234)
    assert argv[1:4] == ["-m", "agent_runtime.cli", "serve"]
    assert argv[-3:] == ["--instant-engines", "--instant-reply", "long"]
    assert "--config" in argv and "1234" in argv
    assert "--instant-engines" not in runtime_argv(instant=False, config=None, port=1)
    chaos = target_argv(tmp_path / "c.yaml", instant=True, port=9)
    assert chaos[1:4] == ["-m", "agent_runtime.cli", "serve"]
    assert chaos[-2:] == ["--instant-engines", "--instant-llm-from-config"]
    assert not any("instant_server" in a for a in argv + chaos)


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent_runtime.cli", "serve", "--port", "0", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_instant_flags_errors_are_one_line(tmp_path: Path) -> None:
    for args, expected in (
        (["--instant-reply", "long"], "need --instant-engines"),
        (["--instant-llm-from-config"], "need --instant-engines"),
        (["--instant-engines", "--instant-reply", "long", "--instant-llm-from-config"], "exclude each other"),
        (["--instant-engines", "--instant-reply", str(tmp_path / "missing.txt")], "not 'short', 'long' or a readable"),
    ):
        r = _serve(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert expected in r.stderr and "Traceback" not in r.stderr
        assert r.stderr.strip().count("\n") == 0, r.stderr


def test_serve_help_documents_the_instant_flags() -> None:
    r = _serve("--help")
    assert r.returncode == 0
    for flag in ("--instant-engines", "--instant-reply", "--instant-llm-from-config"):
        assert flag in r.stdout
