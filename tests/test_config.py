"""Config validation and documentation."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent_runtime.config import describe_config, load_config
from agent_runtime.errors import ConfigError
from tests.conftest import REPO_ROOT


def test_every_shipped_config_validates() -> None:
    for path in (REPO_ROOT / "configs").glob("*.yaml"):
        load_config(path)


def test_unknown_key_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("turn:\n  end_of_turn_silence: 300\n")
    with pytest.raises(ConfigError, match=r"turn\.end_of_turn_silence: unknown key"):
        load_config(p)


def test_bad_values_and_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("vad:\n  frame_ms: 25\n")
    with pytest.raises(ConfigError, match="frame_ms"):
        load_config(p)
    p.write_text("vad: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_key_is_documented() -> None:
    doc = (REPO_ROOT / "docs" / "configuration.md").read_text()
    for key, _default, description in describe_config():
        assert f"`{key}`" in doc, f"{key} missing from docs/configuration.md"
        assert description, f"{key} has no description"


def test_cli_reports_config_errors_in_one_line(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("llm:\n  backnd: local\n")
    r = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/agent-runtime"), "config", "check", str(p)], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "llm.backnd: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


def _config_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO_ROOT / ".venv/bin/agent-runtime"), "config", "check", str(path)], capture_output=True, text=True
    )


@pytest.mark.parametrize("kind", ["binary", "directory"])
def test_config_check_on_a_binary_file_or_a_directory(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "cfgdir"
    if kind == "binary":
        path = tmp_path / "c.yaml"
        path.write_bytes(bytes(range(256)) * 4)
    else:
        path.mkdir()
    r = _config_check(path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and str(path) in r.stderr
    assert ("not a text file" if kind == "binary" else "Is a directory") in r.stderr


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("llm:\n  backend: nosuch\n", "unknown llm.backend 'nosuch' (installed: "),
        ("tts:\n  engine: nosuch\n", "unknown tts.engine 'nosuch' (installed: "),
    ],
)
def test_config_check_knows_the_installed_plugins(tmp_path: Path, yaml_text: str, message: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    r = _config_check(p)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and message in r.stderr
    assert ("local" if "llm" in message else "piper") in r.stderr  # the installed names are listed
    p.write_text("llm:\n  backend: echo\ntts:\n  engine: piper\n")  # a plugin name that is installed
    r = _config_check(p)
    assert r.returncode == 0 and r.stdout.strip().endswith(": ok")


def test_check_plugins_and_build_engines_fail_fast_on_unknown_names() -> None:
    from agent_runtime.engines import build_engines
    from agent_runtime.plugins import check_plugins

    check_plugins(load_config(None))  # the defaults are installed
    config = load_config(None, {"tts": {"engine": "nosuch"}})  # loading alone does not look at plugins
    with pytest.raises(ConfigError, match=r"unknown tts\.engine 'nosuch' \(installed: .*piper"):
        check_plugins(config)
    with pytest.raises(ConfigError, match=r"unknown tts\.engine"):
        build_engines(config)  # before any model is loaded
