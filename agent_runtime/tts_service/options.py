"""Request fields -> `SpeechOptions`, and the fields this service cannot honour.

A `SpeechRequestError` names the offending field (`param`, as sglang-omni's OpenAI-style errors do)
so both endpoints can answer it: a 400 JSON body on HTTP, an `error bad_request` on the WebSocket.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import numpy as np

from agent_runtime.tts.base import SpeechOptions, VoiceSample
from agent_runtime.tts_service.protocol import Reference, SpeechRequest, VoiceFields

RESPONSE_FORMATS = ("wav", "pcm")
STREAM_FORMATS = (None, "sse", "audio")
LANGUAGES = (None, "auto", "english")
SPEED_MIN, SPEED_MAX = 0.25, 4.0
_NOT_HONOURED = (
    "task_type", "instructions", "x_vector_only_mode", "token_count", "duration_tokens", "stage_params",
    "initial_codec_chunk_frames",
)


class SpeechRequestError(ValueError):
    """A request field the service refuses: `param` names it, `status` is the HTTP status."""

    def __init__(self, message: str, param: str | None = None, *, status: int = 400, code: str = "bad_request") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code


def openai_error(message: str, *, param: str | None = None, status: int = 400) -> dict[str, Any]:
    """sglang-omni's (OpenAI-style) error body."""
    error_type = "BadRequestError" if status == 400 else ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": status}}


def check_speech_request(req: SpeechRequest, max_input_chars: int) -> None:
    """Refuse what `POST /v1/audio/speech` cannot do (before any engine work)."""
    if not req.input.strip():
        raise SpeechRequestError("input must not be empty", "input")
    if len(req.input) > max_input_chars:
        raise SpeechRequestError(
            f"input is {len(req.input)} characters; this server accepts at most {max_input_chars} "
            "(tts_server.max_input_chars)", "input",
        )
    if req.response_format.strip().lower() not in RESPONSE_FORMATS:
        raise SpeechRequestError(
            f"response_format {req.response_format!r} is not supported: use one of {', '.join(RESPONSE_FORMATS)}",
            "response_format",
        )
    if req.stream_format not in STREAM_FORMATS:
        raise SpeechRequestError(
            f"stream_format {req.stream_format!r} is not supported: use 'sse' or 'audio'", "stream_format"
        )
    if req.stream_format == "audio" and req.response_format.strip().lower() != "pcm":
        raise SpeechRequestError("stream_format 'audio' needs response_format 'pcm'", "response_format")
    if req.language is not None and req.language.strip().lower() not in LANGUAGES:
        raise SpeechRequestError(
            f"Unsupported language: {req.language!r} (this server speaks English: use null, 'Auto' or 'English')",
            "language",
        )
    for name in _NOT_HONOURED:
        if getattr(req, name) is not None:
            raise SpeechRequestError(f"{name} is not supported by this server", name)


def _decode_wav(data: str, param: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if data.startswith("data:"):  # a data URL: data:audio/wav;base64,....
        header, _, data = data.partition(",")
        if ";base64" not in header.lower() or not data:
            raise SpeechRequestError(f"{param} data URL must include base64 media data", param)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise SpeechRequestError(f"{param} is not base64 audio", param) from None
    try:
        samples, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except Exception as exc:
        raise SpeechRequestError(f"could not decode the uploaded audio in {param} (a WAV file): {exc}", param) from None
    if samples.shape[0] == 0:
        raise SpeechRequestError(f"{param} holds no audio samples", param)
    return samples.mean(axis=1).astype(np.float32), int(rate)


def _read_path(path: str, param: str, reference_dir: str | None) -> tuple[np.ndarray, int]:
    if reference_dir is None:
        raise SpeechRequestError(
            f"{param}: file paths are refused by this server (tts_server.reference_dir is not set); "
            "send the audio inline as base64", param,
        )
    base = Path(reference_dir).resolve()
    target = (base / path.removeprefix("file://")).resolve()
    if not target.is_relative_to(base) or not target.is_file():
        raise SpeechRequestError(f"{param}: {path!r} is not a file under the server's reference directory", param)
    from agent_runtime.audio.wav import read_audio
    from agent_runtime.errors import AudioFormatError

    try:
        return read_audio(target)
    except AudioFormatError:
        raise SpeechRequestError(f"could not decode the uploaded audio in {param}: {path!r}", param) from None


def _looks_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(value) >= 16


def _audio(value: str, param: str, reference_dir: str | None) -> tuple[np.ndarray, int]:
    """Reference audio given as a data URL, base64 WAV, `file://` URL or a path under `reference_dir`."""
    if value.startswith("data:") or _looks_base64(value):
        return _decode_wav(value, param)
    if value.startswith(("http://", "https://")):
        raise SpeechRequestError(f"{param}: this server does not fetch URLs; send the audio inline as base64", param)
    return _read_path(value, param, reference_dir)


def _codes(value: list[list[int]] | list[int], param: str) -> np.ndarray:
    codes = np.asarray(value, dtype=np.int64)
    if codes.ndim == 1:  # a flat list: one codebook
        codes = codes[None, :]
    if codes.ndim != 2 or codes.shape[1] == 0:
        raise SpeechRequestError(f"{param} must be a non-empty list of codebooks x frames", param)
    if (codes < 0).any():
        raise SpeechRequestError(f"{param} holds negative codes", param)
    return codes


def _reference(ref: Reference, i: int, reference_dir: str | None) -> VoiceSample:
    where = f"references[{i}]"
    audio: np.ndarray | None = None
    rate: int | None = None
    inline = [(n, getattr(ref, n)) for n in ("audio", "data", "ref_audio") if getattr(ref, n) is not None]
    if len(inline) + (ref.audio_path is not None) > 1:
        raise SpeechRequestError(f"{where}: give one of audio_path, audio, data or ref_audio", f"{where}.audio")
    if inline:
        name, value = inline[0]
        audio, rate = _audio(value, f"{where}.{name}", reference_dir)
    elif ref.audio_path is not None:
        audio, rate = _read_path(ref.audio_path, f"{where}.audio_path", reference_dir)
    codes = _codes(ref.vq_codes, f"{where}.vq_codes") if ref.vq_codes is not None else None
    if audio is None and codes is None:
        raise SpeechRequestError(f"{where} needs audio (audio_path, audio, data, ref_audio) or vq_codes", where)
    return VoiceSample(text=ref.text or "", audio=audio, sample_rate=rate, codes=codes)


def speech_options(fields: VoiceFields, reference_dir: str | None) -> SpeechOptions:
    """The `SpeechOptions` a request's voice and sampling fields ask for (references decoded)."""
    refs: list[VoiceSample] = []
    for i, ref in enumerate(fields.references or ()):
        refs.append(_reference(ref, i, reference_dir))
    if fields.ref_audio is not None:
        audio, rate = _audio(fields.ref_audio, "ref_audio", reference_dir)
        refs.append(VoiceSample(text=fields.ref_text or "", audio=audio, sample_rate=rate))
    elif fields.ref_text is not None:
        raise SpeechRequestError("ref_text needs ref_audio", "ref_text")
    _check_ranges(fields)
    return SpeechOptions(
        voice=None if fields.voice in (None, "default") else fields.voice,  # sglang-omni's default name
        references=tuple(refs) if refs else None,
        temperature=fields.temperature,
        top_p=fields.top_p,
        top_k=fields.top_k,
        repetition_penalty=fields.repetition_penalty,
        seed=fields.seed,
        max_new_tokens=fields.max_new_tokens,
        speed=None if fields.speed == 1.0 else fields.speed,  # normal speed: nothing to honour
    )


def _check_ranges(f: VoiceFields) -> None:
    def bad(param: str, rule: str) -> SpeechRequestError:
        return SpeechRequestError(f"{param} must be {rule}", param)

    if f.max_new_tokens is not None and f.max_new_tokens <= 0:
        raise bad("max_new_tokens", "greater than 0")
    if f.seed is not None and f.seed < 0:
        raise bad("seed", "greater than or equal to 0")
    if f.speed is not None and not SPEED_MIN <= f.speed <= SPEED_MAX:
        raise bad("speed", f"between {SPEED_MIN} and {SPEED_MAX}")
    if f.temperature is not None and f.temperature < 0:
        raise bad("temperature", "greater than or equal to 0")
    if f.top_p is not None and not 0 < f.top_p <= 1:
        raise bad("top_p", "in (0, 1]")
    if f.top_k is not None and f.top_k < 0:
        raise bad("top_k", "greater than or equal to 0")
    if f.repetition_penalty is not None and f.repetition_penalty <= 0:
        raise bad("repetition_penalty", "greater than 0")
    if f.voice is not None and not f.voice.strip():
        raise bad("voice", "a non-empty name")


def describe_validation_error(exc: Any) -> tuple[str, str | None]:
    """A pydantic ValidationError as (one-line message, the first offending field)."""
    errors = exc.errors(include_url=False)
    if not errors:
        return str(exc), None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if not str(p).startswith("function-")]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    return (f"{param}: {msg}" if param else msg), param
