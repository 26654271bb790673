"""The engines contract: the loaded ASR, LLM and TTS engines that every call of a process shares.

`agent_runtime.engines.build_engines` builds one from a config; a `Session` (the turn manager) uses
one. Both import it from here, so neither depends on the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_runtime.asr.base import Recognizer
from agent_runtime.llm.base import LLMBackend
from agent_runtime.tts.base import Synthesizer

__all__ = ["Engines"]


@dataclass(frozen=True, slots=True)
class Engines:
    """The shared, loaded engines a session uses."""

    recognizer: Recognizer
    llm: LLMBackend
    synthesizer: Synthesizer
