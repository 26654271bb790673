"""Errors shared across the runtime."""


class AgentRuntimeError(Exception):
    """Base class for errors with a message meant for the user (printed as one line)."""


class ConfigError(AgentRuntimeError):
    """A configuration file or value is invalid."""


class AudioFormatError(AgentRuntimeError):
    """Audio could not be read or has an unusable format."""


class ModelLoadError(AgentRuntimeError):
    """A model, checkpoint or tokenizer could not be found or loaded."""


class BackendError(AgentRuntimeError):
    """A remote or local engine (LLM, TTS) failed or timed out."""


def check_tensor_names(
    subject: str, missing: list[str], unexpected: list[str], mis_shaped: list[str], max_names: int = 8
) -> None:
    """Raise one ModelLoadError listing every missing, unexpected and mis-shaped tensor of a strict load."""

    def names(items: list[str]) -> str:
        shown = ", ".join(items[:max_names])
        return shown + (f", ... (+{len(items) - max_names} more)" if len(items) > max_names else "")

    problems = [
        f"{len(items)} {kind}: {names(items)}"
        for kind, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
        if items
    ]
    if problems:
        raise ModelLoadError(f"{subject}: " + "; ".join(problems))
