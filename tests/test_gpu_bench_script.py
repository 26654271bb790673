"""deploy/gpu-bench.sh's agent-runtime command lines parse with the real CLI (a GPU run is rare and
short: a typo there would waste it). The script's bash is checked with `bash -n`, and the wheels it
carries to a GPU machine (deploy/gpu-wheels.txt) against the package's requirements."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


WHEELS_LIST = REPO_ROOT / "deploy" / "gpu-wheels.txt"


def _wheel_pins() -> dict[str, str]:
    lines = [ln.strip() for ln in WHEELS_LIST.read_text(encoding="utf-8").splitlines()]
    pins = [ln.split("==") for ln in lines if ln and not ln.startswith("#")]
    assert all(len(p) == 2 for p in pins), "one exact pin (name==version) per line"
    return {canonicalize_name(name): version for name, version in pins}


def test_the_wheel_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(REPO_ROOT / "deploy" / "gpu-wheels.sh")], check=True)


def test_carried_wheels_satisfy_the_package_requirements() -> None:
    """Each carried wheel's pin meets pyproject's requirement for it (core and test extras), and the
    script's import check names only modules installed here."""
    pins = _wheel_pins()
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(r) for r in meta["dependencies"] + meta["optional-dependencies"]["test"]]
    checked = 0
    for req in requirements:
        if canonicalize_name(req.name) in pins:
            assert req.specifier.contains(pins[canonicalize_name(req.name)]), f"{req} vs the pin"
            checked += 1
    assert checked >= 4  # pydantic, soxr, soundfile, pytest-asyncio at least
    needed = re.search(r"^NEEDED=([\w,]+)$", SCRIPT.read_text(encoding="utf-8"), re.M)
    assert needed is not None
    for module in needed.group(1).split(","):
        importlib.import_module(module)
