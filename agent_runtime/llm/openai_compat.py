"""`OpenAICompatBackend`: streaming chat completions from any OpenAI-compatible server.

Works with OpenAI, vLLM, llama.cpp's server, `agent-runtime llm-serve`, ... through the `openai`
package's `AsyncOpenAI`. Every failure (connection refused, HTTP error, timeout, bad stream) is
raised as a one-line `BackendError`; an empty reply is an empty stream.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import openai

from agent_runtime.errors import BackendError, ConfigError
from agent_runtime.llm.base import ChatMessage, GenerationOptions, LLMBackend

_NO_KEY = "not-needed"  # local servers ignore the key, but the client insists on one


class OpenAICompatBackend(LLMBackend):
    """Options: `base_url` (default OpenAI's), `model`, `api_key_env` (env var holding the key;
    default OPENAI_API_KEY, may be unset for local servers), `timeout_s` (connect and first-token
    deadline, default 10), `idle_timeout_s` (longest silence between two chunks, default 30).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        model: str = "gpt-4o-mini",
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 10.0,
        idle_timeout_s: float = 30.0,
    ) -> None:
        if timeout_s <= 0 or idle_timeout_s <= 0:
            raise ConfigError("llm.options timeout_s and idle_timeout_s must be positive")
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.idle_timeout_s = float(idle_timeout_s)
        self._client: openai.AsyncOpenAI | None = None

    @classmethod
    def from_options(cls, **options: Any) -> OpenAICompatBackend:
        known = {"base_url", "model", "api_key_env", "timeout_s", "idle_timeout_s"}
        unknown = set(options) - known
        if unknown:
            raise ConfigError(f"unknown option(s) for the openai LLM backend: {sorted(unknown)} (known: {sorted(known)})")
        return cls(**options)

    @property
    def where(self) -> str:
        return self.base_url or "api.openai.com"

    def _get_client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url,
                api_key=os.environ.get(self.api_key_env) or _NO_KEY,
                timeout=openai.Timeout(self.idle_timeout_s, connect=self.timeout_s),
                max_retries=0,  # a retry would blow the latency budget; the turn manager falls back
            )
        return self._client

    async def stream_chat(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        client = self._get_client()
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
        }
        if options.stop:
            request["stop"] = list(options.stop)
        if "seed" in options.extra:
            request["seed"] = options.extra["seed"]
        stream = None
        try:
            async with asyncio.timeout(self.timeout_s):  # connect + headers + first chunk
                stream = await client.chat.completions.create(**request)
                chunks = aiter(stream)
                first = await anext(chunks, None)
            chunk = first
            while chunk is not None:
                for choice in chunk.choices[:1]:
                    text = choice.delta.content if choice.delta else None
                    if text and not isinstance(text, str):
                        raise TypeError(f"delta content is {type(text).__name__}, not text")
                    if text:
                        yield text
                chunk = await anext(chunks, None)
        except TimeoutError as exc:
            raise BackendError(f"LLM server {self.where} timed out: no reply within {self.timeout_s:g} s") from exc
        except openai.APITimeoutError as exc:
            raise BackendError(f"LLM server {self.where} timed out (no data for {self.idle_timeout_s:g} s)") from exc
        except openai.APIConnectionError as exc:
            raise BackendError(f"LLM server {self.where} unreachable: {_cause(exc)}") from exc
        except openai.APIStatusError as exc:
            raise BackendError(f"LLM server {self.where} returned HTTP {exc.status_code}: {_one_line(exc.message)}") from exc
        except openai.OpenAIError as exc:
            raise BackendError(f"LLM server {self.where} failed: {_one_line(str(exc))}") from exc
        except (ValueError, TypeError, AttributeError) as exc:  # an SSE line that is not JSON / not a chunk
            raise BackendError(f"LLM server {self.where} sent a malformed stream: {_one_line(str(exc))}") from exc
        finally:
            if stream is not None:
                await stream.close()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _cause(exc: BaseException) -> str:
    """The innermost cause's message (e.g. 'All connection attempts failed'), one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return _one_line(str(exc) or type(exc).__name__)
