"""The per-call turn manager: a state machine over VAD events that runs replies and barge-ins.

States: LISTENING -> USER_SPEAKING -> (pause) -> THINKING -> SPEAKING -> LISTENING.

* At the caller's first pause (`vad.stop_silence_ms` of silence) a reply starts speculatively: ASR,
  then LLM and TTS, with its audio held back.
* The turn ends when the silence reaches `turn.end_of_turn_silence_ms` (or the longer
  `incomplete_turn_silence_ms` when the words sound unfinished). Then the held audio plays.
* If the caller speaks again before any reply audio was heard, the reply is dropped unheard and the
  turn continues (its audio is kept and the next pause transcribes all of it).
* If the caller speaks while the agent is audible, playout pauses (phase one): as soon as
  `turn.barge_in_pause_ms` of voiced audio is in the VAD's start window (resumed if the endpointer
  does not declare speech within that window: a click, a breath), at the latest when it declares
  speech (`vad.min_speech_ms` of voiced audio). A barge-in episode is one run of caller speech: it
  ends when the endpointer's `vad.stop_silence_ms` of silence ends the run. Once an episode holds
  `turn.barge_in_min_speech_ms` of *voiced* frames, or the run's words are not a backchannel, the reply
  is interrupted: LLM, TTS and queued audio are cancelled and the history keeps what was heard. A
  short "mhm" resumes playout where it stopped; the next "mhm" is a new episode counted from zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from agent_runtime.audio.frame import AudioFrame
from agent_runtime.audio.resample import FrameRebuffer, StreamResampler
from agent_runtime.config import AppConfig
from agent_runtime.engine_set import Engines  # the contract lives there; re-exported here for old imports
from agent_runtime.llm.base import ChatMessage
from agent_runtime.metrics.turns import MetricsCollector, TurnMetrics
from agent_runtime.transport.base import Transport
from agent_runtime.turn.detector import HeuristicTurnDetector, TurnDetector
from agent_runtime.turn.reply import Reply
from agent_runtime.vad.endpointer import Endpointer, EndpointerConfig, VADEventType

log = logging.getLogger("agent_runtime.turn")
_session_ids = itertools.count(1)
_START_WINDOW_MS = 200  # the endpointer's window for declaring speech


class TurnState(Enum):
    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    THINKING = "thinking"
    SPEAKING = "speaking"


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """Something observers (demo, server, load harness) may want to show."""

    kind: str  # state | user_text | agent_text | barge_in | premature_reply_dropped | turn
    session_id: str
    timestamp: float
    data: dict[str, Any]


class Session:
    """One call: reads the transport, runs turns, writes agent audio back."""

    def __init__(
        self,
        config: AppConfig,
        engines: Engines,
        transport: Transport,
        *,
        metrics: MetricsCollector | None = None,
        on_event: Callable[[SessionEvent], None] | None = None,
        turn_detector: TurnDetector | None = None,
        session_id: str | None = None,
    ) -> None:
        self.config = config
        self.recognizer = engines.recognizer
        self.llm = engines.llm
        self.synthesizer = engines.synthesizer
        self.transport = transport
        self.metrics = metrics or MetricsCollector()
        self.session_id = session_id or f"s{next(_session_ids)}"
        self.history: list[ChatMessage] = []
        self.state = TurnState.LISTENING
        self._on_event = on_event
        self._detector = turn_detector or HeuristicTurnDetector()
        v = config.vad
        self._endpointer = Endpointer(EndpointerConfig.from_config(v, _START_WINDOW_MS))
        self._resampler: StreamResampler | None = None
        self._rebuffer = FrameRebuffer(Endpointer.sample_rate, v.frame_ms)
        self._turn_ids = itertools.count(1)
        self._reply: Reply | None = None  # the reply being prepared or spoken
        self._carry_audio = np.zeros(0, dtype=np.int16)  # audio of a turn whose reply was dropped
        self._carry_turn: tuple[int, int] | None = None  # (turn id, replies dropped) of a continuing turn
        # Barge-in: voiced ms in the current episode (None: no episode), the recent frames' VAD verdicts
        # (start time, voiced) to count the speech that declared the episode, and a sequence number so
        # only the latest episode's backchannel verdict resumes playout.
        self._barge_voiced_ms: int | None = None
        self._early_pause: tuple[Reply, float] | None = None  # a reply paused before speech, and until when
        self._barge_seq = 0
        self._recent_voiced: deque[tuple[float, bool]] = deque(maxlen=max(1, _START_WINDOW_MS // v.frame_ms))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._backchannels = {re.sub(r"[^a-z ]", "", b.lower()).strip() for b in config.turn.backchannels}

    @property
    def busy(self) -> bool:
        """True while the caller is talking or a reply is being prepared or spoken."""
        return self._reply is not None or self._endpointer.in_speech

    @property
    def current_reply(self) -> Reply | None:
        """The reply being prepared or spoken (read-only; the session alone starts and ends replies)."""
        return self._reply

    def recent_history(self) -> list[ChatMessage]:
        """The last `turn.max_history_messages` messages of the conversation (a copy)."""
        return self.history[-self.config.turn.max_history_messages :]

    # -- main loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Process the call until the caller hangs up; then cancel whatever is in flight."""
        log.info("session %s: started", self.session_id)
        try:
            while True:
                frame = await self.transport.recv()
                if frame is None:
                    break
                for f in self._to_vad_frames(frame):
                    await self._on_frame(f)
        finally:
            await self._shutdown()
            log.info("session %s: ended after %d turns", self.session_id, len(self.metrics.turns))

    def _to_vad_frames(self, frame: AudioFrame) -> list[AudioFrame]:
        mono = frame.mono()
        if self._resampler is None or self._resampler.in_rate != mono.sample_rate:
            self._resampler = StreamResampler(mono.sample_rate, Endpointer.sample_rate)
        return self._rebuffer.push(self._resampler.process(mono))

    async def _on_frame(self, frame: AudioFrame) -> None:
        events = self._endpointer.process(frame)
        voiced = self._endpointer.silence_ms == 0  # reset by a voiced frame, grows on unvoiced ones
        self._recent_voiced.append((frame.timestamp, voiced))
        started = False
        for event in events:
            if event.type is VADEventType.SPEECH_START:
                started = True
                await self._on_speech_start(event.timestamp)
            else:
                await self._on_speech_stop(event.timestamp)
        reply = self._reply
        if reply is None:
            return
        if self._barge_voiced_ms is not None:
            if voiced and not started:  # the start already counted this frame
                self._barge_voiced_ms += self.config.vad.frame_ms
            if self._barge_voiced_ms >= self.config.turn.barge_in_min_speech_ms:
                await self._interrupt(reply, "speech")
            return
        self._early_barge_pause(reply, frame.end_time)
        if not reply.committed.is_set() and not self._endpointer.in_speech:
            self._maybe_commit(reply, frame.end_time)

    def _early_barge_pause(self, reply: Reply, now: float) -> None:
        """Pause an audible reply on the first `turn.barge_in_pause_ms` of voiced caller audio; resume
        it if the endpointer has not declared speech by the end of the start window."""
        if self._early_pause is not None:
            paused, until = self._early_pause
            if paused is not reply or now >= until:
                self._early_pause = None
                if paused is reply and reply.paused and not reply.finished.is_set():
                    reply.resume()  # no speech came: a click or a breath
                    self._emit("barge_in", {"phase": "resume", "heard": ""})
            return
        t = self.config.turn
        if not t.barge_in or t.barge_in_pause_ms <= 0 or reply.paused or not reply.audible or reply.finished.is_set():
            return
        fm = self.config.vad.frame_ms
        if sum(fm for _, v in self._recent_voiced if v) >= t.barge_in_pause_ms:
            reply.pause()
            self._early_pause = (reply, now + _START_WINDOW_MS / 1000)
            self._emit("barge_in", {"phase": "pause"})

    # -- VAD events ----------------------------------------------------------------------------
    async def _on_speech_start(self, when: float) -> None:
        reply = self._reply
        self._early_pause = None  # speech came: the episode decides from here
        if reply is not None and reply.audible and not reply.finished.is_set():
            if self.config.turn.barge_in and self._barge_voiced_ms is None:
                # A new episode, counted from the voiced frames that made the endpointer declare speech.
                fm = self.config.vad.frame_ms
                self._barge_voiced_ms = sum(fm for start, v in self._recent_voiced if v and start >= when)
                if not reply.paused:
                    reply.pause()  # phase one: silence the agent within a frame, keep its place
                    self._emit("barge_in", {"phase": "pause"})
            return
        if reply is not None and not reply.audible:
            await self._drop_unheard(reply)
        elif reply is None:
            self._spawn(self._prime_llm())
        self._set_state(TurnState.USER_SPEAKING)

    async def _prime_llm(self) -> None:
        """While the caller talks, let the LLM prefill the part of the prompt it already knows."""
        prefix = [ChatMessage("system", self.config.llm.system_prompt), *self.recent_history()]
        try:
            await self.llm.prime(prefix)
        except Exception as exc:  # an optimisation only: never let it hurt the call
            log.debug("session %s: LLM prime failed: %s", self.session_id, exc)

    async def _on_speech_stop(self, when: float) -> None:
        reply = self._reply
        if self._barge_voiced_ms is not None and reply is not None:
            # The episode ended short of the threshold: a backchannel resumes playout, words interrupt.
            self._barge_voiced_ms = None
            self._barge_seq += 1
            snippet = self._endpointer.take_audio()  # the next episode records (and is judged) on its own
            self._spawn(self._judge_short_barge_in(reply, snippet, when, self._barge_seq))
            return
        if reply is not None and reply.audible and not reply.finished.is_set():
            return  # barge-in disabled: the caller's words wait for the reply to end
        self._start_reply(when)

    def _start_reply(self, speech_end: float) -> None:
        # A fresh record per attempt: a dropped attempt's timestamps and errors must not leak into this
        # one. Only the turn id and the count of dropped attempts carry over.
        if self._carry_turn is not None:
            turn_id, dropped = self._carry_turn
        else:
            turn_id, dropped = next(self._turn_ids), 0
        self._carry_turn = None
        metrics = TurnMetrics(self.session_id, turn_id, premature_replies_dropped=dropped)
        metrics.user_speech_end = speech_end
        audio = np.concatenate([self._carry_audio, self._endpointer.audio()])
        reply = Reply(self, metrics, audio)
        self._reply = reply
        self._set_state(TurnState.THINKING)
        reply.start()

    def _maybe_commit(self, reply: Reply, now: float) -> None:
        t = self.config.turn
        silence_ms = (now - (reply.metrics.user_speech_end or now)) * 1000
        if not t.speculative:  # silence alone decides; the words come after the decision
            if silence_ms >= t.end_of_turn_silence_ms:
                self._endpointer.discard_audio()
                self._carry_audio = np.zeros(0, dtype=np.int16)
                reply.commit(time.monotonic())
                self._spawn(self._follow(reply))
            return
        if reply.transcript is None:
            return  # the decision needs the words
        if reply.sounds_complete is None:  # judged once per transcript, not on every frame
            reply.sounds_complete = self._detector.is_complete(reply.transcript.text)
        needed = t.end_of_turn_silence_ms if reply.sounds_complete else t.incomplete_turn_silence_ms
        if silence_ms < needed:
            return
        self._endpointer.discard_audio()
        self._carry_audio = np.zeros(0, dtype=np.int16)
        if reply.transcript.is_empty:
            self._reply = None
            self._set_state(TurnState.LISTENING)
            return
        reply.commit(time.monotonic())
        self._spawn(self._follow(reply))

    async def _follow(self, reply: Reply) -> None:
        """Track a committed reply to its end and file it into the history."""
        await reply.finished.wait()
        if self._reply is reply and not reply.interrupted and not reply.dropped:
            self._finish(reply)

    # -- outcomes ------------------------------------------------------------------------------
    async def _drop_unheard(self, reply: Reply) -> None:
        """The caller kept talking before hearing anything: the turn continues."""
        await reply.drop()
        if reply.committed.is_set():
            # Its audio was handed over at the decision; the endpointer now records only new speech.
            self._carry_audio = reply.audio
        self._carry_turn = (reply.metrics.turn_id, reply.metrics.premature_replies_dropped + 1)
        self._reply = None
        self._emit("premature_reply_dropped", {"text": reply.llm_text})

    async def _interrupt(self, reply: Reply, reason: str) -> None:
        self._barge_voiced_ms = None
        await reply.interrupt()
        await self.transport.clear()
        self._emit("barge_in", {"phase": "interrupt", "reason": reason})
        self._finish(reply)
        self._set_state(TurnState.USER_SPEAKING if self._endpointer.in_speech else TurnState.LISTENING)

    async def _judge_short_barge_in(self, reply: Reply, snippet: np.ndarray, when: float, seq: int) -> None:
        transcript = await self.recognizer.atranscribe(snippet.astype(np.float32) / 32768.0)
        if self._reply is not reply or reply.interrupted or reply.finished.is_set():
            return
        words = re.sub(r"[^a-z ]", "", transcript.text.lower()).strip()
        if not words or words in self._backchannels:
            # Resume only if no later episode is running or waiting for its own verdict.
            if seq == self._barge_seq and self._barge_voiced_ms is None:
                reply.resume()
                self._emit("barge_in", {"phase": "resume", "heard": transcript.text})
            return
        # Words: the snippet opens the caller's next turn (the endpointer may be recording more).
        self._carry_audio = np.concatenate([self._carry_audio, snippet])
        await self._interrupt(reply, "words")
        if not self._endpointer.in_speech:
            self._start_reply(when)

    def _finish(self, reply: Reply) -> None:
        if reply.transcript is None or reply.transcript.is_empty:  # no words: no turn
            if self._reply is reply:
                self._reply = None
                self._set_state(TurnState.LISTENING)
            return
        metrics = reply.metrics
        metrics.interrupted = reply.interrupted
        cut_short = reply.interrupted or reply.tts_failed  # the caller heard only part of the reply
        heard = reply.heard.text() if cut_short else reply.llm_text.strip()
        metrics.agent_text = heard
        if reply.transcript is not None and not reply.transcript.is_empty:
            self.history.append(ChatMessage("user", reply.transcript.text))
            self.history.append(ChatMessage("assistant", heard, interrupted=cut_short))
            self._emit("agent_text", {"text": heard, "interrupted": cut_short})
        self.metrics.record(metrics)
        self._emit("turn", {"metrics": metrics})
        if self._reply is reply:
            self._reply = None
            self._barge_voiced_ms = None
            if self.state is TurnState.SPEAKING:
                self._set_state(TurnState.LISTENING)

    # -- callbacks from replies ----------------------------------------------------------------
    def on_transcript(self, reply: Reply) -> None:
        assert reply.transcript is not None
        self._emit("user_text", {"text": reply.transcript.text, "final": reply.committed.is_set()})

    def on_first_audio(self, reply: Reply) -> None:
        self._set_state(TurnState.SPEAKING)

    # -- plumbing ------------------------------------------------------------------------------
    def _set_state(self, state: TurnState) -> None:
        if state is not self.state:
            self.state = state
            self._emit("state", {"state": state.value})

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        if self._on_event is not None:
            try:
                self._on_event(SessionEvent(kind, self.session_id, time.monotonic(), data))
            except Exception:
                log.exception("session event observer failed")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shutdown(self) -> None:
        reply = self._reply
        if reply is not None:
            if reply.audible and not reply.finished.is_set():
                await reply.interrupt()  # the caller hung up mid-reply
                self._finish(reply)
            else:
                await reply.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._reply = None
