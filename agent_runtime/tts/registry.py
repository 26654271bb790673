"""TTS engine discovery through the `agent_runtime.tts_engines` entry-point group."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from agent_runtime.errors import ConfigError
from agent_runtime.tts.base import Synthesizer

GROUP = "agent_runtime.tts_engines"


def available_engines() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def create_synthesizer(name: str, options: dict[str, Any] | None = None) -> Synthesizer:
    """Build the TTS engine registered as `name` with `from_options(**options)`."""
    engines = available_engines()
    if name not in engines:
        known = ", ".join(sorted(engines)) or "none installed"
        raise ConfigError(f"unknown TTS engine {name!r} (available: {known})")
    cls = engines[name].load()
    factory = getattr(cls, "from_options", cls)
    try:
        return factory(**(options or {}))
    except TypeError as exc:
        raise ConfigError(f"tts.options for {name!r}: {exc}") from None
