"""The OpenAI-compatible HTTP server (`agent-runtime llm-serve`), spoken to with plain HTTP."""

from __future__ import annotations

import json

import aiohttp
import pytest

from agent_runtime.llm.base import ChatMessage, GenerationOptions
from agent_runtime.llm.server import BadRequest, parse_request

QUESTION = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 12}


async def test_health_and_models(llm_server: str) -> None:
    root = llm_server.removesuffix("/v1")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{root}/health") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(f"{llm_server}/models") as r:
            body = await r.json()
            assert body["object"] == "list" and body["data"][0]["id"] == "smollm2-135m-instruct"


async def test_non_streaming_completion(llm_server: str) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{llm_server}/chat/completions", json=QUESTION) as r:
        assert r.status == 200
        body = await r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert "Paris" in body["choices"][0]["message"]["content"]


async def test_streaming_completion_is_sse(llm_server: str) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{llm_server}/chat/completions", json={**QUESTION, "stream": True}) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        raw = (await r.read()).decode()
    events = [line.removeprefix("data: ") for line in raw.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "Paris" in "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"{}", "messages"),
        (json.dumps({"messages": []}).encode(), "messages"),
        (json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(), "messages[0].role"),
        (json.dumps({"messages": [{"role": "user", "content": 3}]}).encode(), "messages[0].content"),
        (json.dumps({**QUESTION, "stream": "yes"}).encode(), "stream"),
        (json.dumps({**QUESTION, "temperature": 7}).encode(), "temperature"),
        (json.dumps({**QUESTION, "max_tokens": 0}).encode(), "max_tokens"),
    ],
)
async def test_malformed_requests_get_400(llm_server: str, body: bytes, param: str | None) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{llm_server}/chat/completions", data=body) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_parse_request_defaults_and_parts() -> None:
    messages, options, stream = parse_request(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}], "stop": "\n", "seed": 3}
    )
    assert messages == [ChatMessage("user", "Hi there")] and stream is False
    assert options == GenerationOptions(max_tokens=120, temperature=0.0, top_p=1.0, stop=("\n",), extra={"seed": 3})
    with pytest.raises(BadRequest):
        parse_request({"messages": [{"role": "user", "content": "x"}], "stop": [1]})
