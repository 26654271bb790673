"""The server under test, watched from outside: CPU and RSS from /proc, stage timings from /metrics."""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p.name))
    return out


def read_proc(pid: int) -> tuple[float, float] | None:
    """(CPU seconds used so far, RSS in MB) of `pid` and its direct children; None if it is gone."""
    cpu = rss = 0.0
    for i, p in enumerate([pid, *_children(pid)]):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            if i == 0:
                return None
            continue
        cpu += (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
        rss += int(fields[21]) * _PAGE / 1e6
    return cpu, rss


class ProcSampler:
    """Samples CPU% and RSS of a process every `interval` seconds until stopped (or the process exits)."""

    def __init__(self, pid: int, interval: float, t0: float, extra: Callable[[], dict[str, Any]] | None = None):
        self.pid = pid
        self.interval = interval
        self.t0 = t0
        self.extra = extra
        self.samples: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="proc-sampler")

    async def _loop(self) -> None:
        prev = read_proc(self.pid)
        prev_t = time.monotonic()
        while prev is not None:
            await asyncio.sleep(self.interval)
            now_t = time.monotonic()
            cur = read_proc(self.pid)
            if cur is None:
                return
            s = {
                "t": round(now_t - self.t0, 2),
                "cpu_pct": round(100 * (cur[0] - prev[0]) / max(now_t - prev_t, 1e-6), 1),
                "rss_mb": round(cur[1], 1),
            }
            if self.extra is not None:
                s.update(self.extra())
            self.samples.append(s)
            prev, prev_t = cur, now_t

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


_LINE = re.compile(r'^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)$')


def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text format -> {(name, ((label, value), ...)): value}."""
    out = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            continue
    return out


async def scrape(base_url: str, timeout: float = 5.0) -> dict | None:
    """The server's /metrics, parsed; None when it has none (a Pipecat bot) or does not answer."""
    try:
        async with aiohttp.ClientSession() as http, http.get(
            f"{base_url}/metrics", timeout=aiohttp.ClientTimeout(total=timeout)
        ) as r:
            if r.status != 200:
                return None
            return parse_prometheus(await r.text())
    except (aiohttp.ClientError, TimeoutError):
        return None


def histogram_quantiles(before: dict | None, after: dict | None, name: str, label: str | None = None) -> dict:
    """p50/p95/count per label value of histogram `name` between two scrapes (linear within buckets)."""
    if not after:
        return {}
    before = before or {}
    series: dict[str, dict[float, float]] = {}
    for (metric, labels), value in after.items():
        if metric != f"{name}_bucket":
            continue
        d = dict(labels)
        key = d.get(label, "") if label else ""
        le = math.inf if d["le"] == "+Inf" else float(d["le"])
        series.setdefault(key, {})[le] = value - before.get((metric, labels), 0.0)
    out = {}
    for key, buckets in series.items():
        bounds = sorted(buckets)
        total = buckets[bounds[-1]]
        if total <= 0:
            continue
        out[key] = {"n": int(total), **{f"p{int(q * 100)}": _quantile(bounds, buckets, total, q) for q in (0.5, 0.95)}}
    return out


def _quantile(bounds: list[float], buckets: dict[float, float], total: float, q: float) -> float | None:
    rank = q * total
    lo_bound, lo_count = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if math.isinf(b):
                return round(lo_bound * 1000, 1)  # beyond the last bucket: report its lower edge
            frac = (rank - lo_count) / max(c - lo_count, 1e-9)
            return round((lo_bound + frac * (b - lo_bound)) * 1000, 1)
        lo_bound, lo_count = b, c
    return None


def counter(scraped: dict | None, name: str, **labels: str) -> float:
    if not scraped:
        return 0.0
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)
