"""agent-runtime LLM backends as a LiveKit LLM.

Any backend of the `agent_runtime.llm_backends` entry-point group (the embedded SmolLM2 `local`
one by default, `openai`, or a third-party plugin such as `echo`) is driven from LiveKit's chat
context: its messages become our `ChatMessage`s (LiveKit's `developer` role is our `system`), and
our text deltas stream back as LiveKit `ChatChunk`s. Our backends take no tools: tool definitions
LiveKit passes are ignored, and tool calls/outputs in the history are left out of the prompt.
Closing the LiveKit stream (an interruption) closes our generator, which stops generation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from livekit.agents import APIConnectionError, llm, utils
from livekit.agents.llm import ChatContext
from livekit.agents.llm.tool_context import Tool, ToolChoice
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions, NotGivenOr

from agent_runtime.llm.base import ChatMessage, GenerationOptions, LLMBackend

from .log import logger

__all__ = ["LLM", "LLMStream", "to_runtime_messages"]

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class LLM(llm.LLM):
    def __init__(
        self,
        *,
        backend: str | LLMBackend = "local",
        backend_options: dict[str, Any] | None = None,
        max_tokens: int = 120,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Iterable[str] = (),
        extra: dict[str, Any] | None = None,
    ) -> None:
        """`backend`: a registered backend name, built with `backend_options` by
        `agent_runtime.llm.registry.create_backend` (and closed by `aclose()`), or a loaded
        `LLMBackend` to share (not closed). The other arguments are our `GenerationOptions`."""
        super().__init__()
        if isinstance(backend, str):
            from agent_runtime.llm.registry import create_backend

            self._backend = create_backend(backend, backend_options or {})
            self._owns_backend = True
        else:
            self._backend = backend
            self._owns_backend = False
        self._options = GenerationOptions(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop), extra=dict(extra or {})
        )
        self._warned_tools = False

    @property
    def backend(self) -> LLMBackend:
        return self._backend

    @property
    def model(self) -> str:
        return getattr(self._backend, "name", "llm")

    @property
    def provider(self) -> str:
        return "agent-runtime"

    async def _prewarm_impl(self) -> None:
        await self._backend.warmup()

    async def warmup(self) -> None:
        """Load weights / open connections now (LiveKit's `prewarm()` does it in the background)."""
        await self._backend.warmup()

    def chat(
        self,
        *,
        chat_ctx: ChatContext,
        tools: list[Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> LLMStream:
        if tools and not self._warned_tools:
            self._warned_tools = True
            logger.warning("agent-runtime LLM backends do not call tools; %d tool(s) ignored", len(tools))
        options = self._options
        if isinstance(extra_kwargs, dict) and extra_kwargs:
            options = GenerationOptions(
                max_tokens=int(extra_kwargs.get("max_tokens", options.max_tokens)),
                temperature=float(extra_kwargs.get("temperature", options.temperature)),
                top_p=float(extra_kwargs.get("top_p", options.top_p)),
                stop=tuple(extra_kwargs.get("stop", options.stop)),
                extra={**options.extra, **extra_kwargs.get("extra", {})},
            )
        return LLMStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options, options=options)

    async def aclose(self) -> None:
        await super().aclose()
        if self._owns_backend:
            await self._backend.aclose()


class LLMStream(llm.LLMStream):
    def __init__(
        self,
        llm_: LLM,
        *,
        chat_ctx: ChatContext,
        tools: list[Tool],
        conn_options: APIConnectOptions,
        options: GenerationOptions,
    ) -> None:
        super().__init__(llm_, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._runtime_llm = llm_
        self._gen_options = options

    async def _run(self) -> None:
        request_id = utils.shortuuid("agent_runtime_")
        messages = to_runtime_messages(self._chat_ctx)
        backend = self._runtime_llm.backend
        try:
            async with contextlib.aclosing(backend.stream_chat(messages, self._gen_options)) as deltas:  # type: ignore[type-var]
                async for delta in deltas:
                    if delta:
                        self._event_ch.send_nowait(
                            llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=delta))
                        )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise APIConnectionError(f"agent-runtime {backend.name} LLM failed: {exc}", retryable=False) from exc


def to_runtime_messages(chat_ctx: ChatContext) -> list[ChatMessage]:
    """LiveKit's chat context as our message list (text messages only, in order)."""
    out: list[ChatMessage] = []
    for item in chat_ctx.items:
        if getattr(item, "type", None) != "message":
            continue
        role = _ROLES.get(item.role)
        text = item.text_content or ""
        if role is None or not text.strip():
            continue
        out.append(ChatMessage(role, text, interrupted=bool(getattr(item, "interrupted", False))))  # type: ignore[arg-type]
    return out
