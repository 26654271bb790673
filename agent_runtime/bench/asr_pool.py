"""`agent-runtime bench asr-pool`: how long a call's transcript queues behind the other calls' ones.

N simulated calls share one Whisper tiny.en recognizer, as the calls of one server process do. Each
call speaks a caller line (waits the line's duration), asks for its transcript through
`Recognizer.atranscribe` (the path a session uses), then waits `gap_s` (the agent's reply) before
its next line. Calls start at random offsets within one such cycle (seeded), so arrivals overlap
the way independent callers' do.

The same calls run twice per concurrency level in one process, the order alternating by level:
"before" is one lane (`asr.workers: 1`, the old process-wide lock) with all the CPU threads, "after"
is the pool (`asr.workers: W`, the same threads shared out). Figures: ASR wait (queued for a lane)
and transcript latency (request to text = wait + decode), p50 and p99.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import numpy as np

from agent_runtime.asr.base import Recognizer

__all__ = ["CALLER_LINES", "Side", "format_table", "run_asr_pool"]

log = logging.getLogger("agent_runtime.bench")

CALLER_LINES = [
    "What time do you open tomorrow?",
    "Can you tell me about your return policy?",
    "Do you deliver on weekends?",
    "How much does delivery cost?",
]


@dataclass(frozen=True, slots=True)
class Side:
    """One recognizer configuration under test."""

    name: str
    workers: int
    cpu_threads: int

    @property
    def shape(self) -> str:
        return f"{self.workers} worker{'s' if self.workers > 1 else ''} x {self.cpu_threads} threads"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.shape})"


async def caller_audio(lines: list[str]) -> list[np.ndarray]:
    """The caller lines spoken by piper (deterministic), float32 mono at 16 kHz."""
    from agent_runtime.audio.resample import resample
    from agent_runtime.tts.piper_engine import PiperSynthesizer

    def speak() -> list[np.ndarray]:
        piper = PiperSynthesizer(noise_scale=0.0, noise_w_scale=0.0)
        pad = np.zeros(int(0.2 * piper.sample_rate), dtype=np.float32)
        return [
            resample(np.concatenate([pad, piper.synthesize_text(t), pad]), piper.sample_rate, 16_000)
            for t in lines
        ]

    return await asyncio.to_thread(speak)


async def _call(rec: Recognizer, audio: list[np.ndarray], first: int, turns: int, start_s: float,
                gap_s: float, samples: list[tuple[float, float, str]]) -> None:
    await asyncio.sleep(start_s)
    for t in range(turns):
        clip = audio[(first + t) % len(audio)]
        await asyncio.sleep(len(clip) / 16_000)  # the caller says the line
        asked = time.monotonic()
        transcript = await rec.atranscribe(clip)
        samples.append((transcript.wait_seconds, time.monotonic() - asked, transcript.text))
        await asyncio.sleep(gap_s)  # the agent answers


async def run_level(rec: Recognizer, audio: list[np.ndarray], calls: int, turns: int, gap_s: float,
                    seed: int) -> list[tuple[float, float, str]]:
    """`calls` concurrent calls of `turns` turns each on `rec`: (wait s, latency s, text) per transcript."""
    rng = random.Random(seed)
    cycle = float(np.mean([len(a) for a in audio])) / 16_000 + gap_s
    samples: list[tuple[float, float, str]] = []
    async with asyncio.TaskGroup() as tg:
        for c in range(calls):
            start = 0.0 if calls == 1 else rng.uniform(0, cycle)
            tg.create_task(_call(rec, audio, c, turns, start, gap_s, samples))
    return samples


def summarize(calls: int, samples: list[tuple[float, float, str]]) -> dict[str, float]:
    """Wait and transcript latency percentiles (ms) of one level's samples."""
    waits = np.array([s[0] for s in samples]) * 1000
    latency = np.array([s[1] for s in samples]) * 1000
    return {
        "calls": calls,
        "transcripts": len(samples),
        "empty": sum(not s[2].strip() for s in samples),
        "wait_p50_ms": float(np.percentile(waits, 50)),
        "wait_p99_ms": float(np.percentile(waits, 99)),
        "latency_p50_ms": float(np.percentile(latency, 50)),
        "latency_p99_ms": float(np.percentile(latency, 99)),
    }


async def run_asr_pool(levels: list[int], *, workers: int, threads: int, turns: int = 3, gap_s: float = 2.0,
                       rounds: int = 2, worker_threads: int | None = None, model: str = "tiny.en") -> dict:
    """Both sides at every level in one run (see the module docstring). The pool's workers get
    `worker_threads` threads each (default: `threads` shared out)."""
    from agent_runtime.asr.whisper import WhisperRecognizer

    sides = [Side("before", 1, threads), Side("after", workers, worker_threads or max(1, threads // workers))]
    audio = await caller_audio(CALLER_LINES)
    recognizers: dict[str, Recognizer] = {}
    for side in sides:
        log.info("loading whisper %s for %s", model, side.label)
        rec = await asyncio.to_thread(
            WhisperRecognizer, model, cpu_threads=side.cpu_threads, num_workers=side.workers
        )
        await asyncio.to_thread(rec.warmup)
        recognizers[side.name] = rec
    results: dict[str, dict[str, dict[str, float]]] = {s.name: {} for s in sides}
    for calls in levels:
        samples: dict[str, list[tuple[float, float, str]]] = {s.name: [] for s in sides}
        for r in range(rounds):
            order = sides if r % 2 == 0 else sides[::-1]  # neither side always runs first
            for side in order:
                log.info("%s: %d concurrent call(s) x %d turns, round %d/%d (real time)",
                         side.label, calls, turns, r + 1, rounds)
                samples[side.name] += await run_level(
                    recognizers[side.name], audio, calls, turns, gap_s, seed=calls * 1000 + r
                )
        for side in sides:
            results[side.name][str(calls)] = summarize(calls, samples[side.name])
    return {
        "model": model,
        "turns_per_call": turns,
        "rounds": rounds,
        "gap_s": gap_s,
        "sides": {s.name: {"workers": s.workers, "cpu_threads": s.cpu_threads, "shape": s.shape} for s in sides},
        "levels": levels,
        "results": results,
    }


def _ratio(after: float, before: float) -> str:
    if before < 1.0:  # under a millisecond on both sides: nothing queued, a ratio means nothing
        return "-"
    return f"{after / before:.2f}x"


def format_table(out: dict, machine: str) -> str:
    sides = out["sides"]
    lines = [
        f"ASR for many calls: whisper {out['model']} on {machine}",
        f"  {out['turns_per_call']} turns per call x {out['rounds']} rounds, {out['gap_s']:.1f} s agent reply "
        "between turns; "
        f"before = {sides['before']['shape']} (asr.workers: 1), after = {sides['after']['shape']} (the pool)",
        f"  {'calls':>5}  {'side':<7} {'wait p50':>9} {'wait p99':>9} {'transcript p50':>15} {'p99':>8} {'n':>4} {'empty':>5}",
    ]
    for calls in out["levels"]:
        rows = {name: out["results"][name][str(calls)] for name in ("before", "after")}
        for name, r in rows.items():
            lines.append(
                f"  {calls:>5}  {name:<7} {r['wait_p50_ms']:>6.0f} ms {r['wait_p99_ms']:>6.0f} ms "
                f"{r['latency_p50_ms']:>12.0f} ms {r['latency_p99_ms']:>5.0f} ms {r['transcripts']:>4} {r['empty']:>5}"
            )
        b, a = rows["before"], rows["after"]
        lines.append(
            f"  {'':>5}  {'ratio':<7} {_ratio(a['wait_p50_ms'], b['wait_p50_ms']):>9} "
            f"{_ratio(a['wait_p99_ms'], b['wait_p99_ms']):>9} "
            f"{_ratio(a['latency_p50_ms'], b['latency_p50_ms']):>15} {_ratio(a['latency_p99_ms'], b['latency_p99_ms']):>8}"
        )
    lines.append("  (ratio = after / before; wait = queued for a free ASR worker; transcript = request to text)")
    return "\n".join(lines)
