"""Validated configuration (configs/*.yaml). Every key is documented in docs/configuration.md.

Unknown keys are errors (a typo must not silently fall back to a default). Secrets never live in
these files: backends name the environment variable that holds them (`api_key_env`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent_runtime.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VADConfig(_Strict):
    aggressiveness: int = Field(2, ge=0, le=3, description="webrtcvad mode, 0 (lenient) .. 3 (strict)")
    frame_ms: int = Field(20, description="VAD frame: 10, 20 or 30 ms")
    min_speech_ms: int = Field(120, ge=10, description="voiced audio needed to declare speech")
    stop_silence_ms: int = Field(100, ge=20, description="silence after speech that counts as a pause")
    pre_roll_ms: int = Field(300, ge=0, description="audio kept before speech starts")
    end_of_speech: Literal["energy", "webrtcvad"] = Field(
        "energy",
        description="how the end of speech is dated: 'energy' (webrtcvad plus an energy gate: within a few "
        "ms of the last audible sound) or 'webrtcvad' (its last voiced frame, 100-150 ms later)",
    )
    tail_drop_db: float = Field(
        40.0, gt=0, description="energy gate: frames this far below the loudest frame of speech are silence"
    )
    tail_noise_margin_db: float = Field(
        3.0, ge=0, description="energy gate: frames less than this above the noise floor are silence"
    )
    tail_min_snr_db: float = Field(
        25.0, ge=0, description="energy gate off while speech is less than this above the noise floor"
    )
    resume_window_ms: int = Field(
        500, ge=0, description="after a pause starts, one speech frame within this long resumes speech"
    )

    @model_validator(mode="after")
    def _frame(self) -> VADConfig:
        if self.frame_ms not in (10, 20, 30):
            raise ValueError("vad.frame_ms must be 10, 20 or 30")
        return self


class TurnConfig(_Strict):
    end_of_turn_silence_ms: int = Field(300, ge=50, description="silence that ends a complete-sounding turn")
    incomplete_turn_silence_ms: int = Field(
        1200, ge=50, description="silence that ends a turn whose words sound unfinished ('I'd like to...')"
    )
    speculative: bool = Field(
        True,
        description="start ASR/LLM/TTS at the first pause, before the turn ends; false = sequential "
        "(the turn ends on silence alone, then ASR, LLM and TTS run one after the other)",
    )
    barge_in: bool = Field(True, description="let the caller interrupt the agent")
    barge_in_min_speech_ms: int = Field(
        500, ge=0, description="caller speech that interrupts the agent (shorter speech resumes it)"
    )
    barge_in_pause_ms: int = Field(
        60, ge=0,
        description="voiced caller audio (within the VAD's 200 ms start window) that pauses an audible agent at "
        "once, before the VAD declares speech (vad.min_speech_ms); playout resumes if no speech follows within "
        "the window. 0 = pause only when speech is declared",
    )
    backchannels: list[str] = Field(
        default_factory=lambda: [
            "mhm", "mm", "mmhmm", "hmm", "uh huh", "uhhuh", "yeah", "yes", "yep", "ok", "okay", "right",
            "sure", "i see", "got it", "uh", "um", "ah", "oh",
        ],
        description="short replies that never interrupt the agent",
    )
    max_history_messages: int = Field(20, ge=2, description="messages kept in the LLM context")


class ASRConfig(_Strict):
    model: str = Field("tiny.en", description="local dir, packaged model name, or hub name")
    compute_type: str = Field("int8", description="CTranslate2 compute type")
    cpu_threads: int = Field(
        1, ge=0,
        description="threads of each ASR worker (0 = the usable cores, at most 4, shared out between the workers); "
        "1 by default: tiny.en is no faster on 2 and the second core stays with the LLM and TTS",
    )
    language: str | None = Field("en", description="language code, or null to detect")
    beam_size: int = Field(1, ge=1, description="1 = greedy decoding (lowest latency)")
    workers: int = Field(
        1, ge=1, le=64,
        description="turns transcribed at once across all calls of the process (one model, its weights shared "
        "by the workers); the others queue (agent_asr_wait_seconds). Keep workers x cpu_threads <= CPU cores",
    )


class LLMConfig(_Strict):
    backend: str = Field("local", description="entry-point name: local, openai, or a plugin's name")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to the backend's from_options")
    system_prompt: str = Field(
        "You are a helpful voice assistant. Answer briefly.", description="the agent's persona and instructions"
    )
    max_tokens: int = Field(80, ge=1, description="longest reply in tokens")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="sampling temperature (0 = greedy)")
    first_token_timeout_s: float = Field(8.0, gt=0, description="no first token by then -> fallback line")
    inter_token_timeout_s: float = Field(
        4.0, gt=0,
        description="after the first token, a gap this long between two deltas is a stall: the caller hears "
        "what was said, then `stall_line`",
    )
    stall_line: str = Field(
        "Sorry, I lost my train of thought there.",
        description="spoken after the words already said when the LLM stalls mid-reply",
    )
    max_reply_chars: int = Field(
        1500, ge=20,
        description="longest reply text spoken per turn; the LLM stream is closed there, cut at a word boundary",
    )
    fallback_line: str = Field(
        "Sorry, I'm having trouble answering right now. Could you say that again?",
        description="spoken when the LLM fails, times out or returns nothing",
    )


class TTSConfig(_Strict):
    engine: str = Field("piper", description="entry-point name of a TTS engine: piper or a plugin's")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to the engine's from_options")
    first_segment: Literal["clause", "sentence"] = Field(
        "clause", description="speak the first clause as soon as it is written, or wait for a sentence"
    )
    max_segment_chars: int = Field(
        250, ge=20,
        description="longest text segment handed to the engine; longer text without punctuation is cut at "
        "the last word boundary (never inside an inline tag), so memory per call stays bounded",
    )


class CallerTurn(_Strict):
    text: str | None = Field(None, description="text the simulated caller says (synthesised)")
    wav: str | None = Field(None, description="or a WAV file the caller plays")
    pause_ms: int | None = Field(
        None, description="split the utterance at '|' and pause this long between the parts"
    )
    interrupt_after_ms: int | None = Field(
        None, description="start talking this long after agent audio begins (barge-in)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> CallerTurn:
        if (self.text is None) == (self.wav is None):
            raise ValueError("a caller turn needs exactly one of 'text' or 'wav'")
        return self


class DemoConfig(_Strict):
    caller_turns: list[CallerTurn] = Field(
        default_factory=list, description="the simulated caller's turns: text (or wav), pause_ms, interrupt_after_ms"
    )
    caller_voice_length_scale: float = Field(1.0, gt=0, description="piper speed for the caller voice")
    wait_after_reply_ms: int = Field(700, ge=0, description="caller waits this long after the agent stops")
    max_reply_wait_s: float = Field(30.0, gt=0, description="give up waiting for a reply after this")


class IceServerConfig(_Strict):
    urls: list[str] = Field(description="stun:/turn:/turns: URLs of one ICE server")
    username_env: str | None = Field(None, description="environment variable holding the TURN username")
    credential_env: str | None = Field(None, description="environment variable holding the TURN credential")


class _WithAuthSwitch(_Strict):
    @model_validator(mode="before")
    @classmethod
    def _yaml_booleans(cls, data: Any) -> Any:
        """YAML 1.1 reads an unquoted `auth: on` / `off` as a boolean: take it as meant."""
        if isinstance(data, dict) and isinstance(data.get("auth"), bool):
            data = {**data, "auth": "on" if data["auth"] else "off"}
        return data


class ServerConfig(_WithAuthSwitch):
    host: str = Field("127.0.0.1", description="address `agent-runtime serve` binds to")
    port: int = Field(8080, ge=0, le=65535, description="TCP port of the HTTP server (0 = any free port)")
    auth: Literal["auto", "on", "off"] = Field(
        "auto", description="bearer-token auth on /offer and the phone WebSocket; auto = on unless bound to loopback"
    )
    auth_token_env: str = Field("AGENT_RUNTIME_TOKEN", description="environment variable holding the bearer token")
    cors_origins: list[str] = Field(
        default_factory=list, description="other origins allowed to call the API from a browser (exact match)"
    )
    max_body_bytes: int = Field(65_536, ge=1024, description="largest accepted request body / WebSocket message")
    max_sessions: int = Field(8, ge=1, description="concurrent calls per process; more get 503 busy")
    ice_servers: list[IceServerConfig] = Field(
        default_factory=list, description="STUN/TURN servers for WebRTC (empty = host candidates only, offline)"
    )
    loopback_only: bool = Field(
        False, description="gather only 127.0.0.1 host candidates (offline tests, same-machine calls)"
    )
    jitter_buffer_packets: int = Field(
        0, ge=0, le=8,
        description="inbound audio packets held before decoding (0 = pass-through; aiortc's default holds 4 = 80 ms)",
    )
    media_timeout_s: float = Field(
        10.0, gt=0,
        description="hang up a call (WebRTC or Twilio) when no caller audio arrived for this long, "
        "including a peer that connected and never sent any",
    )
    setup_timeout_s: float = Field(
        10.0, gt=0,
        description="a call slot whose call has not started by then is freed: a WebRTC answer whose peer "
        "never connected, a phone WebSocket that sent no valid 'start'",
    )
    max_pending_per_client: int = Field(
        4, ge=1,
        description="offers and phone WebSockets one client address may have that have not started a call yet",
    )
    max_calls_per_client: int = Field(
        0, ge=0, description="calls in progress one client address may hold (0 = only max_sessions limits)"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="reverse proxies (addresses or CIDR networks) whose X-Forwarded-For names the client: "
        "per-client limits then count the caller, not the proxy",
    )
    keepalive_s: float = Field(
        15.0, ge=0, description="WebSocket ping interval on the phone socket; a peer that misses a pong is hung up (0 = off)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection must send its complete request headers within this (slowloris)"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values accepted besides the bind address (a loopback bind accepts only "
        "localhost, 127.0.0.1 and [::1] otherwise: DNS rebinding)",
    )
    max_json_depth: int = Field(32, ge=2, description="deepest nesting accepted in a JSON request or message")
    shutdown_grace_s: float = Field(10.0, ge=0, description="on shutdown, calls in progress get this long to finish")


class TTSServerConfig(_WithAuthSwitch):
    """`agent-runtime tts-serve`: the `tts:` engine as a speech service for other machines."""

    host: str = Field("127.0.0.1", description="address `agent-runtime tts-serve` binds to")
    port: int = Field(8081, ge=0, le=65535, description="TCP port of the speech service (0 = any free port)")
    auth: Literal["auto", "on", "off"] = Field(
        "auto", description="bearer-token auth on the speech routes; auto = on unless bound to loopback"
    )
    auth_token_env: str = Field(
        "AGENT_RUNTIME_TTS_TOKEN", description="environment variable holding the service's bearer token"
    )
    max_streams: int = Field(
        32, ge=1, description="speech streams synthesised at once (HTTP requests and WebSocket streams); more get busy"
    )
    max_connections: int = Field(
        256, ge=1, description="open WebSocket connections (idle ones included); more are refused with 503"
    )
    max_body_bytes: int = Field(65_536, ge=1024, description="largest accepted request body / WebSocket message")
    max_input_chars: int = Field(
        4_000, ge=1, description="longest `input` of one /v1/audio/speech request, in characters"
    )
    max_stream_chars: int = Field(
        20_000, ge=1, description="most text one WebSocket stream may push before its flush"
    )
    idle_timeout_s: float = Field(
        30.0, gt=0,
        description="a WebSocket with no stream, or a stream that gets no text, flush or cancel, for this long is closed",
    )
    reference_dir: str | None = Field(
        None,
        description="directory that request `references[].audio_path` / `ref_audio` paths may name "
        "(null = file paths refused; inline base64 audio and vq_codes always accepted)",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values accepted besides the bind address (a loopback bind accepts only "
        "localhost, 127.0.0.1 and [::1] otherwise: DNS rebinding)",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection must send its complete request headers within this (slowloris)"
    )
    max_json_depth: int = Field(32, ge=2, description="deepest nesting accepted in a JSON request or message")
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="on SIGTERM: /readyz turns 503 at once, streams in progress get this long to finish"
    )


class AppConfig(_Strict):
    vad: VADConfig = VADConfig()
    turn: TurnConfig = TurnConfig()
    asr: ASRConfig = ASRConfig()
    llm: LLMConfig = LLMConfig()
    tts: TTSConfig = TTSConfig()
    demo: DemoConfig = DemoConfig()
    server: ServerConfig = ServerConfig()
    tts_server: TTSServerConfig = TTSServerConfig()


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> AppConfig:
    """Load and validate a YAML config; with no path, the built-in defaults (plus `overrides`)."""
    if path is None:
        try:
            return AppConfig.model_validate(overrides or {})
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (a YAML config is UTF-8 text)") from None
    except OSError as exc:  # a directory, no permission
        raise ConfigError(f"{p}: cannot read the config file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    if overrides:
        raw = _merge(raw, overrides)
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{p}: {_describe(exc)}") from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def describe_config() -> list[tuple[str, str, str]]:
    """(dotted key, default as YAML, description) for every config key, in declaration order."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, key + ".")
                continue
            default = field.get_default(call_default_factory=True)
            shown = yaml.safe_dump(default, default_flow_style=True, width=10_000).strip()
            shown = shown.removesuffix("\n...").removesuffix("...").strip()
            rows.append((key, shown, field.description or ""))

    walk(AppConfig, "")
    return rows
