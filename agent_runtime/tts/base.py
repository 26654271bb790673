"""TTS contract: push partial text in, get audio chunks out, tagged with the text they speak.

A `Synthesizer` is a loaded engine shared by many sessions. Each reply opens a `SynthesisStream`:
the turn manager pushes the LLM's text deltas as they come (`push_text`), calls `flush()` when the
LLM is done, iterates `TTSChunk`s, and calls `cancel()` on barge-in. The stream cuts text into
segments with a `TextChunker` (first segment as soon as a clause is speakable, none longer than its
`max_chars` cap) and synthesises them in order off the event loop.

Engines usually only implement `Synthesizer.open_utterance()`, returning an `UtteranceSynth` whose
blocking `synthesize(segment)` yields audio for one segment; `StreamingSynthesisStream` provides the
queueing, threading, cancellation and tagging around it. An engine may keep state across the
segments of one utterance (S2-Pro continues its context so the voice carries across segments).
Engines that run their own worker implement `AsyncUtteranceSynth.synthesize_async` instead, and the
stream awaits it on the event loop.

A stream may be opened with `SpeechOptions` (a voice, sampling, a seed: what a speech service's
request carries). An engine honours the fields it supports and raises `UnsupportedSpeechOption`
from `open_stream` for any other field that is set; all fields None means the engine's configured
defaults, which every engine supports.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import numpy as np

from agent_runtime.tts.chunker import ChunkerConfig


class UnsupportedSpeechOption(ValueError):
    """A `SpeechOptions` field this engine cannot honour (a service answers it with a 400)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VoiceSample:
    """A reference voice given with a request: audio and/or codec codes, and the words spoken.

    `audio` is float32 mono in [-1, 1] at `sample_rate`; `codes` is int64 (codebooks, frames) in the
    engine's codec (S2-Pro's `vq_codes`). At least one of the two is set; `text` is its transcript.
    """

    text: str
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    codes: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class SpeechOptions:
    """Per-stream overrides of an engine's configured voice and sampling; None = the engine's default.

    `voice`: a voice name the engine knows (S2-Pro: a voice-library entry; piper: a speaker of a
    multi-speaker model); `references`: voice samples to clone instead of a named voice (S2-Pro);
    `temperature`, `top_p`, `top_k`, `repetition_penalty`, `seed`: sampling; `max_new_tokens`: the
    generation cap of one segment in the engine's units (S2-Pro: frames); `speed`: speaking rate
    (1.0 = normal, >1 faster).
    """

    voice: str | None = None
    references: tuple[VoiceSample, ...] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    max_new_tokens: int | None = None
    speed: float | None = None

    def set_fields(self) -> list[str]:
        """Names of the fields that are not None (what an engine must honour or refuse)."""
        return [name for name in self.__slots__ if getattr(self, name) is not None]  # type: ignore[attr-defined]

    def refuse_unsupported(self, supported: set[str] | frozenset[str], engine: str) -> None:
        """Raise `UnsupportedSpeechOption` for the first set field not in `supported`."""
        for name in self.set_fields():
            if name not in supported:
                raise UnsupportedSpeechOption(name, f"the {engine} engine does not support it")


@dataclass(frozen=True, slots=True)
class TTSChunk:
    """Audio for (part of) one text segment.

    `audio` is int16 mono at `sample_rate`. `segment_id` counts segments within the stream from 0;
    `text` is the whole segment's text (the same on every chunk of the segment); `segment_final` is
    True on the segment's last chunk (which may be empty). `created_at` is `time.monotonic()` when the chunk existed.
    """

    audio: np.ndarray
    sample_rate: int
    segment_id: int
    text: str
    segment_final: bool
    created_at: float


class UtteranceSynth(ABC):
    """Engine state for one reply. `synthesize` is called from a worker thread, one segment at a time."""

    @abstractmethod
    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        """Yield float32 or int16 mono audio blocks at the synthesizer's rate for one segment."""

    def cancel(self) -> None:  # noqa: B027 - optional hook
        """Ask a running `synthesize` to stop at its next block boundary (called from any thread)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free per-utterance state."""


class AsyncUtteranceSynth(UtteranceSynth):
    """An utterance whose engine has its own worker (a model thread, a network client).

    The stream awaits `synthesize_async` on the event loop instead of spending a pool thread per
    reply on the blocking `synthesize` (which such engines still provide, for tools and tests).
    """

    @abstractmethod
    def synthesize_async(self, text: str) -> AsyncIterator[np.ndarray]:
        """Async form of `synthesize`: yields audio blocks as they exist; never blocks the loop."""


class SynthesisStream(ABC):
    """One reply being spoken."""

    @abstractmethod
    def push_text(self, text: str) -> int:
        """Add a text delta (any size, may split words); returns how many segments it released."""

    @abstractmethod
    def flush(self) -> int:
        """No more text will come: speak everything still buffered; returns segments released."""

    @abstractmethod
    async def cancel(self) -> None:
        """Stop at once: no more chunks are produced; pending text is dropped."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[TTSChunk]:
        """Chunks in order; ends after `flush()` once all text is spoken, or after `cancel()`."""


class Synthesizer(ABC):
    """A loaded TTS engine, shared by sessions."""

    name: str = "tts"
    sample_rate: int

    @abstractmethod
    def open_stream(
        self,
        chunking: ChunkerConfig | None = None,
        *,
        max_segment_chars: int | None = None,
        options: SpeechOptions | None = None,
    ) -> SynthesisStream:
        """Start a new reply; `chunking` overrides the engine's default text segmentation, and
        `max_segment_chars` (`tts.max_segment_chars`) lowers its segment cap (`ChunkerConfig.max_chars`):
        no segment handed to the engine is longer than the smaller of the two. `options` overrides
        voice and sampling for this stream; a field the engine cannot honour raises
        `UnsupportedSpeechOption` here, before any text is taken."""

    def warmup(self) -> None:  # noqa: B027 - optional hook
        """Run the engine once so the first reply is not slowed by lazy initialisation."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine."""
