"""Encoding helpers shared by the remote clients: WAV bytes <-> samples, SpeechOptions -> JSON."""

from __future__ import annotations

import base64
import io
import struct
from typing import Any

import numpy as np

from agent_runtime.audio.frame import float_to_pcm16
from agent_runtime.tts.base import SpeechOptions, VoiceSample

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "seed")
"""Sampling defaults the engine's options may set (sent on every stream unless overridden)."""

_FORMAT_PCM = 1
_FORMAT_FLOAT = 3
_FORMAT_EXTENSIBLE = 0xFFFE


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """One WAV file (as a streaming server writes it: the data chunk's size may be 0 or too big)
    -> (int16 mono samples, sample rate). Multi-channel audio is mixed down. Raises ValueError."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            tag, channels, rate = struct.unpack_from("<HHI", data, body)
            bits = struct.unpack_from("<H", data, body + 14)[0]
            if tag == _FORMAT_EXTENSIBLE and size >= 26:
                tag = struct.unpack_from("<H", data, body + 24)[0]
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            if fmt is None:
                raise ValueError("WAV data chunk before its fmt chunk")
            end = len(data) if size in (0, 0xFFFFFFFF) else min(len(data), body + size)
            return _samples(data[body:end], *fmt), fmt[2]
        pos = body + size + (size & 1)
    raise ValueError("WAV file without a data chunk")


def _samples(raw: bytes, tag: int, channels: int, rate: int, bits: int) -> np.ndarray:
    width = bits // 8
    usable = len(raw) - len(raw) % max(1, width * channels)
    raw = raw[:usable]
    if tag == _FORMAT_PCM and bits == 16:
        x = np.frombuffer(raw, dtype="<i2")
        if channels == 1:
            return x.astype(np.int16)
        return x.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if tag == _FORMAT_PCM and bits == 32:
        f = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2_147_483_648.0
    elif tag == _FORMAT_PCM and bits == 8:
        f = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == _FORMAT_FLOAT and bits == 32:
        f = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif tag == _FORMAT_FLOAT and bits == 64:
        f = np.frombuffer(raw, dtype="<f8").astype(np.float32)
    else:
        raise ValueError(f"unsupported WAV sample format (format {tag}, {bits} bits)")
    if channels > 1:
        f = f.reshape(-1, channels).mean(axis=1)
    return float_to_pcm16(f)


def encode_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono float32 ([-1, 1]) or int16 samples -> a 16-bit PCM WAV file."""
    pcm = samples if samples.dtype == np.int16 else float_to_pcm16(np.asarray(samples, dtype=np.float32))
    body = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    out = io.BytesIO()
    out.write(b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVE")
    out.write(b"fmt " + struct.pack("<IHHIIHH", 16, _FORMAT_PCM, 1, sample_rate, sample_rate * 2, 2, 16))
    out.write(b"data" + struct.pack("<I", len(body)) + body)
    return out.getvalue()


def reference_json(sample: VoiceSample) -> dict[str, Any]:
    """A `VoiceSample` as the protocol's `Reference` (base64 WAV audio and/or `vq_codes`)."""
    ref: dict[str, Any] = {"text": sample.text}
    if sample.audio is not None:
        if sample.sample_rate is None:
            raise ValueError("a reference's audio needs its sample_rate")
        ref["audio"] = base64.b64encode(encode_wav(sample.audio, sample.sample_rate)).decode("ascii")
        ref["media_type"] = "audio/wav"
    if sample.codes is not None:
        ref["vq_codes"] = np.asarray(sample.codes).astype(int).tolist()
    return ref


def voice_fields(defaults: dict[str, Any], options: SpeechOptions | None) -> dict[str, Any]:
    """The voice/sampling fields of a request: the engine's configured `defaults` (voice and
    sampling) overridden by the stream's `options`; None values are left out."""
    fields = {k: v for k, v in defaults.items() if v is not None}
    if options is not None and options.references is not None and options.voice is None:
        fields.pop("voice", None)  # a cloned voice replaces the configured named one
    if options is not None:
        for name in options.set_fields():
            value = getattr(options, name)
            if name == "references":
                fields["references"] = [reference_json(s) for s in value]
            else:
                fields[name] = value
    return fields
