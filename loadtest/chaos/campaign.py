"""Runs a chaos campaign: fault LLM, server, legit callers and attackers together, bounded, then checks."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.chaos import attacks_http, attacks_webrtc, attacks_ws
from loadtest.chaos.attacks_ws import Ctx
from loadtest.chaos.fault_llm import FaultLLMServer
from loadtest.chaos.legit import LegitCall, LegitStats, legit_call, make_leg
from loadtest.chaos.plan import ChaosPlan
from loadtest.chaos.probe import ProbeLog
from loadtest.chaos.target import HealthWatch, Target, server_config, start_target, wait_recovered
from loadtest.monitor import ProcSampler, read_proc, scrape

log = logging.getLogger("loadtest.chaos")


def caller_speech(text: str) -> np.ndarray:
    """What legit callers say: `text` in the embedded piper voice (16 kHz int16, trimmed)."""
    from loadtest.audio import synthesize

    return synthesize([text])[text]


COUNTERS = ("agent_sessions_rejected_total", "agent_calls_reclaimed_total", "agent_errors_total")


def counter_deltas(before: dict | None, after: dict | None) -> dict[str, dict[str, float]]:
    """How much the server's refusal, reclaim and error counters (from /metrics) rose over the run."""
    out: dict[str, dict[str, float]] = {}
    for (name, labels), value in (after or {}).items():
        if name in COUNTERS:
            delta = value - (before or {}).get((name, labels), 0.0)
            if delta:
                out.setdefault(name, {})[",".join(v for _, v in labels) or "-"] = delta
    return out


class Campaign:
    """One run. `await run()` returns the raw results for `verdict.build`."""

    def __init__(self, plan: ChaosPlan, out: Path, *, instant: bool, speech: np.ndarray) -> None:
        self.plan = plan
        self.out = out
        self.instant = instant
        self.speech = speech
        self.token = secrets.token_urlsafe(24)
        self.log = ProbeLog()
        self.legit: list[LegitCall] = []
        self._legit_started = 0

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        fault = FaultLLMServer(plan.fault_llm)
        llm_url = await fault.start()
        target: Target | None = None
        try:
            cfg_path = server_config(plan, llm_url, self.out)
            from agent_runtime.config import load_config

            cfg = load_config(cfg_path)
            target = await start_target(plan, cfg_path, self.token, self.out, instant=self.instant)
            return await self._attack(target, cfg, fault)
        finally:
            if target is not None:
                await target.proc.stop(10)
            await fault.stop()

    async def _attack(self, target: Target, cfg: Any, fault: FaultLLMServer) -> dict[str, Any]:
        plan, url = self.plan, target.url
        health = HealthWatch(url)
        health.start()
        # warm-up: one round of concurrent legit calls (both transports when mixed), so that codecs, engine
        # buffers and thread pools are in place before the baseline RSS is taken
        lg = plan.legit
        warm = await asyncio.gather(*(legit_call(-i - 1, make_leg(lg.transport, i, self.token), url, lg, self.speech)
                                      for i in range(lg.concurrency)))
        self.legit.extend(warm)
        rss_before = read_proc(target.pid)
        sampler = ProcSampler(target.pid, 1.0, time.monotonic())
        sampler.start()
        metrics_before = await scrape(url)
        self.log = ProbeLog()
        t0 = time.monotonic()
        ctx = Ctx(url=url, token=self.token, log=self.log, deadline=t0 + plan.duration_s,
                  setup_timeout_s=cfg.server.setup_timeout_s, media_timeout_s=cfg.server.media_timeout_s,
                  header_timeout_s=cfg.server.header_timeout_s, margin_s=plan.bounds.reap_margin_s,
                  speech=self.speech, reply_wait_s=plan.legit.reply_wait_s)
        tasks = [asyncio.create_task(self._legit_worker(i, url, ctx), name=f"legit-{i}")
                 for i in range(plan.legit.concurrency)]
        tasks += [
            asyncio.create_task(attacks_ws.squatters(ctx, plan.squatters.sockets), name="squatters"),
            asyncio.create_task(attacks_ws.silent_twilio(ctx, plan.silent.every_s), name="silent-twilio"),
            asyncio.create_task(attacks_webrtc.silent_webrtc(ctx, plan.silent.every_s), name="silent-webrtc"),
            asyncio.create_task(attacks_ws.malformed_twilio(ctx, plan.malformed.every_s), name="malformed"),
            asyncio.create_task(attacks_http.hostile_http(ctx, plan.hostile_http.every_s), name="hostile-http"),
            asyncio.create_task(attacks_http.slowloris(ctx, plan.hostile_http.slowloris), name="slowloris"),
            asyncio.create_task(self._killer(ctx), name="killed"),
        ]
        hard_stop = plan.duration_s + plan.legit.call_timeout_s + 30.0
        stopped_early = ""
        done, pending = await asyncio.wait(tasks, timeout=hard_stop)
        if pending:
            stopped_early = f"{len(pending)} task(s) still running {hard_stop:.0f} s in: cancelled"
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        harness_errors = [f"{t.get_name()}: {type(t.exception()).__name__}: {t.exception()}"[:300]
                          for t in done if not t.cancelled() and t.exception() is not None]
        ran_s = round(time.monotonic() - t0, 1)
        recovered, waited, occupancy = await wait_recovered(url, plan.bounds.recover_s)
        rss_after = read_proc(target.pid)
        await sampler.stop()
        counters = counter_deltas(metrics_before, await scrape(url))
        await health.stop()
        alive = target.alive()
        return {
            "url": url, "pid": target.pid, "ran_s": ran_s, "stopped_early": stopped_early,
            "harness_errors": harness_errors, "config": cfg.model_dump(mode="json"),
            "legit": LegitStats(self.legit).as_json(), "probes": self.log.as_json(),
            "llm": {"counts": fault.counts(), "requests": fault.as_json(),
                    "stall_cap_s": self.plan.fault_llm.stall_cap_s, "long_chars": self.plan.fault_llm.long_chars},
            "recovery": {"recovered": recovered, "waited_s": waited, "last": occupancy},
            "health": {"ok": health.ok, "failed": health.failed, "failures": health.failures, "alive": alive},
            "rss_mb": {"before": round(rss_before[1], 1) if rss_before else None,
                       "after": round(rss_after[1], 1) if rss_after else None,
                       "samples": [(x["t"], x["rss_mb"]) for x in sampler.samples]},
            "tracebacks": target.tracebacks(), "stderr": str(target.stderr_path), "server_counters": counters,
        }

    async def _legit_worker(self, i: int, url: str, ctx: Ctx) -> None:
        lg = self.plan.legit
        while ctx.running() and self._legit_started < lg.max_calls:
            self._legit_started += 1
            n = len(self.legit) + 1
            rec = await legit_call(n, make_leg(lg.transport, self._legit_started, self.token), url, lg, self.speech)
            self.legit.append(rec)
            if rec.status == "refused":
                await asyncio.sleep(0.5)

    async def _killer(self, ctx: Ctx) -> None:
        k = 0
        while ctx.running():
            t0 = time.monotonic()
            await (attacks_ws.killed_twilio_call(ctx) if k % 2 == 0 else attacks_webrtc.killed_webrtc_call(ctx))
            k += 1
            await asyncio.sleep(max(0.0, self.plan.killed.every_s - (time.monotonic() - t0)))
