"""TTS engine discovery through the `agent_runtime.tts_engines` entry-point group."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

from agent_runtime import plugins
from agent_runtime.tts.base import Synthesizer

GROUP = "agent_runtime.tts_engines"


def available_engines() -> dict[str, EntryPoint]:
    return plugins.available(GROUP)


def create_synthesizer(name: str, options: dict[str, Any] | None = None) -> Synthesizer:
    """Build the TTS engine registered as `name` with `from_options(**options)`."""
    return plugins.create(GROUP, "TTS engine", Synthesizer, name, options)
