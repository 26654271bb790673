"""TTS load-test scenario and SLO files (strict YAML, one-line errors) and the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from loadtest.scenario import ScenarioError, _one_line, _Strict, read_yaml
from loadtest.slo import LevelVerdict, Verdict, rank

DEFAULT_TEXTS = [
    "Sure, we open at nine tomorrow morning and close at six in the evening.",
    "Our return policy gives you thirty days, as long as you keep the receipt and the original box.",
    "Yes, we deliver on weekends. Saturday deliveries arrive before noon, Sunday ones in the afternoon.",
    "Delivery is free over fifty dollars; below that it costs four ninety-nine, wherever you live.",
]


class TTSScenario(_Strict):
    """Concurrency levels of speech streams, each sending `replies` LLM-paced replies one after another."""

    name: str = "tts"
    description: str = ""
    streams: list[int] = Field([1, 4, 16], min_length=1, description="concurrent streams, one level each")
    replies: int = Field(3, ge=1, le=1000, description="replies per stream at each level (sequential)")
    texts: list[str] = Field(DEFAULT_TEXTS, min_length=1, description="reply texts, used in turn")
    chars_per_s: float = Field(60.0, gt=0, le=100_000, description="LLM output rate of the text deltas")
    delta_chars: int = Field(4, ge=1, le=1000, description="characters per text message")
    first_token_ms: int = Field(200, ge=0, le=60_000, description="delay before the first delta (LLM TTFT)")
    pause_between_ms: int = Field(300, ge=0, le=60_000, description="pause after a reply's done, per stream")
    voice: str | None = Field(None, description="`voice` of the start message (None: the server's)")
    protocol: Literal["agent-runtime", "sglang-omni"] = Field(
        "agent-runtime",
        description="agent-runtime: tts-serve's /v1/audio/stream, one socket per stream; sglang-omni: its "
        "streaming session /v1/audio/speech/stream (sglang-omni or tts-serve), one socket per reply",
    )
    split_granularity: Literal["sentence", "clause"] = Field(
        "sentence", description="sglang-omni protocol: where the server cuts the text (its session config)"
    )
    warmup_streams: int = Field(1, ge=0, le=64, description="replies before the first level, not counted")
    stream_timeout_s: float = Field(60.0, gt=0, le=3600, description="a reply with no done by then is an error")
    max_duration_s: float = Field(900.0, gt=0, le=86_400, description="hard cap on the whole run")


class TTSSLO(_Strict):
    """Per-level objectives; a limit left out is not checked."""

    first_audio_p95_ms: float | None = Field(None, gt=0, description="p95 first text sent -> first audio received")
    first_audio_p99_ms: float | None = Field(None, gt=0)
    rtf_p95: float | None = Field(None, gt=0, description="p95 of (first text -> done) / audio seconds")
    max_underrun_rate: float | None = Field(None, ge=0, le=1, description="player dry time / audio time")
    max_underrun_streams_rate: float | None = Field(
        None, ge=0, le=1, description="fraction of replies with at least one underrun"
    )
    max_errors: int = Field(0, ge=0, description="replies that ended in an error (any code) per level")
    min_samples: int = Field(1, ge=0, description="a level with fewer completed replies fails")
    min_concurrency: int | None = Field(
        None, ge=1, description="the run passes when at least this many streams meet the SLO; left out: every level"
    )


def _load(model: type[_Strict], path: Path) -> Any:
    try:
        return model.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise ScenarioError(_one_line(exc, path)) from None


def load_scenario(path: str | Path | None) -> TTSScenario:
    return TTSScenario() if path is None else _load(TTSScenario, Path(path))


def load_slo(path: str | Path | None) -> TTSSLO:
    return TTSSLO() if path is None else _load(TTSSLO, Path(path))


def check_level(slo: TTSSLO, lv: dict[str, Any]) -> LevelVerdict:
    fails: list[str] = []
    fa, rtf = lv["first_audio_ms"], lv["rtf"]

    def over(name: str, value: float | None, limit: float | None, fmt: str = ".0f", unit: str = " ms") -> None:
        if limit is not None and value is not None and value > limit:
            fails.append(f"{name} {value:{fmt}}{unit} > {limit:{fmt}}{unit}")

    if lv["ok_replies"] < slo.min_samples:
        fails.append(f"only {lv['ok_replies']} completed replies (< {slo.min_samples})")
    over("first audio p95", fa["p95"], slo.first_audio_p95_ms)
    over("first audio p99", fa["p99"], slo.first_audio_p99_ms)
    over("RTF p95", rtf["p95"], slo.rtf_p95, ".2f", "")
    if slo.max_underrun_rate is not None and lv["underrun_rate"] > slo.max_underrun_rate:
        fails.append(f"underrun rate {lv['underrun_rate']:.2%} > {slo.max_underrun_rate:.2%}")
    if slo.max_underrun_streams_rate is not None and lv["underrun_replies_rate"] > slo.max_underrun_streams_rate:
        fails.append(f"replies with underruns {lv['underrun_replies_rate']:.1%} > {slo.max_underrun_streams_rate:.1%}")
    if lv["errors"] > slo.max_errors:
        codes = ", ".join(f"{k} {v}" for k, v in lv["errors_by_code"].items())
        fails.append(f"{lv['errors']} errors ({codes}) > {slo.max_errors}")
    return LevelVerdict(lv["concurrency"], not fails, fails)


def verdict(slo: TTSSLO, levels: list[dict[str, Any]]) -> Verdict:
    """As the call load test's: the highest level up to which every level passes, and the run verdict."""
    checks = [check_level(slo, lv) for lv in sorted(levels, key=lambda x: x["concurrency"])]
    return rank(checks, slo.min_concurrency, "TTS streams")
