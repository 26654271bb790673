"""An LLM that stalls after its first words, and one that never stops writing: the caller hears what
was said (plus the stall line), the history keeps exactly that, and the session goes on."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from agent_runtime.bench.instant import InstantRecognizer
from agent_runtime.config import CallerTurn
from agent_runtime.demo.run import CallerLine, run_call
from agent_runtime.errors import BackendError
from agent_runtime.llm.base import ChatMessage, GenerationOptions, LLMBackend
from agent_runtime.turn.session import Engines
from tests.turn.conftest import RecordingSynth, fast_config

SENTENCE = "We open at nine tomorrow morning."


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def _two_turns(say) -> list[CallerLine]:
    texts = ["What time do you open tomorrow?", "Do you deliver on weekends?"]
    return [CallerLine(CallerTurn(text=t), [say(t)]) for t in texts]


class _StallOnceLLM(LLMBackend):
    """Writes a sentence; on the first call then hangs forever, later calls finish."""

    name = "stall-once"

    def __init__(self) -> None:
        self.calls = 0
        self.hung_at: float | None = None
        self.closed_at: float | None = None

    async def stream_chat(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        self.calls += 1
        for word in SENTENCE.split(" "):
            yield word + " "
        if self.calls == 1:
            self.hung_at = time.monotonic()
            try:
                await asyncio.Event().wait()
            finally:
                self.closed_at = time.monotonic()
        yield "See you then."


@pytest.mark.slow
def test_llm_stalling_mid_reply_speaks_the_stall_line_and_goes_on(real_engines, say) -> None:
    llm = _StallOnceLLM()
    engines = Engines(real_engines.recognizer, llm, real_engines.synthesizer)
    config = fast_config(llm={"inter_token_timeout_s": 0.5}, demo={"max_reply_wait_s": 15.0})
    result = asyncio.run(run_call(config, engines, _two_turns(say)))

    first, second = result.metrics.turns
    stall_line = config.llm.stall_line
    assert first.llm_error == "stalled: no token for 0.5 s"
    assert first.agent_text == f"{SENTENCE} {stall_line}" and not first.interrupted
    # the stream was closed about inter_token_timeout_s after the last delta
    assert llm.hung_at is not None and llm.closed_at is not None
    assert 0.4 <= llm.closed_at - llm.hung_at < 3.0
    assert second.llm_error is None and second.agent_text == f"{SENTENCE} See you then."
    history = [(m.role, m.content) for m in result.session.history]
    assert history[1] == ("assistant", f"{SENTENCE} {stall_line}")
    assert history[3] == ("assistant", f"{SENTENCE} See you then.")
    # the caller heard the sentence, then the stall line
    agent = result.recording[:, 1]
    heard = " ".join(_words(real_engines.recognizer.transcribe(agent.astype(np.float32) / 32768).text))
    assert "tomorrow morning" in heard and "train of thought" in heard, heard
    assert heard.index("tomorrow morning") < heard.index("train of thought"), heard


class _EndlessLLM(LLMBackend):
    """20,000 characters without punctuation on the first call (words split across deltas)."""

    name = "endless"

    def __init__(self) -> None:
        self.calls = 0
        self.deltas = 0
        self.closed = False

    async def stream_chat(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        self.calls += 1
        if self.calls > 1:
            yield "Yes, we deliver on weekends."
            return
        try:
            for _ in range(5000):
                for piece in ("wo", "rd "):
                    self.deltas += 1
                    yield piece
                await asyncio.sleep(0)
        finally:
            self.closed = True


@pytest.mark.slow
def test_reply_cap_stops_the_llm_and_speaks_only_whole_words_within_it(say) -> None:
    llm = _EndlessLLM()
    synth = RecordingSynth(seconds_per_char=0.005)
    engines = Engines(InstantRecognizer(), llm, synth)
    config = fast_config(llm={"max_reply_chars": 100}, demo={"max_reply_wait_s": 15.0})
    result = asyncio.run(run_call(config, engines, _two_turns(say)))

    first, second = result.metrics.turns
    assert first.reply_truncated and first.llm_error is None and not first.interrupted
    assert llm.closed and llm.deltas < 200  # the stream was closed at the cap, not read to its end
    spoken_first = " ".join(t for t in synth.spoken if "word" in t)
    assert 0 < len(spoken_first) <= 100
    assert spoken_first.split() == ["word"] * len(spoken_first.split())  # whole words only
    assert first.agent_text == spoken_first  # the history keeps exactly what was spoken
    assert result.session.history[1].content == spoken_first
    assert not second.reply_truncated and second.agent_text == "Yes, we deliver on weekends."
    assert " ".join(synth.spoken[-2:]) == "Yes, we deliver on weekends."  # the opener is its own first segment


class _BreakingLLM(LLMBackend):
    """First call: a few words, then the connection drops. Second call: whitespace forever."""

    name = "breaking"

    def __init__(self) -> None:
        self.calls = 0

    async def stream_chat(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        self.calls += 1
        if self.calls == 1:
            yield "Let me check. "
            raise BackendError("connection reset")
        while True:  # whitespace is not a first token: it must not keep the reply waiting
            yield " "
            await asyncio.sleep(0.05)


@pytest.mark.slow
def test_llm_failing_after_its_first_words_ends_with_the_stall_line(say) -> None:
    synth = RecordingSynth(seconds_per_char=0.005)
    engines = Engines(InstantRecognizer(), _BreakingLLM(), synth)
    config = fast_config(llm={"first_token_timeout_s": 1.0}, demo={"max_reply_wait_s": 15.0})
    result = asyncio.run(run_call(config, engines, _two_turns(say)))

    first, second = result.metrics.turns
    assert first.llm_error == "connection reset"
    assert first.agent_text == f"Let me check. {config.llm.stall_line}"
    assert second.llm_error == "no first token in 1.0 s"
    assert second.agent_text == config.llm.fallback_line
    spoken = " ".join(synth.spoken)
    assert config.llm.stall_line in spoken and config.llm.fallback_line in spoken
