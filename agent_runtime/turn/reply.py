"""One agent reply: transcript -> LLM stream -> TTS stream -> paced playout.

A reply is started speculatively at the caller's first pause. It may run ASR, the LLM and TTS before
the turn is decided, but no audio leaves before `commit()`. Until its first frame is played it can be
dropped unheard (`cancel()`); once audible, the session interrupts it (`interrupt()`), and the
history keeps only what was heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from agent_runtime.asr.base import Recognizer, Transcript
from agent_runtime.audio.frame import AudioFrame
from agent_runtime.audio.resample import FrameRebuffer, StreamResampler
from agent_runtime.config import AppConfig
from agent_runtime.errors import BackendError
from agent_runtime.llm.base import ChatMessage, GenerationOptions, LLMBackend
from agent_runtime.metrics.turns import TurnMetrics
from agent_runtime.transport.base import Transport
from agent_runtime.tts.base import Synthesizer
from agent_runtime.tts.chunker import ChunkerConfig
from agent_runtime.turn.reply_text import LLMOutcome, ReplyText

log = logging.getLogger("agent_runtime.turn")

OUTPUT_FRAME_MS = 20
STARVED_TOLERANCE_S = 0.02  # event-loop jitter up to a frame is not starvation


@dataclass
class _Segment:
    text: str
    produced: int = 0  # samples at the output rate
    played: int = 0
    complete: bool = False


@dataclass
class HeardText:
    """Segments of the reply and how much of each the caller heard."""

    segments: dict[int, _Segment] = field(default_factory=dict)
    sample_rate: int = 16_000
    chars_per_second: float = 15.0

    def expected_samples(self, text: str) -> int:
        return int(len(text) / self.chars_per_second * self.sample_rate)

    def text(self) -> str:
        parts: list[str] = []
        for seg_id in sorted(self.segments):
            seg = self.segments[seg_id]
            if seg.played <= 0:
                break
            if seg.complete and seg.played >= seg.produced:
                parts.append(seg.text)
                continue
            words = seg.text.split()
            # While a segment is still being synthesised its length is unknown: estimate it from
            # the text (about 15 characters a second) so a slow engine doesn't over-count.
            total = seg.produced if seg.complete else max(seg.produced, self.expected_samples(seg.text))
            fraction = seg.played / max(total, 1)
            heard = words[: int(len(words) * fraction)]
            if heard:
                parts.append(" ".join(heard))
            break
        return " ".join(parts).strip()

    @property
    def everything_played(self) -> bool:
        return bool(self.segments) and all(s.complete and s.played >= s.produced for s in self.segments.values())


class ReplyHost(Protocol):
    """What a reply needs from the call it belongs to (`Session` provides it): the engines, the
    transport, the history it answers, and two notifications. Nothing else of the session."""

    @property
    def session_id(self) -> str: ...
    @property
    def config(self) -> AppConfig: ...
    @property
    def recognizer(self) -> Recognizer: ...
    @property
    def llm(self) -> LLMBackend: ...
    @property
    def synthesizer(self) -> Synthesizer: ...
    @property
    def transport(self) -> Transport: ...

    def recent_history(self) -> list[ChatMessage]:
        """The last `turn.max_history_messages` messages of the conversation (a copy)."""
        ...

    def on_transcript(self, reply: Reply) -> None:
        """The reply's transcript is ready."""
        ...

    def on_first_audio(self, reply: Reply) -> None:
        """The reply's first frame went to the transport."""
        ...


class Reply:
    """A (possibly speculative) agent reply to one user turn."""

    def __init__(self, session: ReplyHost, metrics: TurnMetrics, audio: np.ndarray) -> None:
        self.session = session
        self.metrics = metrics
        self.audio = audio  # the user's turn audio, int16 16 kHz
        self.transcript: Transcript | None = None
        self.sounds_complete: bool | None = None  # the turn detector's verdict on the transcript
        self.transcript_ready = asyncio.Event()
        self.committed = asyncio.Event()
        self._playing = asyncio.Event()  # cleared while a barge-in pauses playout
        self._playing.set()
        self.heard = HeardText(sample_rate=session.transport.output_sample_rate)
        self.llm_text = ""  # the reply's text as spoken (with the fallback or stall line)
        self.llm_outcome: LLMOutcome | None = None
        self.audible = False  # a frame has been handed to the transport
        self._play_until: float | None = None  # when the audio sent so far ends playing (runtime clock)
        self.finished = asyncio.Event()
        self._interrupted = False
        self._dropped = False
        self.tts_failed = False  # the TTS engine raised: the reply was cut short at what was played
        self._task: asyncio.Task[None] | None = None
        self._tts_stream = None

    # -- control (called by the session on the event loop) -----------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"reply-{self.metrics.turn_id}")

    def commit(self, when: float) -> None:
        self.metrics.end_of_turn = when
        self.committed.set()

    def pause(self) -> None:
        self._playing.clear()
        self._play_until = None  # the silence of a barge-in pause is meant, not starvation

    def resume(self) -> None:
        self._playing.set()

    @property
    def paused(self) -> bool:
        return not self._playing.is_set()

    @property
    def interrupted(self) -> bool:
        """Cut off while audible (barge-in, or the caller hung up mid-reply)."""
        return self._interrupted

    @property
    def dropped(self) -> bool:
        """Discarded unheard because the caller went on talking."""
        return self._dropped

    async def interrupt(self) -> None:
        """Cut the reply off: it was (at least partly) heard."""
        self._interrupted = True
        await self.cancel()

    async def drop(self) -> None:
        """Discard the reply unheard."""
        self._dropped = True
        await self.cancel()

    async def cancel(self) -> None:
        """Stop everything (LLM, TTS, playout) now."""
        if self._tts_stream is not None:
            await self._tts_stream.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.finished.set()

    # -- the pipeline ---------------------------------------------------------------------------
    async def _run(self) -> None:
        s = self.session
        try:
            if not s.config.turn.speculative:
                await self.committed.wait()  # sequential: nothing starts before the turn ends
            if self.metrics.user_speech_end is not None:  # how long after the end of speech ASR began
                self.metrics.extra["asr_start_ms"] = round((time.monotonic() - self.metrics.user_speech_end) * 1000, 1)
            self.transcript = await s.recognizer.atranscribe(self.audio.astype(np.float32) / 32768.0)
            self.metrics.asr_final = time.monotonic()
            self.metrics.extra["asr_wait_ms"] = round(self.transcript.wait_seconds * 1000, 1)
            self.metrics.extra["asr_compute_ms"] = round(self.transcript.processing_seconds * 1000, 1)
            self.metrics.user_text = self.transcript.text
            self.transcript_ready.set()
            s.on_transcript(self)
            if self.transcript.is_empty:
                return
            chunking = None
            if s.config.tts.first_segment == "sentence":
                chunking = ChunkerConfig(first_min_words=10_000, first_min_chars=10_000, first_opener_break=False)
            tts = s.synthesizer.open_stream(chunking, max_segment_chars=s.config.tts.max_segment_chars)
            self._tts_stream = tts
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump_llm(tts))
                tg.create_task(self._playout(tts))
        except asyncio.CancelledError:
            raise
        except Exception:
            if not self.tts_failed:  # a TTS failure was logged where it happened
                log.exception("session %s turn %d: reply failed", s.session_id, self.metrics.turn_id)
        finally:
            self.transcript_ready.set()
            self.finished.set()

    def messages(self) -> list[ChatMessage]:
        s = self.session
        assert self.transcript is not None
        return [
            ChatMessage("system", s.config.llm.system_prompt),
            *s.recent_history(),
            ChatMessage("user", self.transcript.text),
        ]

    async def _pump_llm(self, tts) -> None:
        """Stream the LLM's reply into the TTS; then speak what fits how the stream ended."""
        cfg = self.session.config.llm
        text = ReplyText(cfg.max_reply_chars)
        self.llm_outcome = await self._read_llm(text, tts)
        tail = text.rest()
        if self.llm_outcome is LLMOutcome.FAILED:
            self.llm_text = cfg.fallback_line
            tail = cfg.fallback_line
        elif self.llm_outcome is LLMOutcome.BROKE_OFF:
            self.llm_text = f"{text.text.strip()} {cfg.stall_line}"
            tail = f"{tail} {cfg.stall_line}"
        else:
            self.llm_text = text.text
        self._to_tts(tts.push_text, tail)
        self._to_tts(tts.flush)

    async def _read_llm(self, text: ReplyText, tts) -> LLMOutcome:
        """Read the LLM stream into `text` (pushing what is safe to the TTS) until it ends, fails,
        stalls (`first_token_timeout_s`, then `inter_token_timeout_s` between deltas) or reaches
        `max_reply_chars`; the stream is closed in every case."""
        s = self.session
        cfg = s.config.llm
        options = GenerationOptions(max_tokens=cfg.max_tokens, temperature=cfg.temperature)
        stream: AsyncIterator[str] = s.llm.stream_chat(self.messages(), options)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.first_token_timeout_s
        got_text = False
        try:
            while True:
                watch = asyncio.timeout_at(deadline)
                try:
                    async with watch:
                        delta = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if not watch.expired():
                        raise  # the backend's own timeout: an error like any other
                    if not got_text:
                        raise TimeoutError(f"no first token in {cfg.first_token_timeout_s:.1f} s") from None
                    self.metrics.llm_error = f"stalled: no token for {cfg.inter_token_timeout_s:.1f} s"
                    log.warning(
                        "session %s turn %d: LLM %s; speaking the stall line",
                        s.session_id, self.metrics.turn_id, self.metrics.llm_error,
                    )  # fmt: skip
                    return LLMOutcome.BROKE_OFF
                if not delta or (not got_text and not delta.strip()):
                    continue
                if not got_text:
                    self.metrics.llm_first_token = time.monotonic()
                    got_text = True
                deadline = loop.time() + cfg.inter_token_timeout_s
                ready = text.add(delta)
                self.llm_text = text.text
                if ready:
                    self._to_tts(tts.push_text, ready)
                if text.truncated:
                    self.metrics.reply_truncated = True
                    log.warning(
                        "session %s turn %d: reply cut at %d characters (llm.max_reply_chars)",
                        s.session_id, self.metrics.turn_id, len(text.text),
                    )  # fmt: skip
                    return LLMOutcome.TRUNCATED
        except (BackendError, TimeoutError) as exc:
            self.metrics.llm_error = str(exc) or type(exc).__name__
            log.warning("session %s: LLM failed (%s)", s.session_id, self.metrics.llm_error)
            return LLMOutcome.BROKE_OFF if got_text else LLMOutcome.FAILED
        except Exception as exc:  # a plugin backend may raise anything: the session must stay up
            self.metrics.llm_error = repr(exc)
            log.exception("session %s: LLM backend raised", s.session_id)
            return LLMOutcome.BROKE_OFF if got_text else LLMOutcome.FAILED
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        return LLMOutcome.COMPLETE if got_text else LLMOutcome.FAILED

    def _to_tts(self, hand_over, *args: str) -> None:
        """Give text to the TTS stream (`push_text` or `flush`); note when the first segment went.

        The time is taken before the hand-over: the engine may start on the segment at once, and its
        first audio must not appear to come before its text."""
        now = time.monotonic()
        released_segments = hand_over(*args)
        if released_segments and self.metrics.tts_first_text is None:
            self.metrics.tts_first_text = now

    async def _playout(self, tts) -> None:
        s = self.session
        out_rate = s.transport.output_sample_rate
        resampler: StreamResampler | None = None
        rebuffer = FrameRebuffer(out_rate, OUTPUT_FRAME_MS)
        chunks = aiter(tts)
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except Exception as exc:  # a dead or failing TTS engine: stop here, the session stays up
                self.tts_failed = True
                self.metrics.tts_error = str(exc) or type(exc).__name__
                log.warning(
                    "session %s turn %d: TTS failed (%s); the reply ends with the audio it already has",
                    s.session_id, self.metrics.turn_id, self.metrics.tts_error,
                )  # fmt: skip
                await self._send_tail(rebuffer, out_rate)
                raise  # ends the reply's task group: the LLM stream is cancelled too
            if self.metrics.tts_first_audio is None and len(chunk.audio):
                self.metrics.tts_first_audio = chunk.created_at
            if resampler is None:
                resampler = StreamResampler(chunk.sample_rate, out_rate)
            seg = self.heard.segments.setdefault(chunk.segment_id, _Segment(chunk.text))
            frames: list[AudioFrame] = []
            if len(chunk.audio):
                resampled = resampler.process(AudioFrame(chunk.audio, chunk.sample_rate))
                seg.produced += resampled.num_samples
                frames = rebuffer.push(resampled)
            if chunk.segment_final:
                seg.complete = True
            await self.committed.wait()
            for frame in frames:
                await self._send(frame, seg)
        await self._send_tail(rebuffer, out_rate)

    async def _send_tail(self, rebuffer: FrameRebuffer, out_rate: int) -> None:
        """Pad and send the rebuffer's remainder so the tail of the audio is not lost."""
        tail = rebuffer.push(AudioFrame(np.zeros(rebuffer.frame_samples, np.int16), out_rate))
        if tail:
            await self.committed.wait()
            last_seg = self.heard.segments[max(self.heard.segments)] if self.heard.segments else _Segment("")
            await self._send(tail[0], last_seg)
        for seg in self.heard.segments.values():
            seg.played = max(seg.played, seg.produced)

    async def _send(self, frame: AudioFrame, seg: _Segment) -> None:
        transport = self.session.transport
        await transport.wait_writable()  # pace first, so a pause decided meanwhile holds this frame
        await self._playing.wait()
        now = time.monotonic()
        if not self.audible:
            self.audible = True
            self.metrics.first_audio_out = now
            self.session.on_first_audio(self)
        self._account_playout(now, frame.num_samples / frame.sample_rate)
        await transport.send(AudioFrame(frame.pcm, frame.sample_rate, now))
        seg.played = min(seg.produced, seg.played + frame.num_samples)

    def _account_playout(self, now: float, seconds: float) -> None:
        """Audio sent, and starvation: a frame sent after the audio before it has finished playing
        (by more than `STARVED_TOLERANCE_S`) means the caller heard silence the reply did not contain,
        because TTS fell behind playout (`extra.playout_starved_ms`; the load harness's client-side
        gaps also count pauses inside the audio itself)."""
        extra = self.metrics.extra
        if self._play_until is not None and now - self._play_until > STARVED_TOLERANCE_S:
            extra["playout_starved_ms"] = round(extra.get("playout_starved_ms", 0.0) + (now - self._play_until) * 1000, 1)
        extra["playout_ms"] = round(extra.get("playout_ms", 0.0) + seconds * 1000, 1)
        self._play_until = max(self._play_until or now, now) + seconds
