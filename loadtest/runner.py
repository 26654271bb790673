"""The schedule: warm-up calls, then concurrency levels held by workers that call back to back.

Worker i runs calls while the current level's concurrency is above i. Every loop is bounded: by the
level plan's end, `limits.max_duration_s` (a hard timeout around the whole run), `limits.max_calls`,
and each call by `limits.call_timeout_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loadtest.analysis import analyze_call, call_summary
from loadtest.callers import make_leg
from loadtest.monitor import ProcSampler, scrape
from loadtest.scenario import Scenario
from loadtest.script import CallRecord, run_script

log = logging.getLogger("loadtest")


@dataclass
class RunResult:
    t0: float
    levels: list[dict[str, Any]]  # concurrency, start, end (s from t0), metrics scrapes
    calls: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    warmup: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: str = ""


class Runner:
    """Runs one scenario against `base_url`; `pid` (optional) is the server process to watch."""

    def __init__(
        self,
        scenario: Scenario,
        base_url: str,
        audio: list[np.ndarray | None],
        *,
        pid: int | None = None,
        progress: Callable[[float, str], None] | None = None,
    ) -> None:
        self.s = scenario
        self.url = base_url
        self.audio = audio
        self.pid = pid
        self.progress = progress or (lambda _f, _msg: None)
        self.plan = scenario.load.plan()
        self.in_flight = 0
        self.started_calls = 0
        self._level = -1
        self._sampler: ProcSampler | None = None

    def planned_seconds(self) -> float:
        return sum(d for _, d in self.plan)

    async def _one_call(self, caller: int, res: RunResult) -> CallRecord:
        self.started_calls += 1
        rec = CallRecord(caller, self.started_calls, "", time.monotonic())
        leg = make_leg(self.s.transport, caller)
        rec.transport = leg.kind
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.s.limits.call_timeout_s):
                await run_script(leg, rec, self.url, self.s, self.audio)
        except TimeoutError:
            rec.status, rec.error = "timeout", f"call took over {self.s.limits.call_timeout_s:.0f} s"
        except Exception as exc:  # a harness bug must not stop the other callers
            rec.status, rec.error = "failed", f"{type(exc).__name__}: {exc}"[:300]
            log.exception("call %d failed in the harness", rec.number)
        finally:
            self.in_flight -= 1
        return rec

    def _collect(self, rec: CallRecord, res: RunResult, level: int, into_warmup: bool = False) -> None:
        summary = call_summary(rec, res.t0)
        summary["level"] = level
        samples = analyze_call(rec, self.s.measure, res.t0)
        for smp in samples:
            smp["level"] = self._level_at(smp["t"], res)
        rec.leg = None  # drop per-frame data
        if into_warmup:
            res.warmup.append({**summary, "samples": samples})
        else:
            res.calls.append(summary)
            res.samples.extend(samples)

    def _level_at(self, t: float, res: RunResult) -> int:
        for i, lv in enumerate(res.levels):
            if lv["start"] <= t < lv["end"]:
                return i
        return max(0, min(len(res.levels) - 1, self._level))

    async def _worker(self, i: int, res: RunResult, plan_end: float) -> None:
        lim = self.s.limits
        while time.monotonic() < plan_end and self.started_calls < lim.max_calls:
            lv = self._level
            if lv < 0 or self.plan[lv][0] <= i:
                await asyncio.sleep(0.05)
                continue
            rec = await self._one_call(i, res)
            self._collect(rec, res, lv)
            if rec.status == "failed":
                await asyncio.sleep(0.5)  # refused (busy): do not hammer the server

    async def run(self) -> RunResult:
        res = RunResult(time.monotonic(), [])
        sampler = self._sampler = None
        if self.pid is not None:
            sampler = self._sampler = ProcSampler(self.pid, self.s.measure.sample_interval_s, res.t0,
                                  extra=lambda: {"active_calls": self.in_flight, "level": self._level})
            sampler.start()
        try:
            async with asyncio.timeout(self.s.limits.max_duration_s):
                await self._run(res)
        except TimeoutError:
            res.stopped_early = f"limits.max_duration_s ({self.s.limits.max_duration_s:.0f} s) reached"
        finally:
            if sampler is not None:
                await sampler.stop()
                res.resources = sampler.samples
        return res

    async def _run(self, res: RunResult) -> None:
        for w in range(self.s.limits.warmup_calls):
            self.progress(0.0, f"warm-up call {w + 1}")
            rec = await self._one_call(0, res)
            self._collect(rec, res, -1, into_warmup=True)
        self.started_calls = 0
        res.t0 = t0 = time.monotonic()
        if self._sampler is not None:  # resource times count from the first level, like the samples
            for smp in self._sampler.samples:  # warm-up samples: negative times
                smp["t"] = round(smp["t"] - (t0 - self._sampler.t0), 2)
            self._sampler.t0 = t0
        plan_end = t0 + self.planned_seconds()
        edge = t0
        for c, d in self.plan:
            res.levels.append({"concurrency": c, "start": round(edge - t0, 3), "end": round(edge + d - t0, 3)})
            edge += d
        workers = [asyncio.create_task(self._worker(i, res, plan_end), name=f"caller-{i}")
                   for i in range(max(c for c, _ in self.plan))]
        metrics_before = await scrape(self.url)
        try:
            for k, (c, _d) in enumerate(self.plan):
                self._level = k
                level_end = t0 + res.levels[k]["end"]
                while (now := time.monotonic()) < level_end:
                    self.progress((now - t0) / self.planned_seconds(),
                                  f"{c} concurrent, {self.in_flight} in flight, {len(res.calls)} calls done")
                    await asyncio.sleep(min(0.5, level_end - now))
                metrics_after = await scrape(self.url)
                res.levels[k]["metrics_before"], res.levels[k]["metrics_after"] = metrics_before, metrics_after
                metrics_before = metrics_after
            self.progress(1.0, f"finishing {self.in_flight} call(s) in flight")
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
