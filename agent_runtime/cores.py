"""How many CPU cores this process may use (its affinity mask, not the machine's count), and how
many of them the engines are computing on right now."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

__all__ = ["ENGINE_LOAD", "EngineLoad", "half_the_cores", "usable_cores"]


def usable_cores(cap: int | None = None) -> int:
    """CPU cores this process may run on (at least 1; at most `cap` when given)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores if cap is None else min(cap, cores))


def half_the_cores() -> int:
    """Threads for one of two engines that run at the same time (the LLM writing the reply, the TTS
    speaking it): half the usable cores, 1 to 4, so neither oversubscribes the other's cores."""
    return max(1, min(4, usable_cores() // 2))


class EngineLoad:
    """How many speech computations (an ASR transcription, a TTS block) are running in this process.

    The stages mark their compute with `busy()`; an engine that can use more threads when the
    others are idle (the local LLM) reads `active` between steps, so it takes the idle cores while
    the caller waits for the first words and gives them back as soon as speech is being computed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    @property
    def active(self) -> int:
        return self._active


ENGINE_LOAD = EngineLoad()
"""The process's engines share its cores, so their load is counted process-wide."""
