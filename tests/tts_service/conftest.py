"""A `tts-serve` application on a real loopback socket, with a stand-in engine or the real piper voice."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
import wave
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import numpy as np

from agent_runtime.config import load_config
from agent_runtime.server.slowloris import start_http
from agent_runtime.tts.base import SpeechOptions, Synthesizer, UtteranceSynth
from agent_runtime.tts.stream import ChunkedSynthesizer
from agent_runtime.tts_service.protocol import SPEECH_PATH, STREAM_PATH, decode_pcm, wav_bytes
from agent_runtime.tts_service.server import TTSServer

RATE = 16_000
ALL_OPTIONS = frozenset(SpeechOptions.__slots__)  # type: ignore[attr-defined]


class _Utterance(UtteranceSynth):
    def __init__(self, synth: FakeSynth) -> None:
        self.synth = synth
        self.cancelled = threading.Event()

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        if self.synth.fail_on and self.synth.fail_on in text:
            raise RuntimeError(f"engine broke on {text!r}")
        audio = fake_audio(text)
        for start in range(0, len(audio), self.synth.block):
            if self.cancelled.is_set():
                return
            if self.synth.block_delay_s:
                self.synth.entered.set()
                self.cancelled.wait(self.synth.block_delay_s)
                if self.cancelled.is_set():
                    return
            yield audio[start:start + self.synth.block]

    def cancel(self) -> None:
        self.cancelled.set()


class FakeSynth(ChunkedSynthesizer):
    """A deterministic stand-in engine: every option is honoured (and recorded); audio derives from the text.

    `block_delay_s`: each audio block takes this long (cancellable); `fail_on`: a segment containing
    this text raises; `supported`: the option names it accepts (others: UnsupportedSpeechOption)."""

    name = "fake"

    def __init__(self, *, block: int = 800, block_delay_s: float = 0.0, fail_on: str | None = None,
                 supported: frozenset[str] = ALL_OPTIONS) -> None:
        self.sample_rate = RATE
        self.block = block
        self.block_delay_s = block_delay_s
        self.fail_on = fail_on
        self.supported = supported
        self.options: list[SpeechOptions] = []
        self.entered = threading.Event()

    def open_utterance(self) -> UtteranceSynth:
        return _Utterance(self)

    def open_utterance_for(self, options: SpeechOptions) -> UtteranceSynth:
        options.refuse_unsupported(self.supported, self.name)
        self.options.append(options)
        return _Utterance(self)


def fake_audio(text: str) -> np.ndarray:
    """What FakeSynth says for a segment: 200 samples per character, shaped by the characters."""
    codes = np.repeat(np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int16), 200)
    return ((codes - 64) * 100).astype(np.int16)


@dataclass
class Running:
    server: TTSServer
    url: str

    @property
    def ws_url(self) -> str:
        return self.url + STREAM_PATH

    @property
    def speech_url(self) -> str:
        return self.url + SPEECH_PATH

    async def wait_streams(self, n: int = 0, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.server.runs) != n:
                await asyncio.sleep(0.01)


@asynccontextmanager
async def serving(synth: Synthesizer, overrides: dict | None = None, *, engine: str = "fake",
                  environ: dict[str, str] | None = None, tts: dict | None = None) -> AsyncIterator[Running]:
    cfg = load_config(None, {"tts": {"engine": engine, **(tts or {})}, "tts_server": overrides or {}})
    server = TTSServer(cfg, synth, host="127.0.0.1", environ=environ or {})
    runner = await start_http(server.app, "127.0.0.1", 0, header_timeout_s=cfg.tts_server.header_timeout_s)
    try:
        yield Running(server, f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await server.drain(0.5)
        await runner.cleanup()


# -- reading answers ----------------------------------------------------------------------------
def wav_samples(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16), w.getframerate()


def parse_sse(body: str) -> tuple[list[dict], dict]:
    """A strict reader of sglang-omni's speech SSE: `data:` events separated by blank lines, audio
    chunks with one id and increasing index, one finish event, then `[DONE]` and nothing after."""
    assert body.endswith("\n\n"), "every event ends with a blank line"
    events = body[:-2].split("\n\n")
    for e in events:
        assert e.startswith("data: ") and "\n" not in e, f"not one data line: {e!r}"
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-1]]
    *chunks, final = payloads
    assert chunks, "no audio events"
    ids = {p["id"] for p in payloads}
    assert len(ids) == 1 and next(iter(ids)).startswith("speech-")
    for i, p in enumerate(payloads):
        assert p["object"] == "audio.speech.chunk"
        assert p["index"] == i
    for c in chunks:
        assert c["finish_reason"] is None
        assert set(c["audio"]) == {"data", "format", "mime_type", "sample_rate"}
    assert final["finish_reason"] == "stop" and final["audio"] is None and "usage" in final
    return chunks, final


async def ws_collect(ws: aiohttp.ClientWebSocketResponse, timeout: float = 30.0) -> tuple[list[dict], dict]:
    """Audio messages until the stream's `done` or `error`."""
    audio: list[dict] = []
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive_json()
            if msg["type"] == "audio":
                audio.append(msg)
            else:
                return audio, msg


def joined_pcm(audio_messages: list[dict]) -> np.ndarray:
    parts = [decode_pcm(m["audio"]) for m in audio_messages]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


def wav_b64(samples: np.ndarray, rate: int) -> str:
    return base64.b64encode(wav_bytes(np.asarray(samples, dtype=np.int16), rate)).decode()


async def local_stream_audio(synth: Synthesizer, text: str, **kwargs) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """The same engine used locally: audio and (segment_id, text) of the segments."""
    stream = synth.open_stream(**kwargs)
    stream.push_text(text)
    stream.flush()
    parts, segments = [], []
    async for chunk in stream:
        parts.append(chunk.audio)
        if chunk.segment_final:
            segments.append((chunk.segment_id, chunk.text))
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)), segments


def monotonic_ms() -> float:
    return time.monotonic() * 1000
