"""Shared pieces of the S2-Pro synthesizer tests: the tiny fixture engine and codecs, loaded once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import torch

from agent_runtime.tts.base import TTSChunk
from agent_runtime.tts.s2pro.codec import S2ProCodec
from agent_runtime.tts.s2pro.codec_config import CodecConfig
from agent_runtime.tts.s2pro.engine import S2ProEngine
from agent_runtime.tts.s2pro.local_backend import LocalBackend, LocalSettings
from agent_runtime.tts.s2pro.sampling import SamplingParams
from agent_runtime.tts.s2pro.synthesizer import S2ProSynthesizer

PARAMS = SamplingParams(temperature=0.8, top_p=0.8, top_k=30)
_CACHE: dict[str, object] = {}


def tiny_engine(fixtures: Path) -> S2ProEngine:
    """The fixture Dual-AR checkpoint (4 codebooks of 32), fp32, one per test session."""
    if "engine" not in _CACHE:
        _CACHE["engine"] = S2ProEngine.load(fixtures / "tiny", dtype=torch.float32)
    return _CACHE["engine"]  # type: ignore[return-value]


def tiny_codec(fixtures: Path) -> S2ProCodec:
    """The fixture codec (4 codebooks: semantic 64, residual 32; 32 samples per frame)."""
    if "codec" not in _CACHE:
        from agent_runtime.tts.s2pro.codec_loader import load_codec

        _CACHE["codec"] = load_codec(fixtures / "codec_tiny.pth", fixtures / "codec_tiny.json")
    return _CACHE["codec"]  # type: ignore[return-value]


def wide_codec(fixtures: Path) -> S2ProCodec:
    """The tiny codec's layout with S2-Pro's frame (2048 samples = 46.4 ms), random weights:
    replies last as long as real ones, so a caller can talk over them."""
    if "wide" not in _CACHE:
        from agent_runtime.tts.s2pro.codec_bench import random_decode_codec

        d = json.loads((fixtures / "codec_tiny.json").read_text())
        d.update(hop_length=512, frame_length=2048)
        d["encoder"]["rates"] = [8, 8, 8]
        d["decoder"].update(rates=[8, 8, 8], block_channels=[16, 8, 4], dim=32, residual_dilations=[1])
        _CACHE["wide"] = random_decode_codec(CodecConfig.from_dict(d), "cpu", torch.float32)
    return _CACHE["wide"]  # type: ignore[return-value]


def make_synth(engine: S2ProEngine, codec: S2ProCodec, **settings) -> S2ProSynthesizer:
    settings.setdefault("params", PARAMS)
    return S2ProSynthesizer(LocalBackend(engine, codec, None, LocalSettings(**settings)))


async def speak(synth: S2ProSynthesizer, text: str, deltas: bool = False) -> list[TTSChunk]:
    """Push `text` (all at once or word by word), flush, collect every chunk."""
    stream = synth.open_stream()
    if deltas:
        for word in text.split(" "):
            stream.push_text(word + " ")
            await asyncio.sleep(0)
    else:
        stream.push_text(text)
    stream.flush()
    return [chunk async for chunk in stream]


def audio_of(chunks: list[TTSChunk]) -> np.ndarray:
    blocks = [c.audio for c in chunks if len(c.audio)]
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int16)
