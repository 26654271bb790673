"""agent-runtime synthesizers as a LiveKit streaming TTS.

`TTS.stream()` returns a `SynthesizeStream` that forwards LiveKit's text deltas (the LLM's tokens as
they come) into one of our `SynthesisStream`s: our `TextChunker` releases the first clause as soon
as it is speakable, the engine speaks it in its worker, and the audio goes out through LiveKit's
`AudioEmitter` while the LLM is still writing. LiveKit's `aclose()` (an interruption) cancels our
stream, so the engine stops at its next block boundary.

LiveKit 1.x speaks one segment per `SynthesizeStream` (a flush ends the stream's input). Inside it,
each of our text segments is reported as a `TimedString` carrying the segment's text and the audio
time where it starts (and ends, on the segment's last chunk), attached to the segment's first audio
frame. With `aligned_transcript=True` and `use_tts_aligned_transcript=True` on the session,
LiveKit's transcript synchronizer follows these segments; otherwise it paces the LLM's text itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import numpy as np
from livekit.agents import APIConnectionError, APIError, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, TimedString

from agent_runtime.tts.base import (
    SpeechOptions,
    SynthesisStream,
    Synthesizer,
    TTSChunk,
    UnsupportedSpeechOption,
)
from agent_runtime.tts.chunker import ChunkerConfig
from agent_runtime.tts.stream import ChunkedSynthesizer

from ._warm import WarmOnce
from .log import logger

__all__ = ["TTS", "ChunkedStream", "SynthesizeStream"]

NUM_CHANNELS = 1


class TTS(tts.TTS):
    def __init__(
        self,
        *,
        engine: str = "piper",
        engine_options: dict[str, Any] | None = None,
        synthesizer: Synthesizer | None = None,
        voice: str | None = None,
        speech_options: SpeechOptions | None = None,
        chunking: ChunkerConfig | None = None,
        max_segment_chars: int | None = None,
        aligned_transcript: bool = False,
        frame_size_ms: int = 100,
    ) -> None:
        """An agent-runtime engine as a LiveKit TTS.

        `engine` / `engine_options`: built with `agent_runtime.tts.registry.create_synthesizer`
        (`piper`, the default, embedded; `s2pro` local; `remote` a tts-serve). Or pass a loaded
        `synthesizer` to share one engine between sessions (it is then not closed by `aclose()`).
        `voice`: a voice of the engine (S2-Pro: a voice-library entry; piper: a speaker of a
        multi-speaker model); `speech_options`: the other per-stream overrides (sampling, speed,
        seed). `chunking` / `max_segment_chars`: our text segmentation. `aligned_transcript`:
        declare the per-segment `TimedString`s to LiveKit as an aligned transcript.
        `frame_size_ms`: size of the audio frames handed to LiveKit.
        """
        if synthesizer is None:
            from agent_runtime.tts.registry import create_synthesizer

            synthesizer = create_synthesizer(engine, engine_options or {})
            self._owns_synth = True
        else:
            self._owns_synth = False
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=aligned_transcript),
            sample_rate=int(synthesizer.sample_rate),
            num_channels=NUM_CHANNELS,
        )
        options = speech_options or SpeechOptions()
        if voice is not None:
            options = replace(options, voice=voice)
        self._synth = synthesizer
        self._engine = getattr(synthesizer, "name", engine)
        self._speech_options = options if options.set_fields() else None
        self._chunking = chunking
        self._max_segment_chars = max_segment_chars
        self._frame_size_ms = frame_size_ms
        self._streams: set[SynthesizeStream] = set()
        try:
            self._check_options(self._speech_options)
        except ValueError:
            if self._owns_synth:
                synthesizer.close()
            raise
        self._warm = WarmOnce(synthesizer.warmup, f"{self._engine} TTS")

    @property
    def synthesizer(self) -> Synthesizer:
        return self._synth

    @property
    def model(self) -> str:
        return self._engine

    @property
    def provider(self) -> str:
        return "agent-runtime"

    def update_options(self, *, voice: str | None = None, speech_options: SpeechOptions | None = None) -> None:
        """Change the voice / speech options of the streams opened from now on."""
        options = speech_options or self._speech_options or SpeechOptions()
        if voice is not None:
            options = replace(options, voice=voice)
        checked = options if options.set_fields() else None
        self._check_options(checked)  # raises before anything changes
        self._speech_options = checked

    def _check_options(self, options: SpeechOptions | None) -> None:
        """Refuse an unsupported voice/option now rather than on the first reply (engines built on
        `ChunkedSynthesizer`; others refuse when a stream opens)."""
        if options is None or not isinstance(self._synth, ChunkedSynthesizer):
            return
        try:
            utterance = self._synth.open_utterance_for(options)
        except UnsupportedSpeechOption as exc:
            raise ValueError(f"agent-runtime {self._engine} TTS: {exc}") from exc
        utterance.close()

    def _open_runtime_stream(self) -> SynthesisStream:
        try:
            return self._synth.open_stream(
                self._chunking, max_segment_chars=self._max_segment_chars, options=self._speech_options
            )
        except UnsupportedSpeechOption as exc:
            raise ValueError(f"agent-runtime {self._engine} TTS: {exc}") from exc

    def _open_for_livekit(self) -> SynthesisStream:
        """`_open_runtime_stream` for a LiveKit run: a refusal is a non-retryable `APIError`."""
        try:
            return self._open_runtime_stream()
        except ValueError as exc:
            raise APIError(str(exc), retryable=False) from exc

    def prewarm(self) -> None:
        """Run the engine once so the first reply is not slowed by lazy initialisation: once per
        `TTS`, in a worker thread when called on a running loop (LiveKit calls it at every activity
        start), inline otherwise."""
        self._warm()

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> ChunkedStream:
        return ChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> SynthesizeStream:
        stream = SynthesizeStream(tts=self, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        for stream in list(self._streams):
            await stream.aclose()
        self._streams.clear()
        if self._owns_synth:
            self._synth.close()


def _engine_error(tts_: TTS, exc: Exception) -> APIError:
    """Our engine's failure as LiveKit's error type (a remote tts-serve's is worth a retry)."""
    return APIConnectionError(
        f"agent-runtime {tts_._engine} TTS failed: {exc}", retryable=tts_._engine == "remote"
    )


class _Pump:
    """Moves our `TTSChunk`s into a LiveKit `AudioEmitter`, reporting each segment's text."""

    def __init__(self, emitter: tts.AudioEmitter, sample_rate: int) -> None:
        self._emitter = emitter
        self._sample_rate = sample_rate
        self._segment_id = -1
        self._samples = 0
        self.segments: list[str] = []

    def push(self, chunk: TTSChunk) -> None:
        start = self._samples / self._sample_rate
        if chunk.segment_id != self._segment_id:
            self._segment_id = chunk.segment_id
            text = chunk.text if not self.segments else " " + chunk.text
            self.segments.append(chunk.text)
            self._emitter.push_timed_transcript(TimedString(text, start_time=start))
        audio = np.ascontiguousarray(chunk.audio, dtype=np.int16)
        if len(audio):
            self._emitter.push(audio.tobytes())
            self._samples += len(audio)


class ChunkedStream(tts.ChunkedStream):
    """A whole text (`TTS.synthesize`): still cut and spoken segment by segment by our stream."""

    def __init__(self, *, tts: TTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._tts: TTS = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._tts.sample_rate,
            num_channels=NUM_CHANNELS,
            mime_type="audio/pcm",
            frame_size_ms=self._tts._frame_size_ms,
        )
        ours = self._tts._open_for_livekit()
        pump = _Pump(output_emitter, self._tts.sample_rate)
        done = False
        try:
            ours.push_text(self._input_text)
            ours.flush()
            async for chunk in ours:
                pump.push(chunk)
            done = True
        except (APIError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise _engine_error(self._tts, exc) from exc
        finally:
            if not done:
                await ours.cancel()
        output_emitter.flush()


class SynthesizeStream(tts.SynthesizeStream):
    """Text deltas in, audio from the first clause out; `aclose()` cancels our stream."""

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._tts: TTS = tts
        self._runtime_stream: SynthesisStream | None = None
        self._segments: list[str] = []

    @property
    def segments(self) -> list[str]:
        """The text segments our chunker cut so far (in the order they were spoken)."""
        return list(self._segments)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._tts.sample_rate,
            num_channels=NUM_CHANNELS,
            mime_type="audio/pcm",
            frame_size_ms=self._tts._frame_size_ms,
            stream=True,
        )
        ours = self._tts._open_for_livekit()
        self._runtime_stream = ours
        pump = _Pump(output_emitter, self._tts.sample_rate)
        self._segments = pump.segments
        started = False

        async def feed() -> None:
            nonlocal started
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    break  # LiveKit 1.x: a flush ends the stream's one segment
                if not started:
                    started = True
                    output_emitter.start_segment(segment_id=utils.shortuuid())
                    self._mark_started()
                ours.push_text(data)
            ours.flush()

        feed_task = asyncio.create_task(feed(), name="agent_runtime.TTS.feed")
        done = False
        try:
            async for chunk in ours:
                pump.push(chunk)
            await feed_task
            done = True
        except (APIError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise _engine_error(self._tts, exc) from exc
        finally:
            if not done:
                logger.debug("agent-runtime TTS stream closed before the end: cancelling the engine")
                await ours.cancel()
            await utils.aio.cancel_and_wait(feed_task)
            self._tts._streams.discard(self)
        if started:
            output_emitter.end_segment()

    @property
    def runtime_stream(self) -> SynthesisStream | None:
        """Our `SynthesisStream` behind this LiveKit stream (None until it runs)."""
        return self._runtime_stream

