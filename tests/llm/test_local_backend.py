"""LocalLLMBackend: streaming from the worker thread, cancellation within a token, serialisation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from agent_runtime.llm.base import ChatMessage, GenerationOptions
from agent_runtime.llm.local import LocalLLMBackend
from agent_runtime.llm.smollm import LocalLM

FRANCE = [ChatMessage("user", "What is the capital of France?")]
STORY = [ChatMessage("user", "Write a long story about a dragon who learns to bake bread.")]


@pytest.fixture
async def backend(local_lm: LocalLM) -> AsyncIterator[LocalLLMBackend]:
    b = LocalLLMBackend(lm=local_lm)
    yield b
    await b.aclose()  # waits for the worker: the next test gets the model idle


async def test_streams_deltas_without_blocking_the_loop(backend: LocalLLMBackend) -> None:
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    deltas = [d async for d in backend.stream_chat(FRANCE, GenerationOptions(max_tokens=12))]
    tick.cancel()
    assert len(deltas) > 2 and "Paris" in "".join(deltas)
    assert max(gaps) < 0.5, f"event loop stalled for {max(gaps):.2f} s"


async def test_cancel_mid_stream_stops_within_a_token(backend: LocalLLMBackend, local_lm: LocalLM) -> None:
    received: list[str] = []

    async def consume() -> None:
        async for delta in backend.stream_chat(STORY, GenerationOptions(max_tokens=200)):
            received.append(delta)

    task = asyncio.create_task(consume())
    while len(received) < 3:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cancelled_at = len(local_lm._cached)
    # The worker is free again once the current token is done.
    await asyncio.get_running_loop().run_in_executor(backend._executor, lambda: None)
    prompt_len = len(local_lm.template.encode(STORY))
    assert len(local_lm._cached) - cancelled_at <= 2
    assert len(local_lm._cached) - prompt_len <= len(received) + 2
    # ... and the next request works.
    after = "".join([d async for d in backend.stream_chat(FRANCE, GenerationOptions(max_tokens=12))])
    assert "Paris" in after


async def test_closing_the_generator_frees_the_worker(backend: LocalLLMBackend) -> None:
    stream = backend.stream_chat(STORY, GenerationOptions(max_tokens=200))
    assert await anext(stream)
    await stream.aclose()
    t0 = time.perf_counter()
    await asyncio.get_running_loop().run_in_executor(backend._executor, lambda: None)
    assert time.perf_counter() - t0 < 2.0


async def test_requests_are_serialised(backend: LocalLLMBackend) -> None:
    events: list[tuple[int, float]] = []

    async def ask(n: int) -> str:
        out = []
        async for d in backend.stream_chat(FRANCE, GenerationOptions(max_tokens=8)):
            events.append((n, time.perf_counter()))
            out.append(d)
        return "".join(out)

    a, b = await asyncio.gather(ask(0), ask(1))
    assert a == b and "Paris" in a  # deterministic, and the KV cache was not shared mid-flight
    order = [n for n, _ in events]
    assert order == sorted(order), "the second request started before the first finished"


async def test_stop_strings_and_empty_reply(backend: LocalLLMBackend) -> None:
    text = "".join(
        [d async for d in backend.stream_chat(FRANCE, GenerationOptions(max_tokens=12, stop=(" of",)))]
    )
    assert text == "The capital"
    none = [d async for d in backend.stream_chat(FRANCE, GenerationOptions(max_tokens=1, stop=("The",)))]
    assert none == []


async def test_decode_dtype_option_is_validated() -> None:
    from agent_runtime.errors import ConfigError

    with pytest.raises(
        ConfigError, match="decode_dtype must be one of float16, bfloat16, float32, int8, int4, auto"
    ):
        LocalLLMBackend.from_options(decode_dtype="int2")
    backend = LocalLLMBackend.from_options(decode_dtype="float32", threads=1)
    assert backend.decode_dtype == "float32"
    await backend.aclose()
    with pytest.raises(ConfigError, match="prefill_dtype must be one of float32, bfloat16, auto"):
        LocalLLMBackend.from_options(prefill_dtype="float16")
    default = LocalLLMBackend.from_options(threads=1)
    assert default.decode_dtype == "auto" and default.prefill_dtype == "auto"
    await default.aclose()
