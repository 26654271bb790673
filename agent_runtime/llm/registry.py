"""LLM backend discovery through the `agent_runtime.llm_backends` entry-point group.

A package adds a backend by declaring, in its pyproject.toml::

    [project.entry-points."agent_runtime.llm_backends"]
    mybackend = "my_package:MyBackend"

`MyBackend` subclasses `LLMBackend`; it is built with `MyBackend.from_options(**llm.options)`.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

from agent_runtime import plugins
from agent_runtime.llm.base import LLMBackend

GROUP = "agent_runtime.llm_backends"


def available_backends() -> dict[str, EntryPoint]:
    """Installed backends by name (the first distribution wins on a duplicate name)."""
    return plugins.available(GROUP)


def create_backend(name: str, options: dict[str, Any] | None = None) -> LLMBackend:
    """Build the backend registered as `name` with `from_options(**options)`."""
    return plugins.create(GROUP, "LLM backend", LLMBackend, name, options)
