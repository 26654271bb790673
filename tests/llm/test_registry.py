"""Plugin discovery: the built-in backends, the example `echo` plugin, and the CLI listing."""

from __future__ import annotations

import pytest

from agent_runtime.cli import main
from agent_runtime.errors import ConfigError
from agent_runtime.llm.base import ChatMessage, GenerationOptions, LLMBackend
from agent_runtime.llm.registry import available_backends, create_backend


def test_discovers_builtin_and_plugin_backends() -> None:
    assert {"openai", "local", "echo"} <= set(available_backends())


def test_unknown_backend_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown LLM backend 'nope' \(available: .*echo.*local.*openai"):
        create_backend("nope", {})


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        create_backend("openai", {"base_ur1": "http://x"})
    with pytest.raises(ConfigError):
        create_backend("echo", {"delay": 1})


def test_backends_build_without_loading_models() -> None:
    assert isinstance(create_backend("local", {"max_context": 512}), LLMBackend)
    assert isinstance(create_backend("openai", {"base_url": "http://127.0.0.1:1/v1", "timeout_s": 1}), LLMBackend)


async def test_echo_plugin_streams_word_by_word() -> None:
    echo = create_backend("echo", {"delay_s": 0})
    msgs = [ChatMessage("user", "Can you tell me about your return policy?")]
    deltas = [d async for d in echo.stream_chat(msgs, GenerationOptions())]
    assert len(deltas) > 3 and all(d.strip() == d.strip().split()[0] for d in deltas)
    assert "".join(deltas).startswith("You asked: can I tell you about my return policy.")


def test_plugins_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["plugins", "--check"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    for name in ("echo", "local", "openai", "piper"):
        assert f"  {name} " in out
    assert "FAILED" not in out
