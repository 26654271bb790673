"""Example agent-runtime LLM backend plugin: a rule-based "echo" backend, no model needed.

It answers by paraphrasing the caller's last message in short sentences and streams the reply word
by word, like a real model would. Useful to test a voice pipeline without an LLM, and as a template
for your own backend: subclass `LLMBackend`, implement `stream_chat`, and declare an entry point in
the `agent_runtime.llm_backends` group (see this package's pyproject.toml and README.md).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from agent_runtime.errors import ConfigError
from agent_runtime.llm.base import ChatMessage, GenerationOptions, LLMBackend

__all__ = ["EchoBackend", "compose_reply"]

_GREETINGS = ("hi", "hello", "hey", "good morning", "good afternoon", "good evening")
# First/second person swaps so "I need my order" becomes "you need your order".
_SWAPS = {
    "i": "you", "me": "you", "my": "your", "mine": "yours", "i'm": "you're", "i've": "you've",
    "i'd": "you'd", "i'll": "you'll", "am": "are", "myself": "yourself", "we": "you", "our": "your",
    "you": "I", "your": "my", "yours": "mine", "you're": "I'm",
}


class EchoBackend(LLMBackend):
    """Options: `delay_s` (pause before each word, default 0.02), `prefix` (opening words)."""

    name = "echo"

    def __init__(self, delay_s: float = 0.02, prefix: str = "") -> None:
        if delay_s < 0:
            raise ConfigError("echo backend: delay_s must be >= 0")
        self.delay_s = float(delay_s)
        self.prefix = prefix

    @classmethod
    def from_options(cls, **options: Any) -> EchoBackend:
        unknown = set(options) - {"delay_s", "prefix"}
        if unknown:
            raise ConfigError(f"echo backend: unknown option(s) {sorted(unknown)} (known: delay_s, prefix)")
        return cls(**options)

    async def stream_chat(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        last = next((m.content for m in reversed(messages) if m.role == "user"), "")
        reply = " ".join(p for p in (self.prefix, compose_reply(last)) if p)
        for i, word in enumerate(reply.split()[: options.max_tokens]):
            await asyncio.sleep(self.delay_s)  # cancellation lands here, between words
            yield word if i == 0 else " " + word


def compose_reply(text: str) -> str:
    """A short reply that mirrors `text`: greeting, question or statement."""
    words = text.strip()
    if not words:
        return "Sorry, I did not catch that. Could you say it again?"
    lowered = words.lower().rstrip("!.? ")
    if lowered in _GREETINGS:
        return "Hello! How can I help you today?"
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", words) if s.strip()]
    question = next((s for s in sentences if s.endswith("?")), None)
    if question:
        return f"You asked: {_mirror(question.rstrip('?'))}. Good question. Let me check that for you."
    return f"You said {_mirror(sentences[-1].rstrip('.!'))}. I understand."


def _mirror(sentence: str) -> str:
    """Swap first and second person; lower-case the opening word unless it is "I" or an acronym."""
    out = [_SWAPS.get(w.lower(), w) for w in sentence.split()]
    if out and out[0] != "I" and out[0][1:].islower():
        out[0] = out[0].lower()
    return " ".join(out)
