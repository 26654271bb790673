"""OpenAICompatBackend against a real `agent-runtime llm-serve` process, a dead port and bad servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from agent_runtime.errors import BackendError
from agent_runtime.llm.base import ChatMessage, GenerationOptions
from agent_runtime.llm.openai_compat import OpenAICompatBackend
from tests.llm.conftest import free_port

FRANCE = [ChatMessage("user", "What is the capital of France?")]
OPTS = GenerationOptions(max_tokens=12)


async def collect(backend: OpenAICompatBackend, options: GenerationOptions = OPTS) -> list[str]:
    try:
        return [d async for d in backend.stream_chat(FRANCE, options)]
    finally:
        await backend.aclose()


@pytest.mark.slow
async def test_streams_a_real_answer_from_llm_serve(llm_server: str) -> None:
    deltas = await collect(OpenAICompatBackend(base_url=llm_server, model="smollm2", api_key_env="NO_SUCH_KEY_VAR"))
    assert len(deltas) > 2 and "Paris" in "".join(deltas)


async def test_dead_port_fails_fast() -> None:
    backend = OpenAICompatBackend(base_url=f"http://127.0.0.1:{free_port()}/v1", timeout_s=5)
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match="unreachable") as info:
        await collect(backend)
    assert time.perf_counter() - t0 < 2.0
    assert "\n" not in str(info.value)


@pytest.fixture
async def fake_server() -> AsyncIterator[Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]]:
    """Start an in-test aiohttp server with one chat-completions handler; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.slow
async def test_hanging_server_times_out(fake_server) -> None:  # type: ignore[no-untyped-def]
    async def hang(request: web.Request) -> web.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    backend = OpenAICompatBackend(base_url=await fake_server(hang), timeout_s=1.0)
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match="timed out"):
        await collect(backend)
    assert 0.9 < time.perf_counter() - t0 < 3.0


@pytest.mark.slow
async def test_stall_after_first_token_times_out(fake_server) -> None:  # type: ignore[no-untyped-def]
    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = '{"id":"x","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}'
        await resp.write(f"data: {chunk}\n\n".encode())
        await asyncio.Event().wait()
        return resp

    backend = OpenAICompatBackend(base_url=await fake_server(stall), timeout_s=1.0, idle_timeout_s=1.0)
    got: list[str] = []
    with pytest.raises(BackendError, match="timed out"):
        async for d in backend.stream_chat(FRANCE, OPTS):
            got.append(d)
    await backend.aclose()
    assert got == ["Hi"]


async def test_http_error_is_one_line(fake_server) -> None:  # type: ignore[no-untyped-def]
    async def boom(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "model overloaded\nretry later", "type": "server_error"}}, status=503)

    with pytest.raises(BackendError, match="HTTP 503") as info:
        await collect(OpenAICompatBackend(base_url=await fake_server(boom), timeout_s=2))
    assert "\n" not in str(info.value)


async def test_empty_reply_is_an_empty_stream(fake_server) -> None:  # type: ignore[no-untyped-def]
    async def empty(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    assert await collect(OpenAICompatBackend(base_url=await fake_server(empty), timeout_s=2)) == []
