"""S2-Pro in the live loop: a real session over the loopback transport, in real time, with the
tiny fixture checkpoint (instant recognizer and LLM keep it fast; the audio is noise)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from agent_runtime.bench.instant import InstantLLM, InstantRecognizer
from agent_runtime.config import CallerTurn, load_config
from agent_runtime.demo.run import CallerLine, run_call
from agent_runtime.llm.base import ChatMessage, GenerationOptions
from agent_runtime.tts.registry import create_synthesizer
from agent_runtime.turn.session import Engines
from tests.s2pro.synth_support import make_synth, tiny_engine, wide_codec

LONG_REPLY = (
    "Our return policy is simple and fair. You can bring back anything within thirty days, with the receipt. "
    "We refund the full price to your card. Store credit is also possible if you prefer it."
)


class ScriptedLLM(InstantLLM):
    """Replies from a list, one per turn, word by word."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__(replies[0])
        self.replies = list(replies)

    async def stream_chat(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        for word in reply.split(" "):
            await asyncio.sleep(0.01)  # ~100 tokens/s
            yield word + " "


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def _line(say, text: str, **kw) -> CallerLine:
    return CallerLine(CallerTurn(text=text, **kw), [say(text)])


def _config():
    return load_config(None, {"demo": {"wait_after_reply_ms": 300, "max_reply_wait_s": 15}})


@pytest.mark.slow
def test_fixture_checkpoint_and_codec_through_the_whole_loop(s2pro_fixtures: Path, say) -> None:
    synth = create_synthesizer("s2pro", {
        "checkpoint": str(s2pro_fixtures / "tiny"), "codec": str(s2pro_fixtures / "codec_tiny.pth"),
        "codec_config": str(s2pro_fixtures / "codec_tiny.json"), "seed": 1, "max_frames_per_segment": 40,
    })  # fmt: skip
    try:
        synth.warmup()
        engines = Engines(InstantRecognizer(), ScriptedLLM(["We open at nine. See you tomorrow, and have a great evening."]), synth)
        result = asyncio.run(run_call(_config(), engines, [_line(say, "What time do you open tomorrow?")]))
    finally:
        synth.close()
    (turn,) = result.metrics.turns
    assert not turn.interrupted and turn.agent_text == "We open at nine. See you tomorrow, and have a great evening."
    assert turn.llm_first_token is not None and turn.tts_first_audio is not None and turn.first_audio_out is not None
    assert np.abs(result.recording[:, 1]).max() > 0  # S2-Pro noise reached the caller
    assert [m.role for m in result.session.history] == ["user", "assistant"]


@pytest.mark.slow
def test_barge_in_truncates_the_history_to_what_was_heard(s2pro_fixtures: Path, say) -> None:
    # S2-Pro frames of 46 ms (a random codec with the real frame length): the reply lasts ~3.5 s
    synth = make_synth(tiny_engine(s2pro_fixtures), wide_codec(s2pro_fixtures), seed=2, max_frames_per_segment=20)
    engines = Engines(InstantRecognizer("Can you tell me about returns?"), ScriptedLLM([LONG_REPLY, "Yes, we do."]), synth)
    lines = [
        _line(say, "Can you tell me about your return policy?"),
        _line(say, "Sorry, do you deliver on weekends?", interrupt_after_ms=700),
    ]
    result = asyncio.run(run_call(_config(), engines, lines))
    first = result.metrics.turns[0]
    assert first.interrupted
    assistant = result.session.history[1]
    assert assistant.role == "assistant" and assistant.interrupted
    heard, said = _words(assistant.content), _words(LONG_REPLY)
    assert 0 < len(heard) < len(said)
    assert heard == said[: len(heard)]  # a prefix of the reply, cut at a segment/frame boundary
    assert len(result.metrics.turns) == 2
