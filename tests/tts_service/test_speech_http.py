"""`POST /v1/audio/speech`: sglang-omni's request, its fields, formats, errors and limits."""

from __future__ import annotations

import asyncio
import base64
import threading

import aiohttp
import numpy as np
import pytest

from agent_runtime.tts_service.protocol import INFO_PATH
from tests.tts_service.conftest import (
    RATE,
    FakeSynth,
    fake_audio,
    local_stream_audio,
    parse_sse,
    serving,
    wav_b64,
    wav_samples,
)

TEXT = "Hello there, how are you today? We open at nine tomorrow."


async def post(url: str, body, **kwargs) -> tuple[int, bytes, aiohttp.typedefs.LooseHeaders]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body, **kwargs) as r:
        return r.status, await r.read(), r.headers


async def post_json_error(url: str, body) -> tuple[int, dict]:
    status, data, headers = await post(url, body)
    assert headers["Content-Type"].startswith("application/json")
    import json

    return status, json.loads(data)


# -- fields -> SpeechOptions --------------------------------------------------------------------
REF_WAV = wav_b64((np.sin(np.arange(1600) / 5) * 8000).astype(np.int16), 16_000)

SUPPORTED = [
    ({"voice": "alice"}, "voice", "alice"),
    ({"speaker": "bob"}, "voice", "bob"),
    ({"temperature": 0.5}, "temperature", 0.5),
    ({"top_p": 0.9}, "top_p", 0.9),
    ({"top_k": 20}, "top_k", 20),
    ({"repetition_penalty": 1.2}, "repetition_penalty", 1.2),
    ({"seed": 7}, "seed", 7),
    ({"max_new_tokens": 64}, "max_new_tokens", 64),
    ({"speed": 1.5}, "speed", 1.5),
]


@pytest.mark.parametrize(("fields", "name", "value"), SUPPORTED, ids=[s[0].__iter__().__next__() for s in SUPPORTED])
async def test_each_supported_field_reaches_the_engine(fields, name, value):
    synth = FakeSynth()
    async with serving(synth) as srv:
        status, data, headers = await post(srv.speech_url, {"input": "Hi there.", **fields})
    assert status == 200, data
    assert headers["Content-Type"] == "audio/wav"
    [options] = synth.options
    assert getattr(options, name) == value
    assert [f for f in options.set_fields()] == [name]


async def test_default_voice_and_normal_speed_ask_nothing_of_the_engine():
    synth = FakeSynth(supported=frozenset())
    async with serving(synth) as srv:
        status, data, _ = await post(srv.speech_url, {"input": "Hi.", "voice": "default", "speed": 1.0})
    assert status == 200, data


@pytest.mark.parametrize("key", ["audio", "data", "ref_audio"])
async def test_reference_inline_audio_is_decoded(key):
    synth = FakeSynth()
    async with serving(synth) as srv:
        body = {"input": "Hi.", "references": [{key: REF_WAV, "text": "a reference"}]}
        status, data, _ = await post(srv.speech_url, body)
    assert status == 200, data
    [ref] = synth.options[0].references
    assert ref.text == "a reference" and ref.sample_rate == 16_000 and ref.codes is None
    assert ref.audio.dtype == np.float32 and len(ref.audio) == 1600
    assert np.allclose(ref.audio * 32768, (np.sin(np.arange(1600) / 5) * 8000).astype(np.int16), atol=1)


async def test_reference_data_url():
    synth = FakeSynth()
    async with serving(synth) as srv:
        status, data, _ = await post(srv.speech_url, {"input": "Hi.", "ref_audio": "data:audio/wav;base64," + REF_WAV,
                                                      "ref_text": "spoken words"})
    assert status == 200, data
    [ref] = synth.options[0].references
    assert ref.text == "spoken words" and len(ref.audio) == 1600


@pytest.mark.parametrize(("codes", "shape"), [([[1, 2, 3], [4, 5, 6]], (2, 3)), ([7, 8, 9, 10], (1, 4))])
async def test_reference_vq_codes(codes, shape):
    synth = FakeSynth()
    async with serving(synth) as srv:
        status, data, _ = await post(srv.speech_url, {"input": "Hi.", "references": [{"vq_codes": codes, "text": "t"}]})
    assert status == 200, data
    [ref] = synth.options[0].references
    assert ref.codes.dtype == np.int64 and ref.codes.shape == shape and ref.audio is None
    assert ref.codes.ravel().tolist() == np.asarray(codes).ravel().tolist()


async def test_reference_audio_path_inside_reference_dir(tmp_path):
    from agent_runtime.audio.wav import write_wav

    write_wav(tmp_path / "voice.wav", (np.sin(np.arange(800) / 3) * 5000).astype(np.int16), 24_000)
    synth = FakeSynth()
    async with serving(synth, {"reference_dir": str(tmp_path)}) as srv:
        ok, data, _ = await post(srv.speech_url, {"input": "Hi.", "references": [{"audio_path": "voice.wav", "text": "t"}]})
        escape, err = await post_json_error(srv.speech_url, {"input": "Hi.", "references": [{"audio_path": "../x.wav"}]})
    assert ok == 200, data
    assert synth.options[0].references[0].sample_rate == 24_000
    assert escape == 400 and err["error"]["param"] == "references[0].audio_path"


async def test_reference_audio_path_refused_without_reference_dir():
    async with serving(FakeSynth()) as srv:
        status, err = await post_json_error(srv.speech_url, {"input": "Hi.", "references": [{"audio_path": "/etc/passwd"}]})
        status2, err2 = await post_json_error(srv.speech_url, {"input": "Hi.", "ref_audio": "/tmp/voice.wav"})
    assert status == 400 and err["error"]["param"] == "references[0].audio_path"
    assert "reference_dir" in err["error"]["message"]
    assert status2 == 400 and err2["error"]["param"] == "ref_audio"


async def test_bad_reference_audio_names_the_field():
    async with serving(FakeSynth()) as srv:
        status, err = await post_json_error(
            srv.speech_url, {"input": "Hi.", "references": [{"audio": base64.b64encode(b"not a wav file at all").decode()}]}
        )
    assert status == 400 and err["error"]["param"] == "references[0].audio"


# -- what the service cannot honour ----------------------------------------------------------------
UNSUPPORTED = [
    ("task_type", "VoiceDesign"),
    ("instructions", "whisper it"),
    ("language", "French"),
    ("x_vector_only_mode", True),
    ("token_count", 10),
    ("duration_tokens", 10),
    ("stage_params", {"talker": {"x": 1}}),
    ("initial_codec_chunk_frames", 1),
    ("response_format", "mp3"),
    ("stream_format", "websocket"),
    ("bogus_field", 1),
]


@pytest.mark.parametrize(("name", "value"), UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
async def test_each_unsupported_field_is_a_400_naming_it(name, value):
    synth = FakeSynth()
    async with serving(synth) as srv:
        status, err = await post_json_error(srv.speech_url, {"input": "Hi.", name: value})
        assert srv.server.runs == set()
    assert status == 400
    assert err["error"]["param"] == name
    assert err["error"]["type"] == "BadRequestError" and err["error"]["code"] == 400
    assert name in err["error"]["message"] or "supported" in err["error"]["message"]
    assert synth.options == []


@pytest.mark.parametrize("language", [None, "Auto", "English", "english"])
async def test_english_languages_are_accepted(language):
    async with serving(FakeSynth()) as srv:
        status, data, _ = await post(srv.speech_url, {"input": "Hi.", "language": language})
    assert status == 200, data


@pytest.mark.parametrize(("name", "value"), [("max_new_tokens", 0), ("seed", -1), ("speed", 9.0), ("top_p", 0.0),
                                             ("temperature", -1.0), ("top_k", "many")])
async def test_out_of_range_values_are_a_400(name, value):
    async with serving(FakeSynth()) as srv:
        status, err = await post_json_error(srv.speech_url, {"input": "Hi.", name: value})
    assert status == 400 and err["error"]["param"] == name


async def test_engine_refusal_is_a_400_naming_the_field_and_frees_the_slot():
    synth = FakeSynth(supported=frozenset({"seed"}))
    async with serving(synth, {"max_streams": 1}) as srv:
        status, err = await post_json_error(srv.speech_url, {"input": "Hi.", "seed": 1, "top_k": 3})
        assert status == 400 and err["error"]["param"] == "top_k"
        status, data, _ = await post(srv.speech_url, {"input": "Hi.", "seed": 1})
        assert status == 200, data
        assert srv.server.runs == set()


@pytest.mark.parametrize(("fields", "param"), [
    ({"voice": "amy"}, "voice"), ({"temperature": 0.5}, "temperature"), ({"top_p": 0.5}, "top_p"),
    ({"top_k": 5}, "top_k"), ({"repetition_penalty": 1.1}, "repetition_penalty"), ({"seed": 3}, "seed"),
    ({"max_new_tokens": 10}, "max_new_tokens"), ({"references": [{"vq_codes": [[1, 2]], "text": "x"}]}, "references"),
])
async def test_piper_refuses_what_it_cannot_honour(piper_voice, fields, param):
    async with serving(piper_voice, engine="piper") as srv:
        status, err = await post_json_error(srv.speech_url, {"input": "Hi.", **fields})
    assert status == 400 and err["error"]["param"] == param


@pytest.mark.slow
async def test_piper_speed_changes_the_audio(piper_voice):
    async with serving(piper_voice, engine="piper") as srv:
        normal_status, normal, _ = await post(srv.speech_url, {"input": TEXT})
        fast_status, fast, _ = await post(srv.speech_url, {"input": TEXT, "speed": 2.0})
    assert normal_status == 200 and fast_status == 200, fast
    normal_pcm, _ = wav_samples(normal)
    fast_pcm, _ = wav_samples(fast)
    assert len(fast_pcm) < 0.75 * len(normal_pcm)


# -- input -------------------------------------------------------------------------------------
async def test_input_must_not_be_empty_or_too_long():
    async with serving(FakeSynth(), {"max_input_chars": 50}) as srv:
        empty, err = await post_json_error(srv.speech_url, {"input": "   "})
        assert empty == 400 and err["error"]["param"] == "input"
        long, err = await post_json_error(srv.speech_url, {"input": "x" * 51})
        assert long == 400 and err["error"]["param"] == "input" and "50" in err["error"]["message"]
        missing, err = await post_json_error(srv.speech_url, {"voice": "a"})
        assert missing == 400 and err["error"]["param"] == "input"


# -- formats -----------------------------------------------------------------------------------
@pytest.mark.slow
async def test_wav_pcm_and_streams_carry_the_same_audio(piper_voice):
    """Non-streaming WAV == raw PCM == the SSE chunks joined == the raw PCM stream == the engine locally."""
    local, _segments = await local_stream_audio(piper_voice, TEXT, max_segment_chars=250)
    async with serving(piper_voice, engine="piper") as srv:
        status, wav, headers = await post(srv.speech_url, {"input": TEXT})
        assert status == 200 and headers["Content-Type"] == "audio/wav"
        whole, rate = wav_samples(wav)
        status, pcm, headers = await post(srv.speech_url, {"input": TEXT, "response_format": "pcm"})
        assert status == 200 and headers["Content-Type"] == "audio/pcm"
        assert headers["X-Sample-Rate"] == str(piper_voice.sample_rate)
        raw = np.frombuffer(pcm, dtype="<i2")
        status, sse, headers = await post(srv.speech_url, {"input": TEXT, "stream": True})
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        chunks, final = parse_sse(sse.decode())
        status, stream_pcm, headers = await post(
            srv.speech_url, {"input": TEXT, "stream": True, "stream_format": "audio", "response_format": "pcm"}
        )
        assert status == 200 and headers["Content-Type"] == "audio/pcm"
        assert headers["X-Sample-Rate"] == str(piper_voice.sample_rate)
    assert rate == piper_voice.sample_rate
    sse_audio = []
    for c in chunks:
        assert c["audio"]["format"] == "wav" and c["audio"]["mime_type"] == "audio/wav"
        assert c["audio"]["sample_rate"] == piper_voice.sample_rate
        samples, chunk_rate = wav_samples(base64.b64decode(c["audio"]["data"]))
        assert chunk_rate == piper_voice.sample_rate
        sse_audio.append(samples)
    assert len(chunks) >= 2  # two sentences: at least one chunk each
    assert np.array_equal(whole, local)
    assert np.array_equal(raw, whole)
    assert np.array_equal(np.concatenate(sse_audio), whole)
    assert np.array_equal(np.frombuffer(stream_pcm, dtype="<i2"), whole)
    assert final["usage"]["input_chars"] == len(TEXT)


async def test_sse_with_pcm_chunks():
    async with serving(FakeSynth()) as srv:
        status, sse, _ = await post(srv.speech_url, {"input": "Hi there.", "stream": True, "stream_format": "sse",
                                                     "response_format": "pcm"})
    assert status == 200
    chunks, _ = parse_sse(sse.decode())
    assert all(c["audio"]["format"] == "pcm" and c["audio"]["mime_type"] == "audio/pcm" for c in chunks)
    joined = np.concatenate([np.frombuffer(base64.b64decode(c["audio"]["data"]), dtype="<i2") for c in chunks])
    assert np.array_equal(joined, fake_audio("Hi there."))


async def test_stream_format_audio_needs_pcm():
    async with serving(FakeSynth()) as srv:
        status, err = await post_json_error(srv.speech_url, {"input": "Hi.", "stream": True, "stream_format": "audio"})
    assert status == 400 and err["error"]["param"] == "response_format"


async def test_engine_failure_mid_request():
    async with serving(FakeSynth(fail_on="boom")) as srv:
        status, err = await post_json_error(srv.speech_url, {"input": "All fine here. Then boom goes the engine."})
        assert status == 500 and "engine" in err["error"]["message"]
        status, sse, _ = await post(srv.speech_url, {"input": "All fine here. Then boom goes the engine.", "stream": True})
        assert status == 200
        events = sse.decode().strip().split("\n\n")
        assert events[-1] == "data: [DONE]" and '"finish_reason":"error"' in events[-2]
        await srv.wait_streams(0)
        assert srv.server.metrics.streams.values[("speech", "error")] == 2


# -- limits, refusals, hostile input --------------------------------------------------------------
@pytest.mark.slow
async def test_busy_at_the_cap_with_retry_after():
    synth = FakeSynth(block_delay_s=0.2)
    async with serving(synth, {"max_streams": 1}) as srv, aiohttp.ClientSession() as http:
        first = asyncio.create_task(post(srv.speech_url, {"input": "A long reply that takes a while to speak."}))
        await srv.wait_streams(1)
        async with http.post(srv.speech_url, json={"input": "Hi."}) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "1"
            assert "max_streams" in (await r.json())["error"]["message"]
        async with http.get(srv.url + "/readyz") as r:
            assert (await r.json())["streams"] == 1
        status, _, _ = await first
        assert status == 200
        assert srv.server.metrics.rejected.values[("busy",)] == 1


async def test_hostile_bodies_are_4xx_and_the_server_still_answers():
    async with serving(FakeSynth(), {"max_body_bytes": 2048, "max_json_depth": 8}) as srv, \
            aiohttp.ClientSession() as http:
        cases = [
            (b"{not json", "application/json", 400),
            (b"\xff\xfe\x00garbage", "application/octet-stream", 400),
            (b"[1, 2, 3]", "application/json", 400),
            (b'"just a string"', "application/json", 400),
            (("[" * 50 + "]" * 50).encode(), "application/json", 400),
            (b'{"input": "' + b"x" * 4000 + b'"}', "application/json", 413),
            (b'{"input": 5}', "application/json", 400),
            (b'{"input": "hi", "references": [{"vq_codes": "nope"}]}', "application/json", 400),
        ]
        for body, ctype, expected in cases:
            async with http.post(srv.speech_url, data=body, headers={"Content-Type": ctype}) as r:
                assert r.status == expected, (body[:40], await r.text())
                assert "error" in await r.json()
        async with http.get(srv.url + "/readyz") as r:
            assert r.status == 200
        async with http.post(srv.speech_url, json={"input": "Still here."}) as r:
            assert r.status == 200


async def test_client_disconnect_cancels_the_synthesis():
    synth = FakeSynth(block_delay_s=0.3)
    async with serving(synth) as srv:
        async with aiohttp.ClientSession() as http, \
                http.post(srv.speech_url, json={"input": "One two three four five six seven.", "stream": True}) as r:
            assert r.status == 200
            await r.content.readuntil(b"\n\n")  # the first chunk
            assert len(srv.server.runs) == 1
        await srv.wait_streams(0, timeout=2.0)  # well before the 30+ blocks still to come
        assert srv.server.metrics.streams.values[("speech", "cancelled")] == 1


async def test_non_streaming_disconnect_cancels_too():
    synth = FakeSynth(block_delay_s=0.3)
    async with serving(synth) as srv:
        async with aiohttp.ClientSession() as http:
            task = asyncio.create_task(http.post(srv.speech_url, json={"input": "One two three four five six seven."}))
            await srv.wait_streams(1)
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await srv.wait_streams(0, timeout=2.0)


# -- auth --------------------------------------------------------------------------------------
async def test_auth_on_every_route_but_health():
    env = {"AGENT_RUNTIME_TTS_TOKEN": "s3cret"}
    async with serving(FakeSynth(), {"auth": "on"}, environ=env) as srv, aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(srv.url + path) as r:
                assert r.status == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            async with http.post(srv.speech_url, json={"input": "Hi."}, headers=headers) as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
            for path in (INFO_PATH, "/metrics"):
                async with http.get(srv.url + path, headers=headers) as r:
                    assert r.status == 401
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await http.ws_connect(srv.ws_url, headers=headers)
            assert exc.value.status == 401
        good = {"Authorization": "Bearer s3cret"}
        async with http.post(srv.speech_url, json={"input": "Hi."}, headers=good) as r:
            assert r.status == 200
        async with http.ws_connect(srv.ws_url, headers=good) as ws:
            await ws.send_json({"type": "start"})
            assert (await ws.receive_json())["type"] == "started"
        assert srv.server.metrics.rejected.values[("unauthorized",)] == 12


def test_auth_on_without_a_token_is_a_config_error():
    from agent_runtime.config import load_config
    from agent_runtime.errors import ConfigError
    from agent_runtime.tts_service.server import TTSServer

    with pytest.raises(ConfigError, match="AGENT_RUNTIME_TTS_TOKEN") as exc:
        TTSServer(load_config(None, {"tts_server": {"auth": "on"}}), FakeSynth(), environ={})
    assert "tts_server.auth" in str(exc.value)


async def test_host_check():
    async with serving(FakeSynth()) as srv, aiohttp.ClientSession() as http, \
            http.post(srv.speech_url, json={"input": "Hi."}, headers={"Host": "evil.example"}) as r:
        assert r.status == 421


# -- operations --------------------------------------------------------------------------------
async def test_info_readyz_and_metrics():
    async with serving(FakeSynth(), {"max_streams": 3}) as srv, aiohttp.ClientSession() as http:
        async with http.get(srv.url + "/readyz") as r:
            assert r.status == 200
            assert await r.json() == {"ready": True, "streams": 0, "max_streams": 3, "engine": "fake", "sample_rate": RATE}
        async with http.get(srv.url + INFO_PATH) as r:
            info = await r.json()
            assert info["engine"] == "fake" and info["sample_rate"] == RATE and info["max_streams"] == 3
        await post(srv.speech_url, {"input": "Hi there."})
        async with http.get(srv.url + "/metrics") as r:
            text = await r.text()
    assert 'tts_streams_total{endpoint="speech",outcome="flushed"} 1' in text
    assert "tts_active_streams 0" in text
    assert 'tts_time_to_first_audio_seconds_count{endpoint="speech"} 1' in text
    assert 'tts_real_time_factor_count{endpoint="speech"} 1' in text
    assert 'tts_rejected_total{reason="busy"} 0' in text
    assert "tts_cancel_latency_seconds" in text


async def test_not_ready_until_loaded():
    from agent_runtime.config import load_config
    from agent_runtime.server.slowloris import start_http
    from agent_runtime.tts_service.server import TTSServer

    gate = threading.Event()
    synth = FakeSynth()
    cfg = load_config(None, {"tts": {"engine": "fake"}})
    server = TTSServer(cfg, load=lambda: gate.wait(5) and synth, environ={})
    runner = await start_http(server.app, "127.0.0.1", 0, header_timeout_s=5)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/healthz") as r:
                assert r.status == 200
            async with http.get(url + "/readyz") as r:
                assert r.status == 503
            async with http.post(url + "/v1/audio/speech", json={"input": "Hi."}) as r:
                assert r.status == 503
            gate.set()
            async with asyncio.timeout(5):
                while server.synth is None:
                    await asyncio.sleep(0.01)
            async with http.get(url + "/readyz") as r:
                assert r.status == 200
    finally:
        await server.drain(0)
        await runner.cleanup()


async def test_raw_pcm_stream_engine_failure_is_a_truncated_body():
    async with serving(FakeSynth(fail_on="boom")) as srv, aiohttp.ClientSession() as http:
        body = {"input": "All fine here. Then boom goes the engine.", "stream": True, "stream_format": "audio",
                "response_format": "pcm"}
        async with http.post(srv.speech_url, json=body) as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        async with http.get(srv.url + "/readyz") as r:
            assert r.status == 200


async def test_drain_refuses_new_requests_and_cuts_long_ones_after_the_grace():
    synth = FakeSynth(block_delay_s=0.2)
    async with serving(synth) as srv, aiohttp.ClientSession() as http:
        async with http.post(srv.speech_url, json={"input": "A long reply that takes its time.", "stream": True}) as r:
            await r.content.readuntil(b"\n\n")
            drain = asyncio.create_task(srv.server.drain(0.3))
            await asyncio.sleep(0.05)
            async with http.get(srv.url + "/readyz") as ready:
                assert ready.status == 503 and (await ready.json())["ready"] is False
            async with http.post(srv.speech_url, json={"input": "Hi."}) as refused:
                assert refused.status == 503 and refused.headers["Retry-After"] == "1"
            rest = (await r.read()).decode()
        await drain
        events = rest.strip().split("\n\n")
        assert events[-1] == "data: [DONE]" and '"finish_reason":"abort"' in events[-2]
        await srv.wait_streams(0)
        assert srv.server.metrics.streams.values[("speech", "cancelled")] == 1
        assert srv.server.metrics.rejected.values[("shutting_down",)] == 1
