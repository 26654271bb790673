"""The tiny S2-Pro fixture served: what a client gets equals the same synthesizer used locally.

S2-Pro on CPU is exact with torch on one thread (see tests/s2pro/conftest.py)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import aiohttp
import numpy as np
import pytest
import torch

from agent_runtime.tts.base import SpeechOptions
from agent_runtime.tts.registry import create_synthesizer
from loadtest.server import start_tts_serve
from tests.conftest import REPO_ROOT
from tests.tts_service.conftest import (
    joined_pcm,
    local_stream_audio,
    parse_sse,
    serving,
    wav_samples,
    ws_collect,
)

REPLY = "Hello there, how are you today? We open at nine."
OPTIONS = {
    "checkpoint": "tests/fixtures/s2pro/tiny", "codec": "tests/fixtures/s2pro/codec_tiny.pth",
    "codec_config": "tests/fixtures/s2pro/codec_tiny.json", "seed": 7, "threads": 1,
}
CONFIG = f"""tts:
  engine: s2pro
  options:
    checkpoint: {REPO_ROOT}/tests/fixtures/s2pro/tiny
    codec: {REPO_ROOT}/tests/fixtures/s2pro/codec_tiny.pth
    codec_config: {REPO_ROOT}/tests/fixtures/s2pro/codec_tiny.json
    seed: 7
    threads: 1
"""


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def s2pro():
    opts = {k: str(REPO_ROOT / v) if isinstance(v, str) else v for k, v in OPTIONS.items()}
    synth = create_synthesizer("s2pro", opts)
    synth.warmup()
    yield synth
    synth.close()


@pytest.mark.slow
async def test_websocket_stream_equals_the_local_synthesizer(s2pro):
    local, segments = await local_stream_audio(s2pro, REPLY, max_segment_chars=250)
    async with serving(s2pro, engine="s2pro") as srv, aiohttp.ClientSession() as http, \
            http.ws_connect(srv.ws_url) as ws:
        await ws.send_json({"type": "start"})
        started = await ws.receive_json()
        assert started["engine"] == "s2pro" and started["sample_rate"] == s2pro.sample_rate
        for delta in ("Hello there, how a", "re you today? We ", "open at nine."):
            await ws.send_json({"type": "text", "text": delta})
        await ws.send_json({"type": "flush"})
        audio, end = await ws_collect(ws, timeout=120)
    assert end == {"type": "done", "reason": "flushed", "segments": len(segments)}
    texts = list(dict.fromkeys(m["text"] for m in audio))
    assert [(i, t) for i, t in enumerate(texts)] == segments
    assert local.size > 0
    assert np.array_equal(joined_pcm(audio), local)


@pytest.mark.slow
async def test_http_options_equal_the_local_synthesizer_with_those_options(s2pro):
    codes = np.load(REPO_ROOT / "tests/fixtures/s2pro/reference_codes.npy")
    fields = {"seed": 3, "temperature": 0.6, "top_p": 0.9, "top_k": 12, "max_new_tokens": 6}
    ref = {"vq_codes": codes.tolist(), "text": "A short reference transcript."}
    from agent_runtime.tts.base import VoiceSample

    want, _ = await local_stream_audio(
        s2pro, REPLY, max_segment_chars=250,
        options=SpeechOptions(**fields, references=(VoiceSample(text=ref["text"], codes=codes.astype(np.int64)),)),
    )
    async with serving(s2pro, engine="s2pro") as srv, aiohttp.ClientSession() as http:
        body = {"input": REPLY, **fields, "references": [ref]}
        async with http.post(srv.speech_url, json=body) as r:
            assert r.status == 200, await r.text()
            got, rate = wav_samples(await r.read())
        async with http.post(srv.speech_url, json={**body, "stream": True}) as r:
            chunks, _ = parse_sse(await r.text())
        async with http.post(srv.speech_url, json={"input": REPLY, "repetition_penalty": 1.2}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "repetition_penalty"
    assert rate == s2pro.sample_rate
    assert np.array_equal(got, want)
    sse = np.concatenate([wav_samples(base64.b64decode(c["audio"]["data"]))[0] for c in chunks])
    assert np.array_equal(sse, want)


@pytest.mark.slow
async def test_tts_serve_process_with_the_s2pro_config(s2pro, tmp_path):
    cfg = tmp_path / "s2pro.yaml"
    cfg.write_text(CONFIG)
    local, _ = await local_stream_audio(s2pro, REPLY, max_segment_chars=250)
    proc = await start_tts_serve(config=cfg, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, timeout=300)
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(proc.url + "/v1/audio/stream") as ws:
            await ws.send_json({"type": "start"})
            assert (await ws.receive_json())["engine"] == "s2pro"
            await ws.send_json({"type": "text", "text": REPLY})
            await ws.send_json({"type": "flush"})
            audio, end = await ws_collect(ws, timeout=120)
        assert end["reason"] == "flushed"
        assert np.array_equal(joined_pcm(audio), local)
    finally:
        await proc.stop()
