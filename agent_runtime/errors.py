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
