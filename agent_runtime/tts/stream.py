"""The generic streaming machinery around an engine's per-segment synthesis.

`ChunkedSynthesizer` turns an engine that can speak one segment at a time (`open_utterance()`) into
the runtime's `Synthesizer` contract: text deltas are cut by a `TextChunker`, segments are spoken in
order in a worker thread (or, for an `AsyncUtteranceSynth`, awaited on the loop while the engine's
own worker computes), audio blocks come back on the event loop as `TTSChunk`s, and `cancel()`
stops between two blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import numpy as np

from agent_runtime.audio.frame import float_to_pcm16
from agent_runtime.cores import ENGINE_LOAD
from agent_runtime.tts.base import (
    AsyncUtteranceSynth,
    SpeechOptions,
    SynthesisStream,
    Synthesizer,
    TTSChunk,
    UtteranceSynth,
)
from agent_runtime.tts.chunker import ChunkerConfig, TextChunker

_END = object()


def _busy_while_computing(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """`blocks`, with the process's `ENGINE_LOAD` marked busy while each block is computed."""
    while True:
        with ENGINE_LOAD.busy():
            block = next(blocks, None)
        if block is None:
            return
        yield block


class ChunkedSynthesizer(Synthesizer):
    """Base class for engines that synthesise segment by segment."""

    chunker_config: ChunkerConfig = ChunkerConfig()
    chunker_class: type[TextChunker] = TextChunker

    @abstractmethod
    def open_utterance(self) -> UtteranceSynth:
        """Per-reply engine state (called on the event loop; must be cheap)."""

    def open_utterance_for(self, options: SpeechOptions) -> UtteranceSynth:
        """Per-reply engine state with per-stream `options` (called on the event loop; cheap).

        The default honours no option: it refuses any set field (`UnsupportedSpeechOption`) and
        otherwise opens a plain `open_utterance()`. Engines that support options override it.
        """
        options.refuse_unsupported(frozenset(), self.name)
        return self.open_utterance()

    def open_stream(
        self,
        chunking: ChunkerConfig | None = None,
        *,
        max_segment_chars: int | None = None,
        options: SpeechOptions | None = None,
    ) -> SynthesisStream:
        utterance = self.open_utterance_for(options) if options is not None else None
        return StreamingSynthesisStream(self, self.chunker(chunking, max_segment_chars), utterance)

    def chunker(self, chunking: ChunkerConfig | None = None, max_segment_chars: int | None = None) -> TextChunker:
        """The engine's chunker for one reply: `chunking` (default the engine's config), its
        `max_chars` lowered to `max_segment_chars` when that is smaller."""
        config = chunking or self.chunker_config
        if max_segment_chars is not None and max_segment_chars < config.max_chars:
            config = replace(config, max_chars=max_segment_chars)
        return self.chunker_class(config)


class StreamingSynthesisStream(SynthesisStream):
    """Segments queue -> worker thread -> chunk queue, with prompt cancellation."""

    def __init__(
        self, synth: ChunkedSynthesizer, chunker: TextChunker, utterance: UtteranceSynth | None = None
    ) -> None:
        """`utterance`: opened already (with per-stream options); None: `synth.open_utterance()`
        when the first segment is ready."""
        self._synth = synth
        self._chunker = chunker
        self._opened = utterance
        self._segments: asyncio.Queue[str | object] = asyncio.Queue()
        self._chunks: asyncio.Queue[TTSChunk | BaseException | object] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._flushed = False
        self._utterance: UtteranceSynth | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()

    # -- input side -------------------------------------------------------------------------
    def push_text(self, text: str) -> int:
        if self._flushed or self._cancelled.is_set():
            return 0
        segments = self._chunker.push(text)
        for segment in segments:
            self._enqueue(segment)
        return len(segments)

    def flush(self) -> int:
        if self._flushed or self._cancelled.is_set():
            return 0
        segments = self._chunker.flush()
        for segment in segments:
            self._enqueue(segment)
        self._flushed = True
        self._segments.put_nowait(_END)
        self._ensure_worker()
        return len(segments)

    def _enqueue(self, segment: str) -> None:
        self._segments.put_nowait(segment)
        self._ensure_worker()

    def _ensure_worker(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tts-stream")

    async def cancel(self) -> None:
        self._cancelled.set()
        if self._utterance is not None:
            self._utterance.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        elif self._task is None and self._opened is not None:  # opened with options, never ran
            self._opened.cancel()
            await asyncio.to_thread(self._opened.close)
            self._opened = None
        self._chunks.put_nowait(_END)

    # -- worker -----------------------------------------------------------------------------
    async def _run(self) -> None:
        segment_id = 0
        try:
            self._utterance = self._opened if self._opened is not None else self._synth.open_utterance()
            while not self._cancelled.is_set():
                item = await self._segments.get()
                if item is _END:
                    break
                assert isinstance(item, str)
                if isinstance(self._utterance, AsyncUtteranceSynth):
                    await self._speak_segment_async(self._utterance, item, segment_id)
                else:
                    await asyncio.to_thread(self._speak_segment, item, segment_id)
                segment_id += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # surfaced to the consumer
            self._chunks.put_nowait(exc)
        finally:
            if self._utterance is not None:
                self._utterance.cancel()
                await asyncio.to_thread(self._utterance.close)
            self._chunks.put_nowait(_END)

    def _speak_segment(self, text: str, segment_id: int) -> None:
        """Runs in a worker thread: hand each audio block to the loop as soon as it exists."""
        assert self._utterance is not None
        rate = self._synth.sample_rate
        for block in _busy_while_computing(self._utterance.synthesize(text)):
            if self._cancelled.is_set():
                return
            pcm = block if block.dtype == np.int16 else float_to_pcm16(block)
            if len(pcm):
                self._emit(TTSChunk(pcm, rate, segment_id, text, False, time.monotonic()))
        if not self._cancelled.is_set():  # an empty closing chunk marks the segment's end
            self._emit(TTSChunk(np.zeros(0, dtype=np.int16), rate, segment_id, text, True, time.monotonic()))

    async def _speak_segment_async(self, utterance: AsyncUtteranceSynth, text: str, segment_id: int) -> None:
        """On the loop, for engines with their own worker: same tagging as `_speak_segment`."""
        rate = self._synth.sample_rate
        async with contextlib.aclosing(utterance.synthesize_async(text)) as blocks:
            async for block in blocks:
                if self._cancelled.is_set():
                    return
                pcm = block if block.dtype == np.int16 else float_to_pcm16(block)
                if len(pcm):
                    self._chunks.put_nowait(TTSChunk(pcm, rate, segment_id, text, False, time.monotonic()))
        if not self._cancelled.is_set():
            self._chunks.put_nowait(TTSChunk(np.zeros(0, dtype=np.int16), rate, segment_id, text, True, time.monotonic()))

    def _emit(self, chunk: TTSChunk) -> None:
        self._loop.call_soon_threadsafe(self._chunks.put_nowait, chunk)

    # -- output side ------------------------------------------------------------------------
    async def __aiter__(self) -> AsyncIterator[TTSChunk]:  # type: ignore[override]
        while True:
            item = await self._chunks.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            if self._cancelled.is_set():
                return
            assert isinstance(item, TTSChunk)
            yield item
