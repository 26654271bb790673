"""`tts.engine: remote`: the call runtime speaks through speech servers instead of an in-process engine.

    tts:
      engine: remote
      options:
        urls: [http://tts-a:8081, http://tts-b:8081]
        protocol: agent-runtime        # or sglang-omni

`agent-runtime` (default) talks to `agent-runtime tts-serve` over its WebSocket stream protocol
(`agent_runtime.tts_service.protocol`): text deltas go to the server as the LLM writes them, the
server's engine cuts and speaks them with its own continuation, audio comes back tagged with its
segment. `sglang-omni` talks to an sglang-omni deployment (or tts-serve's compatible route) with one
`POST /v1/audio/speech` per segment, cut here by `engine_chunking`'s chunker (see sglang.py).

Options (unknown ones raise ConfigError): `urls` (required), `protocol`, `token_env` (environment
variable with the bearer token; unset or empty = no Authorization header), `connect_timeout_s`,
`first_audio_timeout_s` / `read_timeout_s` (no message for this long while audio is owed, and the
server does not answer a `/readyz` probe = the server is dead), `stall_timeout_s` (a server that
answers but has sent nothing on a stream for this long fails that stream only), `retries` (other servers tried when a stream fails before any audio), `health_interval_s`
(`/readyz` polls), `unhealthy_backoff_s`, `sample_rate` (else `/v1/info` of the first reachable
server, at construction), `voice`, `temperature`, `top_p`, `top_k`, `seed` (sent on every stream
unless the stream's `SpeechOptions` override them) and `engine_chunking` (sglang-omni only:
`s2pro` or `generic`).
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from agent_runtime.errors import ConfigError
from agent_runtime.tts.base import SpeechOptions, SynthesisStream, UtteranceSynth
from agent_runtime.tts.chunker import ChunkerConfig, TextChunker
from agent_runtime.tts.remote.pool import ServerPool, fetch_info
from agent_runtime.tts.remote.sglang import SglangUtterance
from agent_runtime.tts.remote.stream_client import RemoteStream, chunking_json
from agent_runtime.tts.remote.wire import voice_fields
from agent_runtime.tts.s2pro.chunking import DEFAULT_CHUNKING, S2ProTextChunker
from agent_runtime.tts.stream import ChunkedSynthesizer

PROTOCOLS = ("agent-runtime", "sglang-omni")
ENGINE_CHUNKINGS = ("s2pro", "generic")
ALL_SPEECH_OPTIONS = frozenset(SpeechOptions.__slots__)  # type: ignore[attr-defined]


class RemoteSynthesizer(ChunkedSynthesizer):
    """A `Synthesizer` whose engine runs on one or more speech servers."""

    name = "remote"

    def __init__(
        self,
        urls: list[str] | str,
        *,
        protocol: str = "agent-runtime",
        token_env: str = "AGENT_RUNTIME_TTS_TOKEN",
        connect_timeout_s: float = 2.0,
        first_audio_timeout_s: float = 15.0,
        read_timeout_s: float = 10.0,
        stall_timeout_s: float = 60.0,
        retries: int = 2,
        health_interval_s: float = 2.0,
        unhealthy_backoff_s: float = 5.0,
        sample_rate: int | None = None,
        voice: str | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        engine_chunking: str | None = None,
    ) -> None:
        """Validate the options and learn the servers' sample rate (blocking: one `GET /v1/info`
        per server until one answers, unless `sample_rate` is given). Raises ConfigError."""
        self.urls = _check_urls(urls)
        if protocol not in PROTOCOLS:
            raise ConfigError(f"remote: protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        self.protocol = protocol
        for key, value in (
            ("connect_timeout_s", connect_timeout_s), ("first_audio_timeout_s", first_audio_timeout_s),
            ("read_timeout_s", read_timeout_s), ("health_interval_s", health_interval_s),
            ("stall_timeout_s", stall_timeout_s),
        ):  # fmt: skip
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"remote: {key} must be a positive number, got {value!r}")
        if (
            not isinstance(unhealthy_backoff_s, int | float)
            or isinstance(unhealthy_backoff_s, bool)
            or unhealthy_backoff_s < 0
        ):
            raise ConfigError(f"remote: unhealthy_backoff_s must be >= 0, got {unhealthy_backoff_s!r}")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ConfigError(f"remote: retries must be an integer >= 0, got {retries!r}")
        if engine_chunking is not None and protocol != "sglang-omni":
            raise ConfigError(
                "remote: engine_chunking applies to protocol sglang-omni only (the server cuts text otherwise)"
            )
        engine_chunking = engine_chunking or "s2pro"
        if engine_chunking not in ENGINE_CHUNKINGS:
            raise ConfigError(
                f"remote: engine_chunking must be one of {', '.join(ENGINE_CHUNKINGS)}, got {engine_chunking!r}"
            )
        for key, value, kinds in (
            ("voice", voice, (str,)), ("temperature", temperature, (int, float)), ("top_p", top_p, (int, float)),
            ("top_k", top_k, (int,)), ("seed", seed, (int,)),
        ):  # fmt: skip
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise ConfigError(
                    f"remote: {key} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}"
                )
        if not isinstance(token_env, str) or not token_env:
            raise ConfigError("remote: token_env must name an environment variable")
        self.connect_timeout_s = float(connect_timeout_s)
        self.first_audio_timeout_s = float(first_audio_timeout_s)
        self.read_timeout_s = float(read_timeout_s)
        self.stall_timeout_s = float(stall_timeout_s)
        self.retries = retries
        self.defaults: dict[str, Any] = {
            "voice": voice, "temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed,
        }  # fmt: skip
        token = os.environ.get(token_env) or None
        self.pool = ServerPool(
            self.urls,
            token=token,
            connect_timeout_s=self.connect_timeout_s,
            health_interval_s=float(health_interval_s),
            unhealthy_backoff_s=float(unhealthy_backoff_s),
        )
        self.engine: str | None = None
        self.supported_options: frozenset[str] | None = None
        info = (
            fetch_info(self.urls, token, self.connect_timeout_s)
            if sample_rate is None or protocol == "agent-runtime"
            else None
        )
        if info is not None:
            _, body = info
            self.engine = str(body["engine"]) if body.get("engine") else None
            supported = body.get("options", body.get("supported_options"))
            if isinstance(supported, list | tuple) and all(isinstance(x, str) for x in supported):
                self.supported_options = frozenset(supported)
        if sample_rate is None:
            rate = info[1].get("sample_rate") if info is not None else None
            if not isinstance(rate, int) or rate <= 0:
                where = "no server answered" if info is None else f"{info[0]} gave no sample_rate"
                raise ConfigError(
                    f"remote: cannot learn the sample rate ({where} on /v1/info: {', '.join(self.urls)}); "
                    "set tts.options.sample_rate or start a server"
                )
            sample_rate = rate
        if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0:
            raise ConfigError(f"remote: sample_rate must be a positive integer, got {sample_rate!r}")
        self.sample_rate = sample_rate
        # The chunker: for sglang-omni the one that cuts segments; for agent-runtime a client-side
        # copy of the server engine's, only to know when audio is owed (and count segments).
        use_s2pro = engine_chunking == "s2pro" if protocol == "sglang-omni" else self.engine == "s2pro"
        self.engine_chunking = engine_chunking
        self.chunker_class: type[TextChunker] = S2ProTextChunker if use_s2pro else TextChunker
        self.chunker_config: ChunkerConfig = DEFAULT_CHUNKING if use_s2pro else ChunkerConfig()

    @classmethod
    def from_options(cls, **options: Any) -> RemoteSynthesizer:
        """Build from `tts.options`. Unknown keys raise ConfigError listing the known ones. A
        `backend: remote` key (from `tts.engine: s2pro` routed here) is accepted and dropped."""
        if options.get("backend") == "remote":
            options = {k: v for k, v in options.items() if k != "backend"}
        known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"unknown remote option(s) {', '.join(unknown)} (known: {', '.join(known)})")
        if "urls" not in options:
            raise ConfigError("remote: tts.options.urls is required (the speech servers' base URLs)")
        return cls(**options)

    # -- streams ------------------------------------------------------------------------------
    def open_stream(
        self,
        chunking: ChunkerConfig | None = None,
        *,
        max_segment_chars: int | None = None,
        options: SpeechOptions | None = None,
    ) -> SynthesisStream:
        if options is not None:
            options.refuse_unsupported(self.supported_options or ALL_SPEECH_OPTIONS, self.name)
        if self.protocol == "sglang-omni":
            if options is None:
                options = SpeechOptions()
            return super().open_stream(chunking, max_segment_chars=max_segment_chars, options=options)
        self.pool.bind()
        start = voice_fields(self.defaults, options)
        if chunking is not None:
            start["chunking"] = chunking_json(chunking)
        if max_segment_chars is not None:
            start["max_segment_chars"] = max_segment_chars
        return RemoteStream(self, start, self.chunker(chunking, max_segment_chars))

    def open_utterance(self) -> UtteranceSynth:
        return SglangUtterance(self, voice_fields(self.defaults, None))

    def open_utterance_for(self, options: SpeechOptions) -> UtteranceSynth:
        return SglangUtterance(self, voice_fields(self.defaults, options))

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        self.pool.close()

    async def aclose(self) -> None:
        """Close connections and the health task (on the loop that used them)."""
        await self.pool.aclose()

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "protocol": self.protocol,
            "sample_rate": self.sample_rate,
            "server_engine": self.engine,
            "servers": self.pool.describe(),
        }


def _check_urls(urls: Any) -> list[str]:
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list | tuple) or not urls:
        raise ConfigError("remote: urls must be a non-empty list of base URLs (http://host:port)")
    out: list[str] = []
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"remote: each of urls must be an http:// or https:// base URL, got {url!r}")
        out.append(url.rstrip("/"))
    if len(set(out)) != len(out):
        raise ConfigError("remote: urls has duplicates")
    return out
