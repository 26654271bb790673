"""The engines contract and builders: warming from the server's loader thread, the instant engines
of `serve --instant-engines`, and plugin classes that cannot be built (one-line errors)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent_runtime import plugins
from agent_runtime.bench.instant import (
    LONG_REPLY,
    SHORT_REPLY,
    InstantLLM,
    InstantRecognizer,
    InstantSynthesizer,
    reply_text,
)
from agent_runtime.config import load_config
from agent_runtime.engine_set import Engines
from agent_runtime.engines import build_instant_engines, warm_up_blocking
from agent_runtime.errors import ConfigError
from agent_runtime.llm.base import GenerationOptions
from agent_runtime.tts.base import Synthesizer
from agent_runtime.tts.stream import ChunkedSynthesizer


class _Recognizer(InstantRecognizer):
    def __init__(self) -> None:
        super().__init__()
        self.warm_threads: list[int] = []

    def warmup(self) -> None:
        self.warm_threads.append(threading.get_ident())
        super().warmup()


class _LLM(InstantLLM):
    def __init__(self) -> None:
        super().__init__()
        self.warm_loops: list[asyncio.AbstractEventLoop] = []

    async def warmup(self) -> None:
        self.warm_loops.append(asyncio.get_running_loop())


class _Synth(InstantSynthesizer):
    def __init__(self) -> None:
        super().__init__()
        self.warmed = 0

    def warmup(self) -> None:
        self.warmed += 1


async def test_warm_up_from_a_worker_thread_runs_the_llm_on_the_serving_loop() -> None:
    engines = Engines(_Recognizer(), _LLM(), _Synth())
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(warm_up_blocking, engines, loop)
    assert engines.llm.warm_loops == [loop]  # where the calls will use it
    assert len(engines.recognizer.warm_threads) == 1 and engines.recognizer.warm_threads[0] != threading.get_ident()
    assert engines.synthesizer.warmed == 1


async def test_warm_up_on_the_loop_itself_is_refused_not_a_deadlock() -> None:
    engines = Engines(_Recognizer(), _LLM(), _Synth())
    with pytest.raises(RuntimeError, match="worker thread"):
        warm_up_blocking(engines, asyncio.get_running_loop())


# -- the contract ------------------------------------------------------------------------------
def test_engines_contract_is_importable_from_its_old_home() -> None:
    from agent_runtime.turn import session

    assert session.Engines is Engines


# -- instant engines ---------------------------------------------------------------------------
async def _reply(engines: Engines) -> str:
    return "".join([d async for d in engines.llm.stream_chat([], GenerationOptions())]).strip()


async def test_instant_engines_reply_as_asked(tmp_path) -> None:
    config = load_config()
    assert await _reply(build_instant_engines(config, reply=reply_text("short"))) == SHORT_REPLY
    assert await _reply(build_instant_engines(config, reply=reply_text("long"))) == LONG_REPLY
    f = tmp_path / "reply.txt"
    f.write_text("Hello there.\nHow can I help?\n")
    assert await _reply(build_instant_engines(config, reply=reply_text(str(f)))) == "Hello there. How can I help?"


async def test_instant_engines_can_use_the_configured_llm() -> None:
    config = load_config(overrides={"llm": {"backend": "echo", "options": {"delay_s": 0}}})
    engines = build_instant_engines(config, reply="unused", llm_from_config=True)
    assert not isinstance(engines.llm, InstantLLM) and isinstance(engines.recognizer, InstantRecognizer)


def test_instant_reply_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="readable text file"):
        reply_text(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        reply_text(str(tmp_path / "empty.txt"))


# -- plugins that cannot be built --------------------------------------------------------------
class NoFactorySynth(ChunkedSynthesizer):
    """A TTS plugin that forgot `from_options`."""

    name = "nofactory"
    sample_rate = 16_000

    def open_utterance(self):  # pragma: no cover - never built
        raise AssertionError


class AbstractSynth(ChunkedSynthesizer):
    """A TTS plugin that forgot `open_utterance`."""

    @classmethod
    def from_options(cls, **options):  # pragma: no cover - never built
        return cls(**options)


class BeepSynth(NoFactorySynth):
    @classmethod
    def from_options(cls, **options):
        return cls(**options)


def _fake_plugin(monkeypatch: pytest.MonkeyPatch, attr: str):
    from importlib.metadata import EntryPoint

    ep = EntryPoint(name="beep", value=f"tests.test_engines:{attr}", group="agent_runtime.tts_engines")
    monkeypatch.setattr(plugins, "available", lambda group: {"beep": ep})


@pytest.mark.parametrize(
    ("attr", "message"),
    [("NoFactorySynth", "has no from_options classmethod: add"), ("AbstractSynth", "does not implement open_utterance"),
     ("InstantLLM", "is not a Synthesizer subclass")],
)
def test_a_plugin_that_cannot_be_built_is_a_one_line_error(monkeypatch, attr: str, message: str) -> None:
    _fake_plugin(monkeypatch, attr)
    with pytest.raises(ConfigError) as err:
        plugins.create("agent_runtime.tts_engines", "TTS engine", Synthesizer, "beep", {})
    text = str(err.value)
    assert message in text and f"tests.test_engines:{attr}" in text and "\n" not in text


def test_a_plugin_with_from_options_builds(monkeypatch) -> None:
    _fake_plugin(monkeypatch, "BeepSynth")
    synth = plugins.create("agent_runtime.tts_engines", "TTS engine", Synthesizer, "beep", {})
    assert isinstance(synth, BeepSynth)
