"""Scheduling policy of `PoolScheduler` on a small deterministic fake decoder (no model)."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
import torch

from agent_runtime.tts.s2pro.serving.contract import (
    PoolConfig,
    PoolFull,
    SlotFrame,
    SlotPhase,
    SlotSampling,
    StepTimes,
)
from agent_runtime.tts.s2pro.serving.scheduler import PooledSegment, PoolScheduler, SegPhase


class FakeDecoder:
    """The contract's state machine; frame k of a slot's segment has codes [slot, k, k, k]; logs calls."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.times = StepTimes()
        self.phases = [SlotPhase.FREE] * config.max_streams
        self.length = [0] * config.max_streams
        self.index = [0] * config.max_streams
        self.budget = [0] * config.max_streams
        self.log: list[tuple] = []
        self.step_delay = 0.0

    @property
    def capacity(self) -> int:
        return self.config.max_streams

    def free_slots(self) -> int:
        return self.phases.count(SlotPhase.FREE)

    def phase(self, slot: int) -> SlotPhase:
        return self.phases[slot]

    def join(self, sampling: SlotSampling) -> int:
        if SlotPhase.FREE not in self.phases:
            raise PoolFull("full")
        slot = self.phases.index(SlotPhase.FREE)
        self.phases[slot] = SlotPhase.IDLE
        self.length[slot] = 0
        self.log.append(("join", slot))
        return slot

    def load_prefix(self, slot: int, kv, length: int) -> None:
        self.length[slot] = length

    def prefill(self, slot: int, values, start: int, *, last: bool) -> None:
        assert self.phases[slot] in (SlotPhase.IDLE, SlotPhase.PREFILLING)
        assert start <= self.length[slot]
        self.length[slot] = start + values.shape[1]
        self.phases[slot] = SlotPhase.PREFILLING
        self.log.append(("prefill", slot, start, values.shape[1], last))

    def prefill_many(self, chunks) -> None:
        self.log.append(("prefill_many", len(chunks)))
        for c in chunks:
            self.prefill(c.slot, c.values, c.start, last=c.last)

    def begin_segment(self, slot: int, max_frames: int) -> None:
        assert self.phases[slot] is SlotPhase.PREFILLING
        self.phases[slot] = SlotPhase.DECODING
        self.index[slot] = 0
        self.budget[slot] = max_frames

    def active(self) -> int:
        return self.phases.count(SlotPhase.DECODING)

    def step(self) -> list[SlotFrame]:
        if self.step_delay:
            time.sleep(self.step_delay)
        out = []
        slots = [s for s, p in enumerate(self.phases) if p is SlotPhase.DECODING]
        self.log.append(("step", tuple(slots)))
        for s in slots:
            k = self.index[s]
            self.index[s] += 1
            frame = torch.tensor([100 + k, s, k, k, k])
            if self.index[s] >= self.budget[s]:
                self.phases[s] = SlotPhase.IDLE
                out.append(SlotFrame(s, 100 + k, None, frame))
            else:
                self.length[s] += 1
                out.append(SlotFrame(s, 100 + k, frame[1:].numpy(), frame))
        return out

    def stop_segment(self, slot: int) -> None:
        self.phases[slot] = SlotPhase.IDLE
        self.log.append(("stop", slot))

    def context_length(self, slot: int) -> int:
        return self.length[slot]

    def leave(self, slot: int) -> None:
        self.phases[slot] = SlotPhase.FREE
        self.log.append(("leave", slot))


def _setup(max_streams: int = 4, chunk: int = 16) -> tuple[FakeDecoder, PoolScheduler]:
    dec = FakeDecoder(PoolConfig(max_streams=max_streams, max_len=4096, prefill_chunk=chunk, graphs=False))
    return dec, PoolScheduler(dec)


def _segment(sched: PoolScheduler, slot_of: list[int], rows: int, budget: int) -> PooledSegment:
    slot = sched.call(lambda: sched.decoder.join(SlotSampling(None, 0)))  # type: ignore[arg-type]
    slot_of.append(slot)
    return PooledSegment(threading.Event(), slot, torch.zeros((5, rows), dtype=torch.long), 0, budget)


def _drain(sched: PoolScheduler, seg: PooledSegment) -> list[np.ndarray]:
    out = []
    while (f := sched.submit_step(seg).result(timeout=10)) is not None:
        out.append(f)
    return out


def test_frames_in_order_and_segment_end() -> None:
    dec, sched = _setup()
    slots: list[int] = []
    seg = _segment(sched, slots, rows=20, budget=6)
    sched.add_segment(seg)
    frames = _drain(sched, seg)
    assert [int(f[1]) for f in frames] == [0, 1, 2, 3, 4]  # budget 6: the 6th frame ends it, not kept
    assert len(seg.kept) == 5 and seg.phase is SegPhase.ENDED
    # chunks of 16 with a short tail: the tail re-runs rows so every chunk has >= 16 rows
    prefills = [e for e in dec.log if e[0] == "prefill"]
    assert prefills == [("prefill", slots[0], 0, 16, False), ("prefill", slots[0], 4, 16, True)]
    snap = sched.snapshot()
    assert snap.frames == 5 and snap.prefill_chunks == 2 and snap.first_frame.count == 1
    sched.close(wait=True)


def test_long_prefill_interleaves_with_steps_and_new_call_goes_first() -> None:
    """While A decodes, B's long prompt (10 chunks) runs one chunk per step; C, arriving later,
    gets its first chunk before B's remaining ones, and its first frame long before B's."""
    dec, sched = _setup(chunk=16)
    dec.step_delay = 0.002
    slots: list[int] = []
    a = _segment(sched, slots, rows=16, budget=100_000)
    sched.add_segment(a)
    assert sched.submit_step(a).result(timeout=10) is not None  # A decodes, its consumer always waiting
    consumer = threading.Thread(target=_drain, args=(sched, a))
    consumer.start()
    b = _segment(sched, slots, rows=160, budget=5)
    c = _segment(sched, slots, rows=16, budget=5)
    sched.add_segment(b)
    got_b = sched.submit_step(b)
    deadline = time.monotonic() + 10
    while b.chunks < 1 and time.monotonic() < deadline:
        time.sleep(0.0005)
    sched.add_segment(c)  # B has 9 chunks to go
    got_c = sched.submit_step(c)
    assert got_c.result(timeout=10) is not None and got_b.result(timeout=10) is not None
    a.cancelled.set()
    sched.wake()
    consumer.join()
    _drain(sched, b), _drain(sched, c)
    sched.close(wait=True)
    events = [e for e in dec.log if e[0] in ("prefill", "step")]
    # never two prefill chunks in a row while A decodes
    for e1, e2 in itertools.pairwise(events):
        assert not (e1[0] == "prefill" and e2[0] == "prefill"), events
    c_first = next(i for i, e in enumerate(events) if e[0] == "prefill" and e[1] == slots[2])
    b_last = max(i for i, e in enumerate(events) if e[0] == "prefill" and e[1] == slots[1])
    assert c_first < b_last  # C's chunk did not wait for all of B's
    assert c.first_frame_at is not None and b.first_frame_at is not None
    assert c.first_frame_at < b.first_frame_at  # C's first audio is not behind B's long prefill


def test_a_rounds_prefill_chunks_share_one_forward() -> None:
    """Four short prompts queued while the model thread is busy go to the decoder as one
    `prefill_many` (the weights read once for all), within the round's prefill budget."""
    dec, sched = _setup(chunk=64)
    slots: list[int] = []
    segs = [_segment(sched, slots, rows=16, budget=3) for _ in range(4)]
    busy = sched.submit(lambda: time.sleep(0.3))
    for seg in segs:
        sched.add_segment(seg)
    busy.result(timeout=10)
    for seg in segs:
        assert len(_drain(sched, seg)) == 2
    sched.close(wait=True)
    assert [e for e in dec.log if e[0] == "prefill_many"] == [("prefill_many", 4)]
    snap = sched.snapshot()
    assert snap.prefill_chunks == 4 and snap.prefill_forwards == 1


def test_pool_full_cancel_and_slot_reuse() -> None:
    dec, sched = _setup(max_streams=2)
    slots: list[int] = []
    a = _segment(sched, slots, rows=16, budget=1000)
    b = _segment(sched, slots, rows=16, budget=4)
    with pytest.raises(PoolFull):
        sched.call(lambda: dec.join(SlotSampling(None, 0)))  # type: ignore[arg-type]
    sched.add_segment(a)
    sched.add_segment(b)
    for _ in range(3):
        assert sched.submit_step(a).result(timeout=10) is not None
    a.cancelled.set()
    assert sched.submit_step(a).result(timeout=10) is None  # cancelled: no more frames
    assert len(a.kept) == 3  # the frames taken, not the ones generated ahead
    assert len(_drain(sched, b)) == 3
    sched.call(lambda: sched.forget_slot(slots[0]))
    sched.call(lambda: dec.leave(slots[0]))
    d = _segment(sched, slots, rows=16, budget=3)
    assert slots[2] == slots[0]  # the cancelled call's slot is reused
    sched.add_segment(d)
    assert [int(f[0]) for f in _drain(sched, d)] == [slots[0]] * 2
    assert ("stop", slots[0]) in dec.log and sched.snapshot().cancelled == 1
    sched.close(wait=True)


def test_close_segment_stops_a_running_segment() -> None:
    dec, sched = _setup()
    slots: list[int] = []
    a = _segment(sched, slots, rows=16, budget=10_000)
    sched.add_segment(a)
    assert sched.submit_step(a).result(timeout=10) is not None
    sched.close_segment(a)
    assert sched.submit_step(a).result(timeout=10) is None
    sched.call(lambda: None)  # one more round
    deadline = time.monotonic() + 5
    while dec.active() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert dec.active() == 0 and dec.phase(slots[0]) is SlotPhase.IDLE
    sched.close(wait=True)
