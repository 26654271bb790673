"""LiveKit calls `prewarm()` on the event loop at every agent activity start: our engines' warm-up
runs once, in a worker thread when a loop is running (never blocking it), inline otherwise (e.g. in
a worker's `prewarm_fnc`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from .log import logger


class WarmOnce:
    def __init__(self, warmup: Callable[[], None], what: str) -> None:
        self._warmup = warmup
        self._what = what
        self._lock = threading.Lock()
        self._started = False
        self.future: asyncio.Future[None] | None = None

    def __call__(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._run()
            return
        self.future = loop.run_in_executor(None, self._run)

    def _run(self) -> None:
        try:
            self._warmup()
        except Exception:
            logger.warning("agent-runtime %s warm-up failed", self._what, exc_info=True)
