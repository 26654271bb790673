"""`GET /v1/audio/speech/stream`: sglang-omni's streaming speech WebSocket on tts-serve
(sglang_session.py). The client here speaks sglang-omni's wire as its `serve/speech_ws.py` does:
`session.config`, `input.text`, `input.done`; `audio.start`, binary frames, `audio.done`, `session.done`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import pytest

from agent_runtime.tts.chunker import TextChunker
from agent_runtime.tts_service.protocol import SESSION_PATH
from agent_runtime.tts_service.sglang_session import chunking_for
from tests.tts_service.conftest import RATE, FakeSynth, fake_audio, local_stream_audio, serving, wav_samples

REPLY = "Sure, we open at nine tomorrow. The store closes at six, every day but Sunday."
DELTAS = ["Sure, we op", "en at nine tomor", "row. The store closes at six, ev", "ery day but Sunday."]


@dataclass
class Sentence:
    start: dict
    frames: list[bytes] = field(default_factory=list)
    done: dict | None = None


async def converse(ws: aiohttp.ClientWebSocketResponse, session: dict, deltas: list[str],
                   timeout: float = 30.0) -> tuple[dict, list[Sentence], dict]:
    """Configure, send the deltas and input.done; (session.configured, sentences, session.done)."""
    await ws.send_json({"type": "session.config", "session": session})
    configured = await ws.receive_json()
    assert configured["type"] == "session.configured", configured
    for d in deltas:
        await ws.send_json({"type": "input.text", "text": d})
    await ws.send_json({"type": "input.done"})
    sentences: list[Sentence] = []
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                assert sentences and sentences[-1].done is None, "audio outside a sentence"
                sentences[-1].frames.append(msg.data)
                continue
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            event = msg.json()
            if event["type"] == "audio.start":
                assert not sentences or sentences[-1].done is not None, "a sentence started inside another"
                sentences.append(Sentence(event))
            elif event["type"] == "audio.done":
                assert sentences[-1].done is None and event["id"] == sentences[-1].start["id"]
                sentences[-1].done = event
            else:
                assert event["type"] == "session.done", event
                closing = await ws.receive()
                assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closing
                return configured, sentences, event


def pcm(frames: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(frames), dtype="<i2").astype(np.int16)


def sentence_texts(text: str, granularity: str) -> list[str]:
    chunker = TextChunker(chunking_for(granularity))
    return chunker.push(text) + chunker.flush()


async def test_streamed_pcm_per_sentence_as_sglang_omni_sends_it() -> None:
    synth = FakeSynth()
    async with serving(synth) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.url + SESSION_PATH) as ws:
        configured, sentences, done = await converse(ws, {"stream_audio": True}, DELTAS)
        await srv.wait_streams(0)
    assert configured == {
        "type": "session.configured", "session_id": configured["session_id"], "response_format": "pcm",
        "stream_audio": True, "split_granularity": "sentence",
    }
    assert configured["session_id"].startswith("speech_ws_")
    texts = ["Sure, we open at nine tomorrow.", "The store closes at six, every day but Sunday."]
    assert [s.start["sentence_text"] for s in sentences] == texts == sentence_texts(REPLY, "sentence")
    for i, s in enumerate(sentences):
        assert s.start == {
            "type": "audio.start", "id": f"{configured['session_id']}-{i}", "sentence_index": i,
            "sentence_text": texts[i], "format": "pcm", "sample_rate": RATE,
        }
        assert len(s.frames) > 1, "streamed as it is made, not one frame per sentence"
        np.testing.assert_array_equal(pcm(s.frames), fake_audio(texts[i]))
        assert s.done == {"type": "audio.done", "id": s.start["id"], "sentence_index": i,
                          "total_bytes": 2 * len(fake_audio(texts[i])), "error": False}
    assert done == {"type": "session.done", "session_id": configured["session_id"], "total_sentences": 2}
    metrics = srv.server.metrics.render()
    assert 'tts_streams_total{endpoint="session",outcome="flushed"} 1' in metrics


async def test_whole_wav_per_sentence_and_clause_granularity() -> None:
    synth = FakeSynth()
    async with serving(synth) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.url + SESSION_PATH) as ws:
        session = {"response_format": "wav", "split_granularity": "clause", "voice": "default", "seed": 7}
        _, sentences, done = await converse(ws, session, DELTAS)
    texts = sentence_texts(REPLY, "clause")
    assert texts == ["Sure,", "we open at nine tomorrow.", "The store closes at six,", "every day but Sunday."]
    assert [s.start["sentence_text"] for s in sentences] == texts
    for s, text in zip(sentences, texts, strict=True):
        assert len(s.frames) == 1 and s.start["format"] == "wav"
        samples, rate = wav_samples(s.frames[0])
        assert rate == RATE
        np.testing.assert_array_equal(samples, fake_audio(text))
        assert s.done is not None and s.done["total_bytes"] == len(s.frames[0])
    assert done["total_sentences"] == 4
    assert synth.options[-1].seed == 7 and synth.options[-1].voice is None  # "default": the server's voice


@pytest.mark.parametrize(
    ("first", "param", "text"),
    [
        ({"type": "input.text", "text": "hi"}, "type", "first WebSocket message must be session.config"),
        ({"type": "session.config", "session": {"instructions": "whisper"}}, "instructions", "not supported"),
        ({"type": "session.config", "session": {"stream_audio": True, "response_format": "wav"}},
         "response_format", "stream_audio=true requires response_format='pcm'"),
        ({"type": "session.config", "session": {"split_granularity": "word"}}, "split_granularity", "sentence"),
        ({"type": "session.config", "session": {"top_p": 3}}, "top_p", "top_p must be in (0, 1]"),
        ({"type": "session.config", "session": {"bogus": 1}}, "bogus", "unknown field"),
        ({"type": "session.config", "session": []}, "session", "must be an object"),
    ],
)
async def test_a_bad_first_message_answers_error_and_closes(first: dict, param: str, text: str) -> None:
    async with serving(FakeSynth()) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.url + SESSION_PATH) as ws:
        await ws.send_json(first)
        error = await ws.receive_json()
        closing = await ws.receive()
        assert len(srv.server.runs) == 0
    assert error["type"] == "error" and error["error_type"] == "BadRequestError" and error["code"] == 400
    assert error["param"] == param and text in error["message"], error
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_inline_config_fields_and_errors_that_keep_the_session() -> None:
    """The config's fields may come inline (no `session` object); an unknown message type, a binary
    frame or text that is not a string answers an error and the session goes on."""
    async with serving(FakeSynth()) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.url + SESSION_PATH) as ws:
        await ws.send_json({"type": "session.config", "stream_audio": True})
        assert (await ws.receive_json())["stream_audio"] is True
        await ws.send_json({"type": "input.cancel"})
        assert "unsupported speech WebSocket message type: 'input.cancel'" in (await ws.receive_json())["message"]
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive_json())["message"] == "speech WebSocket client messages must be text frames"
        await ws.send_json({"type": "input.text", "text": 5})
        assert (await ws.receive_json())["message"] == "input.text text must be a string"
        await ws.send_str("{not json")
        assert "not valid JSON" in (await ws.receive_json())["message"]
        _, sentences, done = await converse_rest(ws, ["Hello there."])
    assert [s.start["sentence_text"] for s in sentences] == ["Hello there."] and done["total_sentences"] == 1


async def converse_rest(ws: aiohttp.ClientWebSocketResponse, deltas: list[str]) -> tuple[None, list[Sentence], dict]:
    """`converse` on a session already configured."""
    for d in deltas:
        await ws.send_json({"type": "input.text", "text": d})
    await ws.send_json({"type": "input.done"})
    sentences: list[Sentence] = []
    async with asyncio.timeout(30):
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                sentences[-1].frames.append(msg.data)
                continue
            event = msg.json()
            if event["type"] == "audio.start":
                sentences.append(Sentence(event))
            elif event["type"] == "audio.done":
                sentences[-1].done = event
            else:
                assert event["type"] == "session.done", event
                return None, sentences, event


async def test_closing_mid_sentence_cancels_the_engine_stream() -> None:
    """sglang-omni's barge-in: the client closes the socket; the engine stops and the slot is free."""
    synth = FakeSynth(block=200, block_delay_s=0.05)
    async with serving(synth) as srv, aiohttp.ClientSession() as http:
        async with http.ws_connect(srv.url + SESSION_PATH) as ws:
            await ws.send_json({"type": "session.config", "session": {"stream_audio": True}})
            await ws.receive_json()
            await ws.send_json({"type": "input.text", "text": "A rather long sentence that takes a while to say. "})
            assert (await ws.receive_json())["type"] == "audio.start"
            assert (await ws.receive()).type == aiohttp.WSMsgType.BINARY
        await srv.wait_streams(0, timeout=5)
        metrics = srv.server.metrics.render()
    assert 'tts_streams_total{endpoint="session",outcome="cancelled"} 1' in metrics


async def test_a_full_server_answers_busy_and_an_engine_failure_ends_the_session() -> None:
    synth = FakeSynth(fail_on="broken")
    async with serving(synth, {"max_streams": 1}) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.url + SESSION_PATH) as first, http.ws_connect(srv.url + SESSION_PATH) as second:
        await first.send_json({"type": "session.config"})
        await first.receive_json()
        await second.send_json({"type": "session.config"})
        busy = await second.receive_json()
        assert busy["code"] == 503 and busy["error_type"] == "server_error" and "max_streams" in busy["message"]
        await first.send_json({"type": "input.text", "text": "This one is broken. "})
        error = await first.receive_json()
        done = await first.receive_json()
        closing = await first.receive()
        await srv.wait_streams(0)
    assert error["type"] == "error" and error["code"] == 500 and "engine broke" in error["message"]
    assert done["type"] == "audio.done" and done["id"].endswith("-0")
    assert {k: done[k] for k in ("sentence_index", "total_bytes", "error")} == {
        "sentence_index": 0, "total_bytes": 0, "error": True,
    }
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_token_auth_and_the_idle_timeout() -> None:
    env = {"AGENT_RUNTIME_TTS_TOKEN": "s3cret"}
    overrides = {"auth": "on", "idle_timeout_s": 0.3}
    async with serving(FakeSynth(), overrides, environ=env) as srv, aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(srv.url + SESSION_PATH)
        assert refused.value.status == 401
        async with http.ws_connect(srv.url + SESSION_PATH, headers={"Authorization": "Bearer s3cret"}) as ws:
            await ws.send_json({"type": "session.config"})
            await ws.receive_json()
            error = await ws.receive_json()
            assert "idle timeout" in error["message"]
            assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


@pytest.mark.slow
async def test_piper_session_speaks_what_the_engine_says_locally(piper_voice) -> None:
    local, segments = await local_stream_audio(piper_voice, REPLY, chunking=chunking_for("sentence"),
                                               max_segment_chars=250)
    async with serving(piper_voice, engine="piper") as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.url + SESSION_PATH) as ws:
        _, sentences, done = await converse(ws, {"stream_audio": True}, DELTAS)
    assert [s.start["sentence_text"] for s in sentences] == [text for _, text in segments]
    assert all(s.start["sample_rate"] == piper_voice.sample_rate for s in sentences)
    np.testing.assert_array_equal(np.concatenate([pcm(s.frames) for s in sentences]), local)
    assert done["total_sentences"] == len(segments) == 2


async def test_a_draining_server_closes_sessions_with_going_away() -> None:
    synth = FakeSynth(block=200, block_delay_s=0.05)
    async with serving(synth) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.url + SESSION_PATH) as idle, http.ws_connect(srv.url + SESSION_PATH) as speaking:
        await speaking.send_json({"type": "session.config", "session": {"stream_audio": True}})
        await speaking.receive_json()
        await speaking.send_json({"type": "input.text", "text": "A rather long sentence that takes a while to say. "})
        assert (await speaking.receive_json())["type"] == "audio.start"

        async def last_message(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
            while (msg := await ws.receive()).type == aiohttp.WSMsgType.BINARY:
                pass
            return msg

        reading = asyncio.gather(last_message(idle), last_message(speaking))
        await srv.server.drain(0.1)
        idle_close, msg = await reading
        assert len(srv.server.runs) == 0 and not srv.server.sessions
    assert idle_close.type == aiohttp.WSMsgType.CLOSE and idle_close.data == 1001
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001


async def test_an_oversized_message_closes_the_session_and_frees_the_slot() -> None:
    synth = FakeSynth(block=200, block_delay_s=0.05)
    async with serving(synth, {"max_body_bytes": 2048}) as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.url + SESSION_PATH) as ws:
        await ws.send_json({"type": "session.config"})
        await ws.receive_json()
        await ws.send_json({"type": "input.text", "text": "x" * 4096})
        closing = await ws.receive()
        await srv.wait_streams(0)
        metrics = srv.server.metrics.render()
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1009
    assert 'tts_rejected_total{reason="bad_request"} 1' in metrics
