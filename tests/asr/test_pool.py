"""The recognizer's lane pool: concurrent calls up to `concurrency`, FIFO queueing, waits recorded,
cancellation that never frees a lane under a running decode, and the `asr.workers` config key.

The stand-in recognizers block on events and barriers, so every assertion is about order and
overlap, never about absolute time."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from agent_runtime.asr.base import Recognizer, Transcript
from agent_runtime.asr.lanes import LanePool
from agent_runtime.config import load_config
from agent_runtime.errors import ConfigError

AUDIO = np.zeros(1600, dtype=np.float32)


class Recording(Recognizer):
    """Counts how many `transcribe` calls run at once; each waits for `gate` (set: no wait)."""

    def __init__(self, concurrency: int) -> None:
        super().__init__()
        self.concurrency = concurrency
        self.gate = threading.Event()
        self.gate.set()
        self.active = 0
        self.max_active = 0
        self.started = 0
        self._count = threading.Lock()

    def transcribe(self, audio: np.ndarray) -> Transcript:
        with self._count:
            self.active += 1
            self.started += 1
            self.max_active = max(self.max_active, self.active)
        try:
            assert self.gate.wait(30), "test gate never opened"
            return Transcript(f"call {self.started}", len(audio) / self.sample_rate)
        finally:
            with self._count:
                self.active -= 1


async def _until(condition, what: str) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def test_pool_of_two_serves_two_calls_at_once() -> None:
    rec = Recording(concurrency=2)
    rec.gate.clear()
    calls = [asyncio.create_task(rec.atranscribe(AUDIO)) for _ in range(2)]
    await _until(lambda: rec.active == 2, "both calls decoding")  # neither queued behind the other
    assert rec.lanes.busy == 2 and rec.lanes.waiting == 0
    rec.gate.set()
    results = await asyncio.gather(*calls)
    assert rec.max_active == 2
    assert all(not r.is_empty for r in results)


async def test_third_call_queues_and_its_wait_is_recorded() -> None:
    rec = Recording(concurrency=2)
    waits: list[float] = []
    rec.lanes.add_listener(waits.append)
    rec.gate.clear()
    calls = [asyncio.create_task(rec.atranscribe(AUDIO)) for _ in range(3)]
    await _until(lambda: rec.active == 2 and rec.lanes.waiting == 1, "two decoding, one queued")
    assert rec.started == 2  # the third has not reached the model
    rec.gate.set()
    results = await asyncio.gather(*calls)
    assert rec.max_active == 2 and rec.started == 3
    assert len(waits) == 3 and rec.lanes.jobs == 3
    assert results[2].wait_seconds > 0  # it queued until a lane was free
    assert results[2].wait_seconds == max(waits)
    assert rec.lanes.waiting == 0 and rec.lanes.busy == 0


async def test_single_lane_serialises_in_arrival_order() -> None:
    rec = Recording(concurrency=1)
    order: list[int] = []

    async def call(i: int) -> None:
        await rec.atranscribe(AUDIO)
        order.append(i)

    rec.gate.clear()
    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(call(i)))
        await asyncio.sleep(0)  # each enters the queue before the next
    await _until(lambda: rec.lanes.waiting == 3, "three queued")
    rec.gate.set()
    await asyncio.gather(*tasks)
    assert rec.max_active == 1 and order == [0, 1, 2, 3]


async def test_a_cancelled_decode_keeps_its_lane_until_the_model_is_free() -> None:
    rec = Recording(concurrency=1)
    rec.gate.clear()
    first = asyncio.create_task(rec.atranscribe(AUDIO))
    await _until(lambda: rec.active == 1, "first decoding")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.create_task(rec.atranscribe(AUDIO))
    await _until(lambda: rec.lanes.waiting == 1, "second queued")
    assert rec.started == 1 and rec.lanes.busy == 1  # the cancelled decode still holds the model
    rec.gate.set()
    assert not (await second).is_empty
    assert rec.max_active == 1 and rec.lanes.busy == 0


async def test_a_call_cancelled_while_queued_leaks_no_lane() -> None:
    rec = Recording(concurrency=1)
    rec.gate.clear()
    running = asyncio.create_task(rec.atranscribe(AUDIO))
    await _until(lambda: rec.active == 1, "first decoding")
    queued = asyncio.create_task(rec.atranscribe(AUDIO))
    await _until(lambda: rec.lanes.waiting == 1, "second queued")
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert rec.lanes.waiting == 0
    rec.gate.set()
    await running
    assert rec.lanes.busy == 0 and rec.started == 1
    await rec.atranscribe(AUDIO)  # the lane came back
    assert rec.started == 2


async def test_a_failing_decode_frees_its_lane() -> None:
    class Failing(Recognizer):
        def transcribe(self, audio: np.ndarray) -> Transcript:
            raise RuntimeError("model exploded")

    rec = Failing()
    for _ in range(2):
        with pytest.raises(RuntimeError, match="exploded"):
            await rec.atranscribe(AUDIO)
    assert rec.lanes.busy == 0


def test_lanes_are_shared_across_event_loops() -> None:
    rec = Recording(concurrency=1)
    for _ in range(2):  # a model loaded once, used from one loop after another (tests, bench runs)
        assert asyncio.run(rec.atranscribe(AUDIO)).text
    assert rec.lanes.jobs == 2 and rec.lanes.busy == 0


def test_lane_pool_needs_a_lane() -> None:
    with pytest.raises(ValueError, match="at least one lane"):
        LanePool(0)


def test_asr_wait_is_a_server_metric() -> None:
    from agent_runtime.server.metrics import ServerMetrics

    metrics = ServerMetrics()
    rec = Recording(concurrency=1)
    rec.lanes.add_listener(metrics.asr_wait.observe)
    asyncio.run(rec.atranscribe(AUDIO))
    text = metrics.render()
    assert "# TYPE agent_asr_wait_seconds histogram" in text
    assert "agent_asr_wait_seconds_count 1" in text
    assert "agent_asr_queued " in text and "agent_asr_busy_workers " in text


# -- config ------------------------------------------------------------------------------------
def test_asr_workers_default_and_override(tmp_path: Path) -> None:
    assert load_config().asr.workers == 1
    p = tmp_path / "c.yaml"
    p.write_text("asr:\n  workers: 4\n  cpu_threads: 1\n")
    assert load_config(p).asr.workers == 4


@pytest.mark.parametrize("value", ["0", "-1", "two", "65", "1.5"])
def test_asr_workers_rejects_bad_values_in_one_line(tmp_path: Path, value: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(f"asr:\n  workers: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "asr.workers" in str(err.value) and "\n" not in str(err.value)


def test_whisper_rejects_zero_workers_before_loading() -> None:
    from agent_runtime.asr.whisper import WhisperRecognizer

    with pytest.raises(ConfigError, match="num_workers"):
        WhisperRecognizer("tiny.en", num_workers=0)


# -- real Whisper ------------------------------------------------------------------------------
def test_whisper_with_two_workers_transcribes_two_calls_at_once(speech) -> None:
    from agent_runtime.asr.whisper import WhisperRecognizer

    class Overlapping(WhisperRecognizer):
        """Both decodes must be inside `transcribe` together before either runs the model."""

        together = threading.Barrier(2, timeout=60)

        def transcribe(self, audio: np.ndarray) -> Transcript:
            self.together.wait()  # BrokenBarrierError if the pool ran them one after the other
            return super().transcribe(audio)

    rec = Overlapping("tiny.en", num_workers=2, cpu_threads=1)
    assert rec.concurrency == 2

    async def both() -> list[Transcript]:
        return await asyncio.gather(
            rec.atranscribe(speech("What time do you open tomorrow?")),
            rec.atranscribe(speech("Do you deliver on weekends?")),
        )

    first, second = asyncio.run(both())
    assert "open tomorrow" in first.text.lower()
    assert "weekends" in second.text.lower()
    assert rec.lanes.jobs == 2


# -- the benchmark's plumbing (no model: the stand-in recognizer) -------------------------------
def test_bench_level_and_table() -> None:
    from agent_runtime.bench.asr_pool import format_table, run_level, summarize

    rec = Recording(concurrency=1)
    audio = [np.zeros(160, dtype=np.float32)]  # 10 ms "lines"
    samples = asyncio.run(run_level(rec, audio, calls=3, turns=2, gap_s=0.0, seed=1))
    assert len(samples) == 6 and rec.max_active == 1
    summary = summarize(3, samples)
    assert summary["transcripts"] == 6 and summary["empty"] == 0
    assert summary["wait_p99_ms"] <= summary["latency_p99_ms"] + 1e-6
    out = {
        "model": "stand-in", "turns_per_call": 2, "rounds": 1, "gap_s": 0.0, "levels": [3],
        "sides": {"before": {"shape": "1 worker x 2 threads"}, "after": {"shape": "2 workers x 1 threads"}},
        "results": {"before": {"3": summary}, "after": {"3": summary}},
    }
    table = format_table(out, "test machine")
    assert "wait p50" in table and "ratio" in table and "2 workers x 1 threads" in table
