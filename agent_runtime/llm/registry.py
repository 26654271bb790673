"""LLM backend discovery through the `agent_runtime.llm_backends` entry-point group.

A package adds a backend by declaring, in its pyproject.toml::

    [project.entry-points."agent_runtime.llm_backends"]
    mybackend = "my_package:MyBackend"

`MyBackend` subclasses `LLMBackend`; it is built with `MyBackend.from_options(**llm.options)`.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from agent_runtime.errors import AgentRuntimeError, ConfigError
from agent_runtime.llm.base import LLMBackend

GROUP = "agent_runtime.llm_backends"


def available_backends() -> dict[str, EntryPoint]:
    """Installed backends by name (the first distribution wins on a duplicate name)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def create_backend(name: str, options: dict[str, Any] | None = None) -> LLMBackend:
    """Build the backend registered as `name` with `from_options(**options)`."""
    backends = available_backends()
    if name not in backends:
        known = ", ".join(sorted(backends)) or "none installed"
        raise ConfigError(f"unknown LLM backend {name!r} (available: {known})")
    try:
        cls = backends[name].load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"LLM backend {name!r} could not be imported ({backends[name].value}): {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, LLMBackend)):
        raise ConfigError(f"LLM backend {name!r} ({backends[name].value}) is not an LLMBackend subclass")
    try:
        return cls.from_options(**(options or {}))
    except AgentRuntimeError:
        raise
    except TypeError as exc:
        raise ConfigError(f"llm.options for {name!r}: {exc}") from None
