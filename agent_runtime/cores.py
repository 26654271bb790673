"""How many CPU cores this process may use (its affinity mask, not the machine's count)."""

from __future__ import annotations

import os

__all__ = ["half_the_cores", "usable_cores"]


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
