"""Engines that answer instantly, to measure what the runtime itself adds to a turn.

They are benchmark instruments (`agent-runtime bench overhead`, `agent-runtime serve
--instant-engines` for the load harness), not defaults: the recognizer returns a fixed transcript,
the LLM a fixed reply word by word, the synthesizer a short tone per segment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import numpy as np

from agent_runtime.asr.base import Recognizer, Transcript
from agent_runtime.errors import ConfigError
from agent_runtime.llm.base import ChatMessage, GenerationOptions, LLMBackend
from agent_runtime.tts.base import UtteranceSynth
from agent_runtime.tts.stream import ChunkedSynthesizer

SHORT_REPLY = "We open at nine. See you tomorrow, and have a great evening."
"""The stock instant reply: about 0.6 s of tone."""
LONG_REPLY = (
    "We are open from nine in the morning until six in the evening, Monday to Saturday. "
    "On Sunday the shop is closed, but you can still order online and we deliver within two days. "
    "Returns are accepted within thirty days with the receipt."
)
"""About 4 s of tone: long enough for a caller to talk over (barge-in scenarios)."""
REPLIES = {"short": SHORT_REPLY, "long": LONG_REPLY}


def reply_text(choice: str) -> str:
    """`short`, `long`, or the path of a UTF-8 text file holding the reply."""
    if choice in REPLIES:
        return REPLIES[choice]
    path = Path(choice)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"instant reply: not 'short', 'long' or a readable text file: {choice} ({reason})") from None
    text = " ".join(text.split())
    if not text:
        raise ConfigError(f"instant reply file {choice} is empty")
    return text


class InstantRecognizer(Recognizer):
    def __init__(self, text: str = "What time do you open tomorrow?") -> None:
        super().__init__()
        self.text = text

    def transcribe(self, audio: np.ndarray) -> Transcript:
        return Transcript(self.text, len(audio) / self.sample_rate)


class InstantLLM(LLMBackend):
    name = "instant"

    def __init__(self, reply: str = SHORT_REPLY) -> None:
        self.reply = reply

    async def stream_chat(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        for word in self.reply.split(" "):
            yield word + " "


class _ToneUtterance(UtteranceSynth):
    def __init__(self, rate: int, seconds_per_char: float) -> None:
        self.rate = rate
        self.seconds_per_char = seconds_per_char

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        n = int(self.rate * self.seconds_per_char * max(len(text), 1))
        t = np.arange(n) / self.rate
        yield (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


class InstantSynthesizer(ChunkedSynthesizer):
    name = "instant"

    def __init__(self, sample_rate: int = 16_000, seconds_per_char: float = 0.01) -> None:
        self.sample_rate = sample_rate
        self.seconds_per_char = seconds_per_char

    def open_utterance(self) -> UtteranceSynth:
        return _ToneUtterance(self.sample_rate, self.seconds_per_char)
