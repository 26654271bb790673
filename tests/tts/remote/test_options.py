"""`tts.engine: remote` options, the WAV decoding of sglang-omni chunks, auth."""

from __future__ import annotations

import asyncio
import base64
import socket
import struct

import numpy as np
import pytest

from agent_runtime.errors import BackendError, ConfigError
from agent_runtime.tts.base import SpeechOptions, VoiceSample
from agent_runtime.tts.remote.synthesizer import RemoteSynthesizer
from agent_runtime.tts.remote.wire import decode_wav, encode_wav, voice_fields
from tests.tts.remote.conftest import PIPER_TTS, speak


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_unknown_option_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown remote option\(s\) colour .*known: urls, protocol"):
        RemoteSynthesizer.from_options(urls=["http://x"], colour="red")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "urls is required"),
        ({"urls": []}, "non-empty list"),
        ({"urls": ["tts-a:8081"]}, "http:// or https://"),
        ({"urls": ["http://a", "http://a/"]}, "duplicates"),
        ({"urls": ["http://a"], "protocol": "grpc"}, "protocol must be one of"),
        ({"urls": ["http://a"], "retries": -1}, "retries"),
        ({"urls": ["http://a"], "read_timeout_s": 0}, "read_timeout_s"),
        ({"urls": ["http://a"], "engine_chunking": "s2pro"}, "sglang-omni only"),
        ({"urls": ["http://a"], "protocol": "sglang-omni", "engine_chunking": "x"}, "engine_chunking"),
        ({"urls": ["http://a"], "protocol": "sglang-omni", "sample_rate": "fast"}, "sample_rate"),
        (
            {"urls": ["http://a"], "protocol": "sglang-omni", "sample_rate": 8000, "top_k": 1.5},
            "top_k must be int",
        ),
    ],
)
def test_bad_options(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        RemoteSynthesizer.from_options(**options)


def test_no_reachable_server_names_the_urls() -> None:
    urls = [_closed_port_url(), _closed_port_url()]
    with pytest.raises(ConfigError, match="sample rate") as err:
        RemoteSynthesizer.from_options(urls=urls)
    assert all(u in str(err.value) for u in urls)


def test_given_sample_rate_needs_no_server_until_a_stream() -> None:
    url = _closed_port_url()
    synth = RemoteSynthesizer.from_options(urls=[url], sample_rate=24_000, backend="remote", retries=0)
    assert synth.sample_rate == 24_000

    async def main() -> None:
        try:
            with pytest.raises(BackendError, match=url):
                await speak(synth, ["Hello there."])
        finally:
            await synth.aclose()

    asyncio.run(main())


def test_voice_fields_defaults_and_overrides() -> None:
    defaults = {"voice": "joe", "temperature": 0.7, "top_p": None, "top_k": 30, "seed": None}
    assert voice_fields(defaults, None) == {"voice": "joe", "temperature": 0.7, "top_k": 30}
    got = voice_fields(defaults, SpeechOptions(temperature=0.2, seed=3))
    assert got == {"voice": "joe", "temperature": 0.2, "top_k": 30, "seed": 3}
    ref = VoiceSample(
        "hi", audio=np.zeros(160, np.float32), sample_rate=16_000, codes=np.ones((2, 3), np.int64)
    )
    cloned = voice_fields(defaults, SpeechOptions(references=(ref,)))
    assert "voice" not in cloned  # a cloned voice replaces the named one
    (r,) = cloned["references"]
    assert r["text"] == "hi" and r["vq_codes"] == [[1, 1, 1], [1, 1, 1]]
    pcm, rate = decode_wav(base64.b64decode(r["audio"]))
    assert rate == 16_000 and len(pcm) == 160


def test_decode_wav_formats() -> None:
    pcm = (np.arange(-800, 800, 7) * 37).astype(np.int16)
    got, rate = decode_wav(encode_wav(pcm, 44_100))
    assert rate == 44_100 and np.array_equal(got, pcm)
    # a streaming header (data size unknown) and 32-bit float samples, stereo
    f = np.stack([np.full(100, 0.5, np.float32), np.full(100, -0.5, np.float32)], axis=1)
    body = f.astype("<f4").tobytes()
    wav = (
        b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 3, 2, 24_000, 24_000 * 8, 8, 32)
        + b"data" + struct.pack("<I", 0xFFFFFFFF) + body
    )  # fmt: skip
    got, rate = decode_wav(wav)
    assert rate == 24_000 and len(got) == 100 and np.all(got == 0)
    with pytest.raises(ValueError):
        decode_wav(b"not a wav file at all")


@pytest.mark.slow
def test_bearer_token_from_token_env(farm, monkeypatch) -> None:
    server = farm.start(PIPER_TTS, {"auth": "on"}, env={"AGENT_RUNTIME_TTS_TOKEN": "s3cret"})
    try:
        monkeypatch.delenv("MY_TTS_TOKEN", raising=False)
        with pytest.raises(ConfigError, match="sample rate"):
            RemoteSynthesizer([server.url], token_env="MY_TTS_TOKEN")  # 401 on /v1/info
        monkeypatch.setenv("MY_TTS_TOKEN", "s3cret")
        synth = RemoteSynthesizer([server.url], token_env="MY_TTS_TOKEN")

        async def main() -> None:
            try:
                assert [t for t, _ in await speak(synth, ["Hello there."])] == ["Hello there."]
            finally:
                await synth.aclose()

        asyncio.run(main())
    finally:
        farm.stop(server)
