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
