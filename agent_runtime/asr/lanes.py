"""A fixed number of lanes for blocking jobs (ASR decodes), shared by every call in a process.

A job waits in FIFO order for a free lane, then runs in a worker thread. The time it waited is
returned with its result and reported to listeners (the server's `agent_asr_wait_seconds`), so
queueing between calls is visible. A lane is freed only when its thread has finished: a caller
cancelled mid-decode stops waiting at once, but the next job does not start on that lane until the
model is really free.

The pool is not bound to one event loop: waiters may come from any loop or thread (the engines are
loaded in one thread and serve calls on another loop; tests share one model across loops).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

__all__ = ["LanePool", "WaitListener"]

log = logging.getLogger(__name__)

T = TypeVar("T")
WaitListener = Callable[[float], None]
"""Called (on the event loop of the job) with the seconds each job waited for a lane."""


class LanePool:
    """At most `size` jobs at once; the others queue in arrival order."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a lane pool needs at least one lane, not {size}")
        self.size = size
        self._mutex = threading.Lock()
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._listeners: list[WaitListener] = []
        self.jobs = 0
        """Jobs that got a lane so far."""
        self.wait_seconds_total = 0.0
        """Sum of their waits."""

    @property
    def busy(self) -> int:
        """Lanes running a job now."""
        return self.size - self._free

    @property
    def waiting(self) -> int:
        """Jobs queued for a lane now."""
        return sum(not w.done() for w in list(self._waiters))

    def add_listener(self, listener: WaitListener) -> None:
        """Call `listener(wait_seconds)` for every job that gets a lane from now on."""
        self._listeners.append(listener)

    async def run(self, fn: Callable[..., T], *args: object) -> tuple[T, float]:
        """`fn(*args)` in a worker thread once a lane is free: (its result, seconds waited)."""
        queued = time.monotonic()
        await self._acquire()
        wait = time.monotonic() - queued
        self.jobs += 1
        self.wait_seconds_total += wait
        for listener in list(self._listeners):
            try:
                listener(wait)
            except Exception:  # an observer must not fail a transcript
                log.exception("ASR wait listener failed")
        job = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        job.add_done_callback(self._job_done)
        return await asyncio.shield(job), wait

    # -- lane accounting ------------------------------------------------------------------------
    def _job_done(self, job: asyncio.Future[object]) -> None:
        if not job.cancelled():
            job.exception()  # retrieved: the caller may have been cancelled and never see it
        self._release()

    async def _acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._mutex:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            with self._mutex:
                queued = waiter in self._waiters
                if queued:
                    self._waiters.remove(waiter)
            if not queued and not waiter.cancelled():
                self._release()  # granted just before the cancellation landed: pass the lane on
            # (granted and cancelled: `_grant` sees the cancellation and passes the lane on)
            raise

    def _release(self) -> None:
        with self._mutex:
            while self._waiters:
                waiter = self._waiters.popleft()
                if waiter.done():
                    continue
                try:
                    waiter.get_loop().call_soon_threadsafe(self._grant, waiter)
                except RuntimeError:  # its event loop is closed: nobody is waiting there any more
                    continue
                return
            self._free += 1

    def _grant(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():  # cancelled between the hand-over and now
            self._release()
        else:
            waiter.set_result(None)
