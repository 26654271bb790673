"""LLM backend contract: an async stream of text deltas for a chat history."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]


@dataclass(slots=True)
class ChatMessage:
    """One message of the conversation history.

    For assistant messages cut short by a barge-in, `content` holds only what the caller heard and
    `interrupted` is True.
    """

    role: Role
    content: str
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    max_tokens: int = 120
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class LLMBackend(ABC):
    """A language model the turn manager can stream from.

    `stream_chat` yields text deltas as soon as the model produces them. Cancelling the consuming
    task (or closing the async generator) must stop generation promptly and free the backend for the
    next request. Errors are raised as `agent_runtime.errors.BackendError` with a one-line message.

    Third-party backends register under the entry-point group `agent_runtime.llm_backends`; they are
    built with `from_options(**options)` from the `llm.options` mapping of the config.
    """

    name: str = "llm"

    @classmethod
    def from_options(cls, **options: Any) -> LLMBackend:
        return cls(**options)

    @abstractmethod
    def stream_chat(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        """Stream the assistant reply to `messages` as text deltas."""

    async def prime(self, messages: Sequence[ChatMessage]) -> None:  # noqa: B027 - optional hook
        """Optionally prepare for a request that will start with `messages` (system prompt + history),
        e.g. prefill their KV cache while the caller is still speaking. Must be safe to skip."""

    async def warmup(self) -> None:  # noqa: B027 - optional hook
        """Load weights / open connections ahead of the first turn (optional)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources (optional)."""
