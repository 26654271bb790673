"""A fault-injecting OpenAI-compatible LLM server (chat-completions SSE), in-process on loopback.

It speaks the exact wire protocol the runtime's `openai` backend reads (`data: {chat.completion.chunk}`
lines, then `data: [DONE]`), and misbehaves on a fixed schedule: request n gets `schedule[n % len]`:

- normal: a short sentence, word by word, then [DONE];
- stall: a first clause, then nothing (until the client hangs up, or `stall_cap_s`);
- long: `long_chars` characters of unpunctuated words, paced, then [DONE];
- garbage: a first clause, then SSE lines that are not JSON or not chunks (the k-th garbage request
  starts with the k-th kind of junk), then [DONE];
- close: a first clause, then the TCP connection is dropped mid-stream.

Each request is recorded (behaviour, characters sent, whether the client hung up before the end and
how long after the last byte), so the campaign can tell whether the runtime cut a stall or a runaway reply.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from loadtest.chaos.plan import FaultLLM

NORMAL_REPLY = "We open at nine tomorrow morning. See you then."
FIRST_CLAUSE = "Let me check that for you, "
GARBAGE = [
    "data: {this is not json\n\n",
    'data: {"choices": "not a list"}\n\n',
    "data: \x00\x01\x02 binary junk\n\n",
    ": a comment line\n\n",
    "nonsense without a field name\n\n",
    'data: {"id": 1, "choices": [{"delta": {"content": 42}}]}\n\n',
]


@dataclass
class LLMRequest:
    """One chat-completions request as the fault server saw it."""

    n: int
    behaviour: str
    chars_sent: int = 0
    finished: bool = False  # the server sent its whole reply ([DONE] or the deliberate drop)
    client_left: bool = False  # the client hung up before the reply was finished
    left_after_s: float | None = None  # since the last byte was written
    stream: bool = True


class FaultLLMServer:
    """`await start()` -> base URL (http://127.0.0.1:PORT); `await stop()`."""

    def __init__(self, plan: FaultLLM) -> None:
        self.plan = plan
        self.requests: list[LLMRequest] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {b: 0 for b in self.plan.schedule}
        for r in self.requests:
            out[r.behaviour] += 1
        return out

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.requests]

    # -- HTTP ---------------------------------------------------------------------------------------
    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": "chaos"})

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "chaos", "object": "model", "created": 0,
                                                             "owned_by": "loadtest"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "not JSON", "type": "invalid_request_error"}}, status=400)
        n = len(self.requests)
        rec = LLMRequest(n, self.plan.schedule[n % len(self.plan.schedule)], stream=bool(body.get("stream")))
        self.requests.append(rec)
        if not rec.stream:  # the runtime always streams; answer plainly anyway
            rec.finished = True
            return web.json_response(_completion(NORMAL_REPLY))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        writer = _Writer(request, resp, rec)
        try:
            await getattr(self, f"_{rec.behaviour}")(writer)
        except ConnectionError:
            writer.left()
        except asyncio.CancelledError:
            writer.left()
            raise
        return resp

    # -- behaviours ---------------------------------------------------------------------------------
    async def _normal(self, w: _Writer) -> None:
        for word in NORMAL_REPLY.split(" "):
            await w.content(word + " ")
            await asyncio.sleep(0.01)
        await w.done()

    async def _stall(self, w: _Writer) -> None:
        await w.content(FIRST_CLAUSE)
        if await w.wait_gone(self.plan.stall_cap_s):
            return
        await w.content("sorry for the wait.")
        await w.done()

    async def _long(self, w: _Writer) -> None:
        words = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
        sent = i = 0
        while sent < self.plan.long_chars:
            piece = " ".join(words[(i + k) % len(words)] for k in range(6)) + " "
            piece = piece[: self.plan.long_chars - sent]
            i += 6
            if w.gone():
                w.left()
                return
            await w.content(piece)
            sent += len(piece)
            await asyncio.sleep(0.005)
        await w.done()

    async def _garbage(self, w: _Writer) -> None:
        k = sum(r.behaviour == "garbage" for r in self.requests[: w.rec.n])  # garbage requests before this one
        await w.content(FIRST_CLAUSE)
        for line in GARBAGE[k % len(GARBAGE) :]:  # each request leads with the next kind of junk
            await asyncio.sleep(0.02)
            await w.raw(line)
        await w.content("and that is all.")
        await w.done()

    async def _close(self, w: _Writer) -> None:
        await w.content(FIRST_CLAUSE)
        await asyncio.sleep(0.05)
        w.rec.finished = True  # the drop is the whole behaviour
        w.drop()


class _Writer:
    """Writes SSE lines for one request and notices when the client has gone."""

    def __init__(self, request: web.Request, resp: web.StreamResponse, rec: LLMRequest) -> None:
        self.request = request
        self.resp = resp
        self.rec = rec
        self.meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": "chaos"}
        self.last_write = time.monotonic()
        self._role_sent = False

    def gone(self) -> bool:
        t = self.request.transport
        return t is None or t.is_closing()

    def left(self) -> None:
        if not self.rec.finished and not self.rec.client_left:
            self.rec.client_left = True
            self.rec.left_after_s = round(time.monotonic() - self.last_write, 3)

    async def wait_gone(self, cap_s: float) -> bool:
        """Until the client hangs up (True) or `cap_s` passes (False)."""
        deadline = time.monotonic() + cap_s
        while time.monotonic() < deadline:
            if self.gone():
                self.left()
                return True
            await asyncio.sleep(0.02)
        return False

    async def raw(self, text: str) -> None:
        if self.gone():
            raise ConnectionResetError("client gone")
        await self.resp.write(text.encode())
        self.last_write = time.monotonic()

    async def content(self, text: str) -> None:
        delta: dict[str, Any] = {"content": text}
        if not self._role_sent:
            delta["role"] = "assistant"
            self._role_sent = True
        chunk = {**self.meta, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        await self.raw(f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n")
        self.rec.chars_sent += len(text)

    async def done(self) -> None:
        chunk = {**self.meta, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await self.raw(f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n")
        await self.raw("data: [DONE]\n\n")
        self.rec.finished = True
        await self.resp.write_eof()

    def drop(self) -> None:
        t = self.request.transport
        if t is not None:
            t.abort()


def _completion(text: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": "chaos", "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                           "finish_reason": "stop"}]}
