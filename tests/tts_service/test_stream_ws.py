"""`GET /v1/audio/stream`: the WebSocket for live replies (protocol.py)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest

from agent_runtime.tts_service.protocol import CLOSE_TOO_BIG
from agent_runtime.tts_service.server import StreamState
from tests.tts_service.conftest import (
    FakeSynth,
    fake_audio,
    joined_pcm,
    local_stream_audio,
    serving,
    ws_collect,
)

REPLY = "Sure, we open at nine tomorrow. The store closes at six in the evening, every day but Sunday."
DELTAS = ["Sure, we op", "en at nine tomor", "row. The store closes at six in the eve", "ning, every day but Sunday."]


async def speak(ws, deltas, start: dict | None = None) -> tuple[dict, list[dict], dict]:
    await ws.send_json({"type": "start", **(start or {})})
    started = await ws.receive_json()
    assert started["type"] == "started", started
    for d in deltas:
        await ws.send_json({"type": "text", "text": d})
    await ws.send_json({"type": "flush"})
    audio, end = await ws_collect(ws)
    return started, audio, end


def check_tagging(audio: list[dict]) -> list[str]:
    """Segment ids count up from 0, every segment ends with one segment_final message; its texts."""
    texts: list[str] = []
    expected = 0
    for m in audio:
        assert m["segment_id"] == expected, (m["segment_id"], expected)
        if len(texts) == expected:
            texts.append(m["text"])
        assert m["text"] == texts[expected]
        if m["segment_final"]:
            expected += 1
    assert audio and audio[-1]["segment_final"]
    return texts


@pytest.mark.slow
async def test_stream_matches_the_engine_used_locally(piper_voice):
    local, local_segments = await local_stream_audio(piper_voice, REPLY, max_segment_chars=250)
    async with serving(piper_voice, engine="piper") as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.ws_url) as ws:
        started, audio, end = await speak(ws, DELTAS)
    assert started["engine"] == "piper" and started["sample_rate"] == piper_voice.sample_rate
    assert started["stream_id"]
    texts = check_tagging(audio)
    assert " ".join(texts) == REPLY
    assert [(i, t) for i, t in enumerate(texts)] == local_segments
    assert len(texts) >= 2
    assert all(m["sample_rate"] == piper_voice.sample_rate for m in audio)
    assert end == {"type": "done", "reason": "flushed", "segments": len(texts)}
    assert np.array_equal(joined_pcm(audio), local)


async def test_chunking_and_segment_cap_from_start():
    async with serving(FakeSynth(), tts={"max_segment_chars": 30}) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.ws_url) as ws:
        _, audio, _end = await speak(ws, [REPLY], {"chunking": {"first_min_words": 1, "max_chars": 200},
                                                  "max_segment_chars": 25})
        texts = check_tagging(audio)
        assert max(len(t) for t in texts) <= 25
        assert " ".join(texts) == REPLY
        assert np.array_equal(joined_pcm(audio), np.concatenate([fake_audio(t) for t in texts]))
        # the server's tts.max_segment_chars caps a larger request
        _, audio, _ = await speak(ws, [REPLY], {"max_segment_chars": 500})
        assert max(len(t) for t in check_tagging(audio)) <= 30


async def test_bad_chunking_is_bad_request():
    async with serving(FakeSynth()) as srv, aiohttp.ClientSession() as http, http.ws_connect(srv.ws_url) as ws:
        await ws.send_json({"type": "start", "chunking": {"no_such_field": 1}})
        err = await ws.receive_json()
        assert err["type"] == "error" and err["code"] == "bad_request" and "chunking" in err["message"]
        await ws.send_json({"type": "start", "chunking": {"max_chars": 0}})
        assert (await ws.receive_json())["code"] == "bad_request"
        _, _, end = await speak(ws, ["Still works."])  # the connection goes on
        assert end["reason"] == "flushed"


async def test_options_on_start_and_unsupported():
    synth = FakeSynth(supported=frozenset({"seed", "temperature"}))
    async with serving(synth) as srv, aiohttp.ClientSession() as http, http.ws_connect(srv.ws_url) as ws:
        await speak(ws, ["Hi."], {"seed": 5, "temperature": 0.3})
        assert synth.options[-1].seed == 5 and synth.options[-1].temperature == 0.3
        await ws.send_json({"type": "start", "top_k": 4})
        err = await ws.receive_json()
        assert err == {"type": "error", "code": "unsupported", "message": err["message"]}
        assert err["message"].startswith("top_k")
        await ws.send_json({"type": "start", "references": [{"audio_path": "x.wav"}]})
        err = await ws.receive_json()
        assert err["code"] == "bad_request" and "references[0].audio_path" in err["message"]
        assert srv.server.runs == set()


async def test_many_streams_one_after_another_on_one_connection():
    async with serving(FakeSynth()) as srv, aiohttp.ClientSession() as http, http.ws_connect(srv.ws_url) as ws:
        ids = set()
        for n in range(3):
            started, audio, end = await speak(ws, [f"Reply number {n}."])
            ids.add(started["stream_id"])
            assert end["reason"] == "flushed"
            assert np.array_equal(joined_pcm(audio), fake_audio(f"Reply number {n}."))
        assert len(ids) == 3
        assert srv.server.metrics.streams.values[("stream", "flushed")] == 3


async def test_cancel_mid_stream_is_prompt_and_frees_the_slot():
    synth = FakeSynth(block_delay_s=0.5)
    async with serving(synth) as srv, aiohttp.ClientSession() as http, http.ws_connect(srv.ws_url) as ws:
        await ws.send_json({"type": "start"})
        assert (await ws.receive_json())["type"] == "started"
        await ws.send_json({"type": "text", "text": REPLY})
        first = await ws.receive_json()  # audio is flowing
        assert first["type"] == "audio"
        await ws.send_json({"type": "cancel"})
        _audio, end = await ws_collect(ws, timeout=2.0)  # long before the blocks still to come
        assert end == {"type": "done", "reason": "cancelled", "segments": 1}
        assert srv.server.runs == set()
        assert srv.server.metrics.active_streams.values[()] == 0
        assert srv.server.metrics.cancel_latency.series[()][0][-1] == 1
        assert srv.server.metrics.streams.values[("stream", "cancelled")] == 1
        # a cancel with nothing running is ignored; a new stream works
        await ws.send_json({"type": "cancel"})
        synth.block_delay_s = 0.0
        _, _, end = await speak(ws, ["Next."])
        assert end["reason"] == "flushed"


async def test_cancel_before_any_audio():
    async with serving(FakeSynth(block_delay_s=0.5)) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.ws_url) as ws:
        await ws.send_json({"type": "start"})
        await ws.receive_json()
        await ws.send_json({"type": "cancel"})
        assert await ws.receive_json() == {"type": "done", "reason": "cancelled", "segments": 0}
        assert srv.server.runs == set()


async def test_disconnect_cancels_the_stream():
    synth = FakeSynth(block_delay_s=0.5)
    async with serving(synth) as srv:
        async with aiohttp.ClientSession() as http, http.ws_connect(srv.ws_url) as ws:
            await ws.send_json({"type": "start"})
            await ws.receive_json()
            await ws.send_json({"type": "text", "text": REPLY})
            await ws.send_json({"type": "flush"})
            assert (await ws.receive_json())["type"] == "audio"
        await srv.wait_streams(0, timeout=2.0)
        assert srv.server.metrics.streams.values[("stream", "cancelled")] == 1
        async with asyncio.timeout(2):
            while srv.server.connections:
                await asyncio.sleep(0.01)


async def test_busy_at_the_cap_and_http_shares_the_cap():
    synth = FakeSynth(block_delay_s=0.3)
    async with serving(synth, {"max_streams": 1}) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.ws_url) as a, http.ws_connect(srv.ws_url) as b:
        await a.send_json({"type": "start"})
        assert (await a.receive_json())["type"] == "started"
        await b.send_json({"type": "start"})
        err = await b.receive_json()
        assert err["type"] == "error" and err["code"] == "busy"
        async with http.post(srv.speech_url, json={"input": "Hi."}) as r:
            assert r.status == 503 and "Retry-After" in r.headers
        await a.send_json({"type": "cancel"})
        assert (await a.receive_json())["reason"] == "cancelled"
        synth.block_delay_s = 0.0
        _, _, end = await speak(b, ["Now it fits."])
        assert end["reason"] == "flushed"
        assert srv.server.metrics.rejected.values[("busy",)] == 2


async def test_too_many_connections_is_503_before_the_upgrade():
    async with serving(FakeSynth(), {"max_connections": 1}) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.ws_url):
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await http.ws_connect(srv.ws_url)
        assert exc.value.status == 503


async def test_too_long_ends_the_stream():
    async with serving(FakeSynth(block_delay_s=0.2), {"max_stream_chars": 40}) as srv, \
            aiohttp.ClientSession() as http, http.ws_connect(srv.ws_url) as ws:
        await ws.send_json({"type": "start"})
        await ws.receive_json()
        await ws.send_json({"type": "text", "text": "x" * 30})
        await ws.send_json({"type": "text", "text": "y" * 30})
        _audio, end = await ws_collect(ws, timeout=3)
        assert end["type"] == "error" and end["code"] == "too_long"
        assert srv.server.runs == set()
        assert srv.server.metrics.rejected.values[("too_long",)] == 1


async def test_engine_error_mid_stream():
    async with serving(FakeSynth(fail_on="boom")) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.ws_url) as ws:
        await ws.send_json({"type": "start"})
        await ws.receive_json()
        await ws.send_json({"type": "text", "text": "All fine here. Then boom goes the engine."})
        await ws.send_json({"type": "flush"})
        audio, end = await ws_collect(ws)
        assert end["type"] == "error" and end["code"] == "engine_error" and "boom" in end["message"]
        assert audio and audio[0]["text"] == "All fine here."  # audio sent so far stands
        assert srv.server.runs == set()
        _, _, end = await speak(ws, ["Fine again."])
        assert end["reason"] == "flushed"


@pytest.mark.parametrize(("raw", "why"), [
    ("{nope", "not valid JSON"),
    (json.dumps({"type": "sing"}), "bad message"),
    (json.dumps({"type": "text"}), "bad message"),
    (json.dumps({"type": "start", "bogus": 1}), "bad message"),
    (json.dumps({"type": "start", "max_segment_chars": 0}), "bad message"),
    (json.dumps([1, 2]), "bad message"),
    ("[" * 100 + "]" * 100, "max_json_depth"),
    (json.dumps({"type": "text", "text": "no stream"}), "start first"),
    (json.dumps({"type": "flush"}), "start first"),
])
async def test_bad_messages_are_errors_and_the_connection_goes_on(raw, why):
    async with serving(FakeSynth()) as srv, aiohttp.ClientSession() as http, http.ws_connect(srv.ws_url) as ws:
        await ws.send_str(raw)
        err = await ws.receive_json()
        assert err["type"] == "error" and err["code"] == "bad_request" and why in err["message"], err
        _, _, end = await speak(ws, ["Still answering."])
        assert end["reason"] == "flushed"


async def test_binary_message_and_a_second_start_are_errors():
    async with serving(FakeSynth(block_delay_s=0.2)) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.ws_url) as ws:
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive_json())["code"] == "bad_request"
        await ws.send_json({"type": "start"})
        await ws.receive_json()
        await ws.send_json({"type": "start"})
        _audio, end = await ws_collect(ws)
        assert end["type"] == "error" and end["code"] == "bad_request"
        assert srv.server.runs == set()


async def test_text_after_flush_is_an_error():
    async with serving(FakeSynth(block_delay_s=0.2)) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.ws_url) as ws:
        await ws.send_json({"type": "start"})
        await ws.receive_json()
        await ws.send_json({"type": "text", "text": "One sentence here."})
        await ws.send_json({"type": "flush"})
        await ws.send_json({"type": "text", "text": "More?"})
        _audio, end = await ws_collect(ws)
        assert end["type"] == "error" and "after flush" in end["message"]
        assert srv.server.runs == set()


async def test_oversized_message_closes_with_1009():
    async with serving(FakeSynth(), {"max_body_bytes": 2048}) as srv, aiohttp.ClientSession() as http:
        async with http.ws_connect(srv.ws_url) as ws:
            await ws.send_json({"type": "start"})
            await ws.receive_json()
            await ws.send_json({"type": "text", "text": "x" * 5000})
            msg = await ws.receive()
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == CLOSE_TOO_BIG
        await srv.wait_streams(0)
        async with http.get(srv.url + "/readyz") as r:
            assert r.status == 200


async def test_idle_timeout():
    async with serving(FakeSynth(), {"idle_timeout_s": 0.3}) as srv, aiohttp.ClientSession() as http:
        async with http.ws_connect(srv.ws_url) as ws:  # no stream at all
            err = await ws.receive_json(timeout=3)
            assert err["type"] == "error" and err["code"] == "timeout"
            assert (await ws.receive(timeout=3)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        async with http.ws_connect(srv.ws_url) as ws:  # a stream that gets no text
            await ws.send_json({"type": "start"})
            await ws.receive_json()
            err = await ws.receive_json(timeout=3)
            assert err["code"] == "timeout"
        await srv.wait_streams(0)
        assert srv.server.metrics.rejected.values[("timeout",)] == 2


@pytest.mark.slow
async def test_speaking_after_flush_is_not_idle():
    """A flushed stream longer than idle_timeout_s is spoken to the end."""
    async with serving(FakeSynth(block=400, block_delay_s=0.05), {"idle_timeout_s": 0.3}) as srv, \
            aiohttp.ClientSession() as http, http.ws_connect(srv.ws_url) as ws:
        _, audio, end = await speak(ws, ["A sentence long enough to take a while."])
        assert end["reason"] == "flushed"
        assert np.array_equal(joined_pcm(audio), fake_audio("A sentence long enough to take a while."))


async def test_state_machine_states():
    synth = FakeSynth(block_delay_s=0.2)
    async with serving(synth) as srv, aiohttp.ClientSession() as http, http.ws_connect(srv.ws_url) as ws:
        async with asyncio.timeout(2):
            while not srv.server.connections:
                await asyncio.sleep(0.01)
        [conn] = srv.server.connections
        assert conn.state is StreamState.IDLE
        await ws.send_json({"type": "start"})
        await ws.receive_json()
        assert conn.state is StreamState.OPEN
        await ws.send_json({"type": "text", "text": "Hello."})
        await ws.send_json({"type": "flush"})
        await ws.receive_json()
        assert conn.state is StreamState.FLUSHED
        await ws_collect(ws)
        assert conn.state is StreamState.IDLE
