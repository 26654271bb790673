"""The speech service's wire contract, shared by `tts-serve` and the `remote` TTS client.

Two ways to speak, both on one server (`agent-runtime tts-serve`):

* `POST /v1/audio/speech` (`SPEECH_PATH`): sglang-omni's OpenAI-style request (`SpeechRequest`);
  `stream: false` returns one WAV (or raw PCM), `stream: true` returns server-sent events
  `data: {"object": "audio.speech.chunk", "audio": {"data": <base64 WAV>, ...}, "finish_reason": null}`,
  a last event with `"finish_reason": "stop"`, then `data: [DONE]`. An existing sglang-omni
  deployment answers the same request, so the `remote` client speaks to either.
* `GET /v1/audio/stream` (`STREAM_PATH`), a WebSocket for live replies, one stream at a time per
  connection (a connection may carry many streams one after another):

      client -> server                          server -> client
      {"type": "start", voice, sampling, ...}   {"type": "started", "stream_id", "sample_rate", "engine"}
      {"type": "text", "text": <delta>} ...     {"type": "audio", "segment_id", "text", "segment_final",
      {"type": "flush"}                          "sample_rate", "audio": <base64 int16 LE mono>} ...
      {"type": "cancel"} (barge-in)             {"type": "done", "reason": "flushed" | "cancelled", "segments"}
                                                {"type": "error", "code", "message"} (ends the stream)

  Text deltas go in as the LLM writes them; the server cuts them into segments with its engine's
  chunker (`chunking` and `max_segment_chars` of `start` as `Synthesizer.open_stream` takes them)
  and keeps the engine's continuation across segments (S2-Pro's KV context). Every audio message is
  tagged with its segment and the segment's text, so the caller's heard-text accounting works as
  with a local engine. After `done` or `error` the connection is ready for the next `start`.

* `GET /v1/audio/speech/stream` (`SESSION_PATH`): sglang-omni's streaming speech WebSocket, so its
  clients can use this server (`sglang_session.py`): `session.config` -> `session.configured`,
  `input.text` deltas, `input.done`; per sentence `audio.start`, binary audio frames, `audio.done`;
  then `session.done` and the server closes. No cancel message: a client barges in by closing.

`GET /v1/info` (`INFO_PATH`) names the engine, its sample rate and the options it supports;
`/healthz`, `/readyz` (with `streams` and `max_streams`, for load balancing) and `/metrics` as on
the call server. Auth, when on, is `Authorization: Bearer <token>` on every route but the health ones.
"""

from __future__ import annotations

import base64
import io
import wave
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

SPEECH_PATH = "/v1/audio/speech"
STREAM_PATH = "/v1/audio/stream"
SESSION_PATH = "/v1/audio/speech/stream"  # sglang-omni's streaming speech WebSocket (sglang_session.py)
INFO_PATH = "/v1/info"
SSE_CHUNK_OBJECT = "audio.speech.chunk"
SSE_DONE = "[DONE]"

# WebSocket close codes the service uses.
CLOSE_GOING_AWAY = 1001  # server draining (SIGTERM): reconnect elsewhere
CLOSE_POLICY = 1008  # auth failed / protocol abuse
CLOSE_TOO_BIG = 1009  # a message over tts_server.max_body_bytes
CLOSE_TRY_AGAIN = 1013  # too many connections
# A refused WebSocket upgrade (503) names why in this header: "connections" (the server is at
# tts_server.max_connections but healthy: try again or elsewhere, it is not marked down),
# "shutting_down" or "loading" (this server cannot serve: skip it for the client's backoff).
REFUSAL_HEADER = "X-Refusal-Reason"

ErrorCode = Literal[
    "bad_request",  # malformed message or field
    "unsupported",  # a field the engine cannot honour (`UnsupportedSpeechOption`)
    "busy",  # tts_server.max_streams streams are running: try another server
    "too_long",  # more text than tts_server.max_stream_chars
    "timeout",  # no message for tts_server.idle_timeout_s
    "engine_error",  # the engine failed mid-stream; audio sent so far stands
    "shutting_down",  # the server drains: no new streams
]


class Reference(BaseModel):
    """A voice to clone (sglang-omni's `SpeechReference`): one of `audio_path` (a file under the
    server's `tts_server.reference_dir`), `audio`/`data`/`ref_audio` (base64 audio, WAV) or
    `vq_codes` (codebooks x frames), with `text`, the words spoken in it."""

    model_config = ConfigDict(extra="forbid")

    audio_path: str | None = None
    ref_audio: str | None = None
    audio: str | None = None
    data: str | None = None
    media_type: str | None = None
    text: str | None = None
    vq_codes: list[list[int]] | list[int] | None = None


class VoiceFields(BaseModel):
    """Voice and sampling fields shared by both endpoints (None = the server's configured value)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    voice: str | None = Field(None, validation_alias=AliasChoices("voice", "speaker"))
    references: list[Reference] | None = None
    ref_audio: str | None = None
    ref_text: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    max_new_tokens: int | None = None
    speed: float | None = None


class SglangExtensions(VoiceFields):
    """sglang-omni's speech extensions, in its requests and sessions alike (this service refuses
    them when set, except `language` English/Auto: see options.check_speech_request)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    task_type: str | None = None
    language: str | None = None
    instructions: str | None = None
    x_vector_only_mode: bool | None = None
    token_count: int | None = None
    duration_tokens: int | None = None
    initial_codec_chunk_frames: int | None = None
    stage_params: dict[str, dict[str, Any]] | None = None


class SpeechRequest(SglangExtensions):
    """`POST /v1/audio/speech`, as sglang-omni's `CreateSpeechRequest` (fields it has that this
    service cannot honour are accepted by name and answered with a 400 when set; see the server)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str | None = None
    input: str
    response_format: str = "wav"
    stream: bool = False
    stream_format: str | None = None


class SessionConfig(SglangExtensions):
    """sglang-omni's `SpeechStreamSessionConfig`: the `session` of the first message on
    `SESSION_PATH` (`{"type": "session.config", "session": {...}}`). The same voice and sampling
    fields as a speech request, plus how audio comes back (`stream_audio`: raw PCM binary frames as
    they are made, else one binary frame per sentence in `response_format`) and where text is cut
    (`split_granularity`: "sentence" or "clause")."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str | None = None
    response_format: str = "pcm"
    stream_audio: bool = False
    split_granularity: str = "sentence"


# -- the WebSocket stream: client -> server ---------------------------------------------------
class StartMessage(VoiceFields):
    type: Literal["start"]
    chunking: dict[str, Any] | None = None
    """`ChunkerConfig` fields (None: the engine's own segmentation)."""
    max_segment_chars: int | None = Field(None, ge=1)


class TextMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class FlushMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["flush"]


class CancelMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["cancel"]


ClientMessage = Annotated[StartMessage | TextMessage | FlushMessage | CancelMessage, Field(discriminator="type")]


# -- the WebSocket stream: server -> client ---------------------------------------------------
class StartedMessage(BaseModel):
    type: Literal["started"] = "started"
    stream_id: str
    sample_rate: int
    engine: str


class AudioMessage(BaseModel):
    type: Literal["audio"] = "audio"
    segment_id: int
    text: str
    segment_final: bool
    sample_rate: int
    audio: str
    """base64 of int16 little-endian mono samples (may be empty on a segment's final message)."""


class DoneMessage(BaseModel):
    type: Literal["done"] = "done"
    reason: Literal["flushed", "cancelled"]
    segments: int


class ErrorMessage(BaseModel):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str


ServerMessage = Annotated[
    StartedMessage | AudioMessage | DoneMessage | ErrorMessage, Field(discriminator="type")
]


def encode_pcm(samples: np.ndarray) -> str:
    """int16 mono samples -> base64 text of their little-endian bytes."""
    return base64.b64encode(np.ascontiguousarray(samples, dtype="<i2").tobytes()).decode("ascii")


def decode_pcm(data: str) -> np.ndarray:
    """The inverse of `encode_pcm`; raises ValueError on text that is not base64 of whole samples."""
    raw = base64.b64decode(data, validate=True)
    if len(raw) % 2:
        raise ValueError("PCM data has an odd number of bytes")
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


def pcm_bytes(pcm: np.ndarray) -> bytes:
    return np.ascontiguousarray(pcm, dtype="<i2").tobytes()


def wav_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
    """int16 mono samples as a WAV file."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm_bytes(pcm))
    return buf.getvalue()
