"""Plugin discovery through Python entry points, shared by every kind of engine.

A package adds an engine by declaring, in its pyproject.toml::

    [project.entry-points."agent_runtime.llm_backends"]     # or agent_runtime.tts_engines
    mybackend = "my_package:MyBackend"

The class is built with `from_options(**options)` from the config's `options` mapping. A class
that cannot be built (no `from_options`, abstract methods left unimplemented) is a one-line
ConfigError naming what is missing, not a traceback.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from agent_runtime.errors import AgentRuntimeError, ConfigError

if TYPE_CHECKING:
    from agent_runtime.config import AppConfig

T = TypeVar("T")


def available(group: str) -> dict[str, EntryPoint]:
    """Installed plugins of `group` by name (the first distribution wins on a duplicate name)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep)
    return found


def create(group: str, kind: str, base: type[T], name: str, options: dict[str, Any] | None) -> T:
    """Build the plugin registered as `name` in `group`; `kind` names it in errors ("LLM backend")."""
    plugins = available(group)
    if name not in plugins:
        known = ", ".join(sorted(plugins)) or "none installed"
        raise ConfigError(f"unknown {kind} {name!r} (available: {known})")
    try:
        cls = plugins[name].load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{kind} {name!r} could not be imported ({plugins[name].value}): {exc}") from None
    problem = contract_problem(cls, base)
    if problem:
        raise ConfigError(f"{kind} {name!r} ({plugins[name].value}) {problem} (see docs/plugins.md)")
    try:
        return cls.from_options(**(options or {}))  # type: ignore[attr-defined]
    except AgentRuntimeError:
        raise
    except TypeError as exc:
        raise ConfigError(f"options for {kind} {name!r}: {exc}") from None


def contract_problem(cls: object, base: type) -> str | None:
    """Why `cls` cannot be built as a `base` plugin, or None: not a subclass, no `from_options`,
    abstract methods left unimplemented."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        return f"is not a {base.__name__} subclass"
    if not callable(getattr(cls, "from_options", None)):
        return (
            "has no from_options classmethod: add `@classmethod def from_options(cls, **options): "
            "return cls(**options)`"
        )
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        return f"does not implement {', '.join(missing)}"
    return None


def check_plugins(config: AppConfig) -> None:
    """Raise ConfigError unless `llm.backend` and `tts.engine` name installed plugins.

    Names only: nothing is imported, so this is instant (`config check`, and `serve` before it binds)."""
    from agent_runtime.llm.registry import available_backends
    from agent_runtime.tts.registry import available_engines

    for key, name, installed in (
        ("llm.backend", config.llm.backend, available_backends()),
        ("tts.engine", config.tts.engine, available_engines()),
    ):
        if name not in installed:
            known = ", ".join(sorted(installed)) or "none"
            raise ConfigError(f"unknown {key} {name!r} (installed: {known})")
