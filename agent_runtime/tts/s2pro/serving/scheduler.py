"""The pooled engine's one model thread: rounds of calls, one prefill chunk and one step.

    sched = PoolScheduler(decoder)
    fut = sched.submit(fn)                 # any work on the model thread (stream opening)
    chunks = sched.submit_codec(dec, codes) # Future: dec.push(codes), batched with other streams'
    sched.add_segment(seg)                 # a segment to prefill and decode (PooledSegment)
    frame = sched.submit_step(seg)         # Future: the segment's next kept frame, None at its end

A round (`_round`): run the queued codec pushes, batched across streams (one forward per chunk
length through `BatchedCodecDecoder`: each stream keeps its own decoder state and chunk schedule),
then the queued calls; stop segments that were cancelled or closed; spend one
prefill chunk (`PoolConfig.prefill_chunk` positions) on the segments waiting for prefill: first
those that have had no chunk yet, longest-waiting first, then the oldest one already prefilling
(a prefill call per segment, several short prompts sharing the chunk); then one
`decoder.step()` for every decoding slot. So while any slot decodes, at most one chunk's worth of
prefill runs between two steps (a long prompt delays the others' frames by one chunk at most),
and a new call's first chunk goes before an older call's later chunks. A step runs on demand: when every decoding segment's
consumer has asked for its next frame, or GATHER_S after the last step once one has (frames of the
others are then generated ahead and buffered); with no consumer waiting no step runs, so a stream
cancelled between frames has generated exactly the frames it took, as on the single engine. The
frames a consumer has taken are the ones the segment keeps as context.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agent_runtime.tts.s2pro.serving.codec_batch import BatchedCodecDecoder
from agent_runtime.tts.s2pro.serving.contract import PooledDecoderAPI, PrefillChunk, SlotPhase
from agent_runtime.tts.s2pro.stream_context import MIN_PREFILL_ROWS
from agent_runtime.tts.s2pro.streaming import CodecStreamDecoder

log = logging.getLogger(__name__)
HIST_SAMPLES = 4096  # samples each histogram keeps (the most recent)
# A step waits this long after the previous one for the consumers still to ask for their next
# frame (an async consumer resubmits a moment after its frame), unless all have asked already.
GATHER_S = 0.002
# While slots decode, a prefill chunk waits for the step after the previous chunk at most this long
# (the decoding consumers may not be asking for frames).
STALL_S = 0.05


class SegPhase(enum.Enum):
    """A segment's life on the scheduler: QUEUED -> PREFILLING -> DECODING -> ENDED."""

    QUEUED = "queued"  # waiting for its first prefill chunk
    PREFILLING = "prefilling"
    DECODING = "decoding"
    ENDED = "ended"  # finished, cancelled or closed: no more frames


@dataclass(eq=False)
class PooledSegment:
    """One text segment of a stream on its slot: prompt rows to prefill, then frames.

    `values` (N+1, S) are written at positions [start, start + S); `budget` frames may be
    generated, the frame that ends the segment included. `kept` holds the frame columns (N+1,)
    the consumer took (the context of the next segment)."""

    cancelled: threading.Event  # the stream's: set when it cancels
    slot: int
    values: Tensor
    start: int
    budget: int
    phase: SegPhase = SegPhase.QUEUED
    written: int = 0  # rows of `values` prefilled so far
    chunks: int = 0
    closed: bool = False  # abandoned by its stream (end_segment before the end)
    kept: list[Tensor] = field(default_factory=list)
    created: float = field(default_factory=time.perf_counter)
    first_frame_at: float | None = None
    generator: torch.Generator | None = None  # the slot's noise generator (noise "generator")
    # frames generated ahead of the consumer: (codes, column, generator state before the frame)
    _buffer: collections.deque[tuple[np.ndarray, Tensor, Tensor | None]] = field(default_factory=collections.deque)
    _waiters: collections.deque[Future[Any]] = field(default_factory=collections.deque)

    @property
    def done(self) -> bool:
        return self.phase is SegPhase.ENDED or self.closed

    def next_chunk(self, size: int) -> tuple[Tensor, int, bool]:
        """(values, start, last) of the next prefill chunk: `size` rows at most, never fewer than
        MIN_PREFILL_ROWS (a short tail re-runs rows of the chunk before it)."""
        total = self.values.shape[1]
        a = self.written
        b = min(total, a + size)
        if b == total and b - a < MIN_PREFILL_ROWS:
            a = max(0, b - MIN_PREFILL_ROWS)
        return self.values[:, a:b], self.start + a, b == total


@dataclass
class Histogram:
    """Recent samples of one quantity (seconds or counts) and their count/sum since start."""

    samples: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=HIST_SAMPLES))
    count: int = 0
    total: float = 0.0

    def add(self, v: float) -> None:
        self.samples.append(v)
        self.count += 1
        self.total += v

    def summary(self) -> HistSummary:
        xs = sorted(self.samples)
        if not xs:
            return HistSummary(0, 0.0, 0.0, 0.0, 0.0)

        def q(p: float) -> float:
            return xs[min(len(xs) - 1, max(0, math.ceil(p * len(xs)) - 1))]

        return HistSummary(self.count, self.total / self.count, q(0.5), q(0.95), xs[-1])


@dataclass(frozen=True)
class HistSummary:
    count: int
    mean: float
    p50: float
    p95: float
    max: float


@dataclass(frozen=True)
class SchedulerSnapshot:
    """Queueing figures since start (waits in seconds): `call_wait` a call's time in the queue
    (stream openings included), `prefill_wait` a segment's wait for its first chunk,
    `first_frame` from a segment's start to its first frame, `step` one decoder step,
    `active` decoding slots per step, `codec` one round of codec pushes that decoded chunks
    (`codec_pushes` frames pushed; `codec_rows` stream chunks decoded in `codec_forwards` batched
    forwards); `prefill_chunks` ran in `prefill_forwards` forwards (a round's chunks share one)."""

    rounds: int
    steps: int
    frames: int
    prefill_chunks: int
    segments: int
    cancelled: int
    queued_segments: int
    active_slots: int
    call_wait: HistSummary
    prefill_wait: HistSummary
    first_frame: HistSummary
    step: HistSummary
    active: HistSummary
    codec: HistSummary
    codec_pushes: int
    codec_forwards: int
    codec_rows: int
    prefill_forwards: int = 0  # `prefill_many` calls: `prefill_chunks` / this = chunks per forward


class PoolScheduler:
    """The model thread of a `PooledEngine` (see the module doc for a round)."""

    def __init__(self, decoder: PooledDecoderAPI, threads: int = 0, name: str = "s2pro-pool") -> None:
        self.decoder = decoder
        self.threads = threads
        self.max_batch = decoder.capacity
        self.prefill_chunk = decoder.config.prefill_chunk
        self._name = name
        self._cv = threading.Condition()
        self._calls: collections.deque[tuple[Callable[[], Any], Future[Any], float]] = collections.deque()
        self._codec_jobs: collections.deque[tuple[CodecStreamDecoder, np.ndarray, Future[Any]]] = collections.deque()
        self._codec_batches: dict[int, BatchedCodecDecoder] = {}  # by id(codec) (model thread only)
        self._pending: list[PooledSegment] = []  # added, not yet seen by the model thread
        self._queued: list[PooledSegment] = []  # waiting for prefill chunks (model thread only)
        self._by_slot: dict[int, PooledSegment] = {}  # the slot's current segment (model thread only)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._wake = False
        self._last_step = 0.0
        self._last_chunk = 0.0
        self.rounds = self.steps = self.frames = self.prefill_chunks = self.segments = self.cancelled = 0
        self.codec_pushes = self.prefill_batches = 0
        self._h = {k: Histogram() for k in ("call_wait", "prefill_wait", "first_frame", "step", "active", "codec")}

    # -- any thread --------------------------------------------------------------------------------
    @property
    def on_model_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn()` on the model thread (before the round's prefill and step)."""
        fut: Future[Any] = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("engine is closed")
            self._calls.append((fn, fut, time.perf_counter()))
            self._start()
            self._cv.notify()
        return fut

    def submit_codec(self, decoder: CodecStreamDecoder, codes: np.ndarray) -> Future[list[np.ndarray]]:
        """`decoder.push(codes)` on the model thread (the chunks it completes), batched with the
        other streams' pushes of the round. A decoder's pushes run in the order submitted, and
        before any call submitted after them (so a flush call sees every frame pushed before it)."""
        fut: Future[Any] = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("engine is closed")
            self._codec_jobs.append((decoder, codes, fut))
            self._start()
            self._cv.notify()
        return fut

    def call(self, fn: Callable[[], Any]) -> Any:
        """`fn()` now when on the model thread, else on it (waiting for the result)."""
        return fn() if self.on_model_thread else self.submit(fn).result()

    def add_segment(self, seg: PooledSegment) -> None:
        """Queue `seg` for prefill and decoding (its slot's previous segment must be closed)."""
        with self._cv:
            if self._closed:
                raise RuntimeError("engine is closed")
            self._pending.append(seg)
            self.segments += 1
            self._start()
            self._cv.notify()

    def submit_step(self, seg: PooledSegment) -> Future[np.ndarray | None]:
        """The next kept frame of `seg` (codes int64 (N,)), or None once it has ended."""
        fut: Future[Any] = Future()
        with self._cv:
            if seg.cancelled.is_set() or seg.closed:
                fut.set_result(None)
                self._wake = True
                self._cv.notify()
            elif seg._buffer:
                codes, column, _ = seg._buffer.popleft()
                seg.kept.append(column)
                fut.set_result(codes)
            elif seg.phase is SegPhase.ENDED:
                fut.set_result(None)
            else:
                seg._waiters.append(fut)
                self._cv.notify()
        return fut

    def close_segment(self, seg: PooledSegment) -> None:
        """The stream is done with `seg`: it stops (if running) at the next round."""
        with self._cv:
            seg.closed = True
            waiters = list(seg._waiters)
            seg._waiters.clear()
            self._wake = True
            self._cv.notify()
        for fut in waiters:
            fut.set_result(None)

    def wake(self) -> None:
        """Make the model thread look at cancellations now."""
        with self._cv:
            self._wake = True
            self._cv.notify()

    def close(self, wait: bool = False) -> None:
        """Refuse new work; the thread ends after the queued calls (`wait`: join it)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def reset_stats(self) -> None:
        """Clear the histograms (counters keep counting)."""
        for h in self._h.values():
            h.samples.clear()
            h.count, h.total = 0, 0.0

    def snapshot(self) -> SchedulerSnapshot:
        h = self._h
        batchers = list(self._codec_batches.values())
        with self._cv:
            queued = len(self._pending) + len(self._queued)
        return SchedulerSnapshot(
            self.rounds, self.steps, self.frames, self.prefill_chunks, self.segments, self.cancelled, queued,
            self.decoder.active(),
            *(h[k].summary() for k in ("call_wait", "prefill_wait", "first_frame", "step", "active", "codec")),
            self.codec_pushes, sum(b.forwards for b in batchers), sum(b.rows for b in batchers),
            self.prefill_batches,
        )  # fmt: skip

    # -- the model thread --------------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _ready(self) -> tuple[bool, float | None]:
        """(whether a round has work now, else how long to wait at most; None: until notified).
        Lock held (model thread)."""
        if self._calls or self._codec_jobs or self._pending or self._wake:
            return True, None
        now = time.perf_counter()
        step_ok, step_wait = self._step_due(now)
        chunk_ok, chunk_wait = self._chunk_due(now)
        if step_ok or chunk_ok:
            return True, None
        waits = [w for w in (step_wait, chunk_wait) if w is not None]
        return False, (min(waits) if waits else None)

    def _step_due(self, now: float) -> tuple[bool, float | None]:
        """A step waits for demand: it runs once every decoding segment's consumer has asked for
        its next frame, or GATHER_S after the last step once one has. Lock held."""
        if not self.decoder.active():
            return False, None
        decoding = [s for s in self._by_slot.values() if s.phase is SegPhase.DECODING]
        waiting = [bool(s._waiters) or s.closed or s.cancelled.is_set() for s in decoding]
        if not decoding or all(waiting):
            return True, None
        if not any(waiting):
            return False, None
        left = self._last_step + GATHER_S - now
        return (True, None) if left <= 0 else (False, left)

    def _chunk_due(self, now: float) -> tuple[bool, float | None]:
        """A prefill chunk may run unless one ran since the last step while slots decode (then it
        waits for that step, or STALL_S when their consumers do not ask for frames)."""
        if not any(s.phase in (SegPhase.QUEUED, SegPhase.PREFILLING) for s in self._queued):
            return False, None
        if not self.decoder.active() or self._last_chunk <= self._last_step:
            return True, None
        left = self._last_chunk + STALL_S - now
        return (True, None) if left <= 0 else (False, left)

    def _run(self) -> None:
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        while True:
            with self._cv:
                while not self._closed:
                    ready, wait_s = self._ready()
                    if ready:
                        break
                    self._cv.wait(wait_s)
                if self._closed and not self._calls and not self._codec_jobs:
                    break
                codec_jobs = list(self._codec_jobs)
                self._codec_jobs.clear()
                calls = list(self._calls)
                self._calls.clear()
                self._queued += self._pending
                self._pending.clear()
                self._wake = False
            self._run_codec(codec_jobs)  # before the calls: a flush call comes after its pushes
            for fn, fut, t in calls:
                if fut.set_running_or_notify_cancel():
                    self._h["call_wait"].add(time.perf_counter() - t)
                    _resolve(fut, fn)
            try:
                self._round()
            except BaseException as exc:  # a failed prefill/step: fail the segments involved
                log.exception("s2pro pool: a round failed")
                self._fail_all(exc)
        self._fail_all(RuntimeError("engine is closed"))

    def _run_codec(self, jobs: list[tuple[CodecStreamDecoder, np.ndarray, Future[Any]]]) -> None:
        """The codec pushes in batches: each batch takes the next push of every decoder (in order)."""
        jobs = [job for job in jobs if job[2].set_running_or_notify_cancel()]
        if not jobs:
            return
        started, forwards = time.perf_counter(), self._codec_forwards()
        while jobs:
            batch, later, seen = [], [], set()
            for job in jobs:
                (later if id(job[0]) in seen else batch).append(job)
                seen.add(id(job[0]))
            jobs = later
            by_codec: dict[int, list[tuple[CodecStreamDecoder, np.ndarray, Future[Any]]]] = {}
            for job in batch:
                by_codec.setdefault(id(job[0].codec), []).append(job)
            for group in by_codec.values():
                codec = group[0][0].codec
                batcher = self._codec_batches.get(id(codec))
                if batcher is None:
                    batcher = self._codec_batches[id(codec)] = BatchedCodecDecoder(codec)
                try:
                    chunks = batcher.push_many([(dec, codes) for dec, codes, _ in group])
                except BaseException as exc:  # fail this group's pushes, not the thread
                    for _, _, fut in group:
                        fut.set_exception(exc)
                    continue
                for (_, _, fut), out in zip(group, chunks, strict=True):
                    fut.set_result(out)
                self.codec_pushes += len(group)
        if self._codec_forwards() > forwards:  # rounds that only buffered frames are not timed
            self._h["codec"].add(time.perf_counter() - started)

    def _codec_forwards(self) -> int:
        return sum(b.forwards for b in self._codec_batches.values())

    def _round(self) -> None:
        self.rounds += 1
        now = time.perf_counter()
        self._admit()
        self._stop_finished()
        with self._cv:
            chunk_ok = self._chunk_due(now)[0]
        budget = self.prefill_chunk if chunk_ok else 0
        planned: list[tuple[PooledSegment, PrefillChunk]] = []
        while budget >= MIN_PREFILL_ROWS and (seg := self._pick_prefill([s for s, _ in planned])) is not None:
            values, start, last = seg.next_chunk(budget)
            planned.append((seg, PrefillChunk(seg.slot, values, start, last)))
            budget -= values.shape[1]
        if planned:
            self._run_prefills(planned, now)
            self._last_chunk = time.perf_counter()
        with self._cv:
            step_ok = self._step_due(time.perf_counter())[0]
        if step_ok:
            ahead = self._ahead_states()
            t = time.perf_counter()
            frames = self.decoder.step()
            self._last_step = time.perf_counter()
            dt = self._last_step - t
            self.steps += 1
            self._h["step"].add(dt)
            self._h["active"].add(len(frames))
            self._deliver(frames, ahead)

    def _admit(self) -> None:
        """Queued segments become their slot's current one (the previous one is stopped)."""
        for seg in self._queued:
            old = self._by_slot.get(seg.slot)
            if old is not seg:
                if old is not None:
                    self._stop(old)
                self._by_slot[seg.slot] = seg

    def _stop_finished(self) -> None:
        """Stop segments whose stream cancelled or closed them."""
        for seg in list(self._by_slot.values()):
            if (seg.closed or seg.cancelled.is_set()) and (seg.phase is not SegPhase.ENDED or seg._buffer):
                self._stop(seg)

    def _stop(self, seg: PooledSegment) -> None:
        """End `seg` now (idempotent). Frames generated ahead and never taken are dropped, and
        the slot's generator goes back to its state before the first of them, so the stream's
        randomness is as if they had never been generated (as on the single-stream engine)."""
        if seg.phase is not SegPhase.ENDED:
            if self.decoder.phase(seg.slot) in (SlotPhase.PREFILLING, SlotPhase.DECODING):
                self.decoder.stop_segment(seg.slot)
            if seg in self._queued:
                self._queued.remove(seg)
            self.cancelled += seg.cancelled.is_set()
        with self._cv:
            state = seg._buffer[0][2] if seg._buffer else None
            seg._buffer.clear()
        if state is not None and seg.generator is not None:
            seg.generator.set_state(state)
        self._end(seg)

    def _end(self, seg: PooledSegment) -> None:
        with self._cv:
            seg.phase = SegPhase.ENDED
            waiters = list(seg._waiters)
            seg._waiters.clear()
        for fut in waiters:
            fut.set_result(None)

    def _pick_prefill(self, planned: list[PooledSegment]) -> PooledSegment | None:
        """The first chunk of the longest-waiting new segment, else the oldest one's next chunk
        (segments already `planned` for this round's prefill left out)."""
        live = [s for s in self._queued if s.phase in (SegPhase.QUEUED, SegPhase.PREFILLING) and s not in planned]
        fresh = [s for s in live if s.chunks == 0]
        return (fresh or live or [None])[0]

    def _run_prefills(self, planned: list[tuple[PooledSegment, PrefillChunk]], now: float) -> None:
        """This round's prefill chunks (of different segments' slots) in one `prefill_many`."""
        for seg, _ in planned:
            if seg.chunks == 0:
                self._h["prefill_wait"].add(now - seg.created)
        self.decoder.prefill_many([chunk for _, chunk in planned])
        self.prefill_batches += 1
        for seg, chunk in planned:
            seg.written = chunk.start - seg.start + chunk.values.shape[1]
            seg.chunks += 1
            self.prefill_chunks += 1
            seg.phase = SegPhase.PREFILLING
            if chunk.last:
                self.decoder.begin_segment(seg.slot, seg.budget)
                seg.phase = SegPhase.DECODING
                self._queued.remove(seg)

    def _ahead_states(self) -> dict[int, Tensor]:
        """Generator states of the decoding slots whose next frame nobody waits for yet."""
        with self._cv:
            segs = [s for s in self._by_slot.values() if s.phase is SegPhase.DECODING and not s._waiters]
        return {s.slot: s.generator.get_state() for s in segs if s.generator is not None}

    def _deliver(self, frames: list[Any], ahead: dict[int, Tensor]) -> None:
        """Hand a step's frames to their segments: to a waiting consumer, else to the segment's
        buffer; segments whose frame ended them end. One lock for the whole step; the futures are
        resolved after it (their callbacks run consumers' code)."""
        now = time.perf_counter()
        ready: list[tuple[Future[Any], np.ndarray]] = []
        ended: list[PooledSegment] = []
        with self._cv:
            for f in frames:
                seg = self._by_slot.get(f.slot)
                if seg is None or seg.phase is not SegPhase.DECODING:
                    continue
                if f.codes is None:
                    ended.append(seg)
                    continue
                self.frames += 1
                if seg.first_frame_at is None:
                    seg.first_frame_at = now
                    self._h["first_frame"].add(now - seg.created)
                if seg.closed:
                    continue
                codes = np.asarray(f.codes, dtype=np.int64)
                column = f.frame if f.frame.device.type == "cpu" else f.frame.cpu()
                if seg._waiters:
                    ready.append((seg._waiters.popleft(), codes))
                    seg.kept.append(column)
                else:
                    seg._buffer.append((codes, column, ahead.get(f.slot)))
        for seg in ended:
            self._end(seg)
        for fut, codes in ready:
            fut.set_result(codes)

    def forget_slot(self, slot: int) -> None:
        """Model thread: the slot is being left; stop and drop its segments."""
        for seg in [s for s in self._queued if s.slot == slot]:
            self._stop(seg)
        seg = self._by_slot.pop(slot, None)
        if seg is not None and seg.phase is not SegPhase.ENDED:
            self._stop(seg)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cv:
            segs = list(self._by_slot.values()) + self._queued + self._pending
            calls = list(self._calls)
            self._calls.clear()
            codec_jobs = list(self._codec_jobs)
            self._codec_jobs.clear()
        for _, _, fut in codec_jobs:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(exc)
        for seg in segs:
            with self._cv:
                seg.phase = SegPhase.ENDED
                waiters = list(seg._waiters)
                seg._waiters.clear()
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
        for _, fut, _ in calls:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(exc)
        if not self._closed:  # recover: the decoder's slots keep their state; streams may retry
            for seg in segs:
                if seg.slot in self._by_slot and self.decoder.phase(seg.slot) in (SlotPhase.PREFILLING, SlotPhase.DECODING):
                    try:
                        self.decoder.stop_segment(seg.slot)
                    except Exception:
                        log.exception("s2pro pool: could not stop slot %d", seg.slot)
            self._queued.clear()


def _resolve(fut: Future[Any], fn: Callable[[], Any]) -> None:
    try:
        fut.set_result(fn())
    except BaseException as exc:
        fut.set_exception(exc)
