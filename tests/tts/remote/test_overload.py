"""An overloaded speech server is not a dead one (remote client, agent-runtime protocol).

The slow server here is a fault injector on loopback speaking the exact wire protocol
(`tts_service.protocol` messages): it answers `/readyz` at once but holds a stream's first audio
for `delay` seconds, as a saturated `tts-serve` does. A dead server (SIGSTOP: no answer at all) is
covered by test_failover.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
from aiohttp import web

from agent_runtime.errors import BackendError
from agent_runtime.tts.remote.synthesizer import RemoteSynthesizer
from agent_runtime.tts_service.protocol import (
    INFO_PATH,
    STREAM_PATH,
    AudioMessage,
    DoneMessage,
    StartedMessage,
    encode_pcm,
)
from tests.tts.remote.conftest import PIPER_TTS, speak

RATE = 16000


@asynccontextmanager
async def slow_server(delay: float) -> AsyncIterator[str]:
    """A speech server that waits `delay` s before each stream's audio (one segment per flush)."""

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": True, "streams": 0})

    async def info(_: web.Request) -> web.Response:
        return web.json_response({"engine": "slow", "sample_rate": RATE})

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        text = ""
        async for msg in ws:
            data = json.loads(msg.data)
            if data["type"] == "start":
                await ws.send_str(StartedMessage(stream_id="s", sample_rate=RATE, engine="slow").model_dump_json())
            elif data["type"] == "text":
                text += data["text"]
            elif data["type"] == "flush":
                await asyncio.sleep(delay)
                pcm = encode_pcm(np.zeros(1600, dtype=np.int16))
                audio = AudioMessage(segment_id=0, text=text.strip(), segment_final=True, sample_rate=RATE, audio=pcm)
                await ws.send_str(audio.model_dump_json())
                await ws.send_str(DoneMessage(reason="flushed", segments=1).model_dump_json())
        return ws

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_get(INFO_PATH, info)
    app.router.add_get(STREAM_PATH, stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.slow
def test_a_slow_but_answering_server_is_waited_for_not_marked_down() -> None:
    async def main() -> None:
        async with slow_server(delay=1.5) as url:
            remote = await asyncio.to_thread(  # blocking (it asks /v1/info): off this loop, which serves
                RemoteSynthesizer, [url], first_audio_timeout_s=0.4, read_timeout_s=0.4, retries=0
            )
            try:
                got = await asyncio.gather(*(speak(remote, ["Hello there."]) for _ in range(4)))
                assert [[t for t, _ in one] for one in got] == [["Hello there."]] * 4
                assert remote.pool.describe()[0]["healthy"]
            finally:
                await remote.aclose()

    asyncio.run(main())


@pytest.mark.slow
def test_a_stream_silent_past_stall_timeout_fails_alone() -> None:
    async def main() -> None:
        async with slow_server(delay=3.0) as url:
            remote = await asyncio.to_thread(
                RemoteSynthesizer, [url], first_audio_timeout_s=0.3, read_timeout_s=0.3, stall_timeout_s=0.9, retries=0
            )
            try:
                with pytest.raises(BackendError, match="overloaded"):
                    await speak(remote, ["Hello there."])
                assert remote.pool.describe()[0]["healthy"]  # answering: not marked down
            finally:
                await remote.aclose()

    asyncio.run(main())


@pytest.mark.slow
def test_a_server_at_its_connection_cap_is_skipped_but_not_marked_down(farm) -> None:
    full = farm.start(PIPER_TTS, {"max_connections": 1})
    other = farm.start(PIPER_TTS)
    try:

        async def main() -> None:
            holder = RemoteSynthesizer([full.url])
            remote = RemoteSynthesizer([full.url, other.url], health_interval_s=3600)
            try:
                held = holder.open_stream()
                held.push_text("Hello there, how are you today? ")
                await anext(aiter(held))  # the only connection `full` takes is open
                remote.pool.servers[1].open_streams += 5  # make `full` the least loaded
                stream = remote.open_stream()
                stream.push_text("Anything else?")
                stream.flush()
                assert [c.text async for c in stream][-1] == "Anything else?"
                assert stream.servers_tried == [full.url, other.url]
                assert remote.pool.describe()[0]["healthy"]
                await held.cancel()
            finally:
                await holder.aclose()
                await remote.aclose()

        asyncio.run(main())
    finally:
        farm.stop(full)
        farm.stop(other)
