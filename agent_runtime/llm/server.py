"""An OpenAI-compatible HTTP server (aiohttp) for any `LLMBackend`, by default the local model.

Routes: `POST /v1/chat/completions` (SSE `chat.completion.chunk`s + `data: [DONE]` when
`stream` is true, else one `chat.completion`), `GET /v1/models`, `GET /health`. Malformed
requests get a 400 with an OpenAI-style JSON error. The model runs on the backend's worker thread;
a client that disconnects cancels its generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from agent_runtime.errors import BackendError
from agent_runtime.llm.base import ChatMessage, GenerationOptions, LLMBackend

log = logging.getLogger(__name__)
BACKEND_KEY: web.AppKey[LLMBackend] = web.AppKey("backend", LLMBackend)
MODEL_KEY: web.AppKey[str] = web.AppKey("model_id", str)
READY_KEY: web.AppKey[asyncio.Event] = web.AppKey("ready", asyncio.Event)
_ROLES = ("system", "user", "assistant")
_DEFAULTS = GenerationOptions()


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def create_app(backend: LLMBackend, model_id: str, ready: asyncio.Event | None = None) -> web.Application:
    """The app; `/health` answers 503 until `ready` is set (default: ready at once)."""
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[BACKEND_KEY] = backend
    app[MODEL_KEY] = model_id
    if ready is None:
        ready = asyncio.Event()
        ready.set()
    app[READY_KEY] = ready
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    return app


def error_response(status: int, message: str, kind: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.json_response(body, status=status)


async def health(request: web.Request) -> web.Response:
    if not request.app[READY_KEY].is_set():
        return web.json_response({"status": "loading", "model": request.app[MODEL_KEY]}, status=503)
    return web.json_response({"status": "ok", "model": request.app[MODEL_KEY]})


async def list_models(request: web.Request) -> web.Response:
    model = {"id": request.app[MODEL_KEY], "object": "model", "created": 0, "owned_by": "agent-runtime"}
    return web.json_response({"object": "list", "data": [model]})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error_response(400, "request body is not valid JSON", "invalid_request_error")
    try:
        messages, options, stream = parse_request(body)
    except BadRequest as exc:
        return error_response(400, str(exc), "invalid_request_error", exc.param)
    backend = request.app[BACKEND_KEY]
    meta = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "created": int(time.time()),
        "model": str(body.get("model") or request.app[MODEL_KEY]),
    }
    if stream:
        return await _stream(request, backend, messages, options, meta)
    try:
        text = "".join([d async for d in backend.stream_chat(messages, options)])
    except BackendError as exc:
        return error_response(500, str(exc), "server_error")
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    return web.json_response({**meta, "object": "chat.completion", "choices": [choice]})


async def _stream(
    request: web.Request,
    backend: LLMBackend,
    messages: list[ChatMessage],
    options: GenerationOptions,
    meta: dict[str, Any],
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    send = _sse_sender(response, meta)
    await send({"role": "assistant", "content": ""}, None)
    try:
        async for delta in backend.stream_chat(messages, options):
            await send({"content": delta}, None)
    except BackendError as exc:  # headers are gone: report in-band, as OpenAI does
        await response.write(f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error'}})}\n\n".encode())
    else:
        await send({}, "stop")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _sse_sender(response: web.StreamResponse, meta: dict[str, Any]) -> Callable[[dict[str, Any], str | None], Awaitable[None]]:
    async def send(delta: dict[str, Any], finish: str | None) -> None:
        chunk = {**meta, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        await response.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())

    return send


def parse_request(body: Any) -> tuple[list[ChatMessage], GenerationOptions, bool]:
    """Validate an OpenAI chat-completions body; raise `BadRequest` naming the offending field."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    messages = [_parse_message(m, i) for i, m in enumerate(raw)]
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", _DEFAULTS.max_tokens))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("'max_tokens' must be a positive integer", "max_tokens")
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or an array of strings", "stop")
    extra: dict[str, Any] = {}
    seed = body.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise BadRequest("'seed' must be an integer", "seed")
        extra["seed"] = seed
    penalty = body.get("repetition_penalty", body.get("repeat_penalty"))  # vLLM / llama.cpp names
    if penalty is not None:
        if not isinstance(penalty, int | float) or isinstance(penalty, bool) or not 0 < penalty <= 3:
            raise BadRequest("'repetition_penalty' must be a number in (0, 3]", "repetition_penalty")
        extra["repetition_penalty"] = float(penalty)
    options = GenerationOptions(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop), extra=extra)
    return messages, options, stream


def _parse_message(raw: Any, index: int) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise BadRequest(f"{where} must be an object", where)
    role = raw.get("role")
    if role not in _ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(_ROLES)}", f"{where}.role")
    content = raw.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise BadRequest(f"{where}.content parts must be text parts", f"{where}.content")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string", f"{where}.content")
    return ChatMessage(role=role, content=content)


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"'{key}' must be a number between {low:g} and {high:g}", key)
    return float(value)


async def serve(backend: LLMBackend, model_id: str, host: str = "127.0.0.1", port: int = 8088) -> None:
    """Listen (fails fast if the port is taken), load the model, and serve until cancelled (Ctrl-C)."""
    t0 = time.perf_counter()
    ready = asyncio.Event()
    runner = web.AppRunner(create_app(backend, model_id, ready), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
        await backend.warmup()
        ready.set()
        log.info("model %s ready in %.1f s; serving http://%s:%d/v1", model_id, time.perf_counter() - t0, host, port)
        print(f"llm-serve: listening on http://{host}:{port}/v1 (model {model_id})", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await backend.aclose()
