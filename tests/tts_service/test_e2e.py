"""`agent-runtime tts-serve` as a real process (loadtest.server.start_tts_serve): start-up, auth, SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import numpy as np
import pytest

from agent_runtime.tts_service.protocol import CLOSE_GOING_AWAY, SPEECH_PATH, STREAM_PATH
from loadtest.server import start_tts_serve
from tests.tts_service.conftest import joined_pcm, local_stream_audio, ws_collect

pytestmark = pytest.mark.slow
LONG = " ".join(f"This is sentence number {n} of a long reply that keeps the engine busy." for n in range(12))


async def test_serves_the_piper_engine(piper_voice, tmp_path):
    cfg = tmp_path / "tts.yaml"  # the same deterministic voice as the piper_voice fixture
    cfg.write_text("tts:\n  engine: piper\n  options: {noise_scale: 0.0, noise_w_scale: 0.0}\n")
    proc = await start_tts_serve(config=cfg, extra_args=["--max-streams", "3"])
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(proc.url + "/readyz") as r:
                ready = await r.json()
            assert ready == {"ready": True, "streams": 0, "max_streams": 3, "engine": "piper",
                             "sample_rate": piper_voice.sample_rate}
            async with http.ws_connect(proc.url + STREAM_PATH) as ws:
                await ws.send_json({"type": "start"})
                assert (await ws.receive_json())["type"] == "started"
                await ws.send_json({"type": "text", "text": "Hello there. How are you?"})
                await ws.send_json({"type": "flush"})
                audio, end = await ws_collect(ws)
            assert end["type"] == "done" and end["reason"] == "flushed"
            local, _ = await local_stream_audio(piper_voice, "Hello there. How are you?", max_segment_chars=250)
            assert np.array_equal(joined_pcm(audio), local)
            async with http.post(proc.url + SPEECH_PATH, json={"input": "Hello there."}) as r:
                assert r.status == 200 and r.headers["Content-Type"] == "audio/wav"
    finally:
        await proc.stop()
    assert proc.proc.returncode == 0


async def test_auth_from_the_environment(tmp_path):
    cfg = tmp_path / "tts.yaml"
    cfg.write_text("tts_server:\n  auth: on\n")
    proc = await start_tts_serve(config=cfg, env={"AGENT_RUNTIME_TTS_TOKEN": "tok"})
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(proc.url + SPEECH_PATH, json={"input": "Hi."}) as r:
                assert r.status == 401
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await http.ws_connect(proc.url + STREAM_PATH, headers={"Authorization": "Bearer nope"})
            assert exc.value.status == 401
            async with http.post(proc.url + SPEECH_PATH, json={"input": "Hi."},
                                 headers={"Authorization": "Bearer tok"}) as r:
                assert r.status == 200
    finally:
        await proc.stop()


async def test_auth_on_without_token_fails_to_start(tmp_path):
    from loadtest.server import ServerStartError

    cfg = tmp_path / "tts.yaml"
    cfg.write_text("tts_server:\n  auth: on\n")
    with pytest.raises(ServerStartError, match="exited with 2"):
        await start_tts_serve(config=cfg, timeout=60)


async def test_sigterm_drains(tmp_path):
    """SIGTERM: /readyz 503 and new streams refused at once; the running stream finishes; exit 0."""
    cfg = tmp_path / "tts.yaml"
    cfg.write_text("tts_server:\n  shutdown_grace_s: 120\n")  # ample on a busy machine: the stream must finish
    proc = await start_tts_serve(config=cfg)
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(proc.url + STREAM_PATH) as ws, \
                http.ws_connect(proc.url + STREAM_PATH) as idle:
            await ws.send_json({"type": "start"})
            await ws.receive_json()
            await ws.send_json({"type": "text", "text": LONG[:300]})
            await ws.send_json({"type": "flush"})
            assert (await ws.receive_json())["type"] == "audio"
            proc.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                while True:
                    async with http.get(proc.url + "/readyz") as r:
                        if r.status == 503:
                            break
                    await asyncio.sleep(0.02)
            async with http.post(proc.url + SPEECH_PATH, json={"input": "Hi."}) as r:
                assert r.status == 503
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await http.ws_connect(proc.url + STREAM_PATH)
            assert exc.value.status == 503
            closed = await idle.receive(timeout=5)
            assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == CLOSE_GOING_AWAY, closed
            audio, end = await ws_collect(ws, timeout=60)
            assert end == {"type": "done", "reason": "flushed", "segments": end["segments"]}
            assert " ".join(t for t in dict.fromkeys(m["text"] for m in audio)) == LONG[:300].strip()
            assert (await ws.receive(timeout=5)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == CLOSE_GOING_AWAY
        async with asyncio.timeout(30):
            assert await proc.proc.wait() == 0
    finally:
        await proc.stop()


async def test_sigterm_grace_ends_long_streams(tmp_path):
    cfg = tmp_path / "tts.yaml"
    cfg.write_text("tts_server:\n  shutdown_grace_s: 0.3\n")
    proc = await start_tts_serve(config=cfg)
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(proc.url + STREAM_PATH) as ws:
            await ws.send_json({"type": "start"})
            await ws.receive_json()
            await ws.send_json({"type": "text", "text": LONG * 3})
            assert (await ws.receive_json())["type"] == "audio"
            proc.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                while (msg := await ws.receive()).type == aiohttp.WSMsgType.TEXT:
                    pass
            assert ws.close_code == CLOSE_GOING_AWAY
        async with asyncio.timeout(30):
            assert await proc.proc.wait() == 0
    finally:
        await proc.stop()
    del msg
