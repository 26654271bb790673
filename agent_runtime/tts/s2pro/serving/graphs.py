"""CUDA-graph capture of the pooled step, one graph per batch-size bucket.

The step is a function of the batch's slot ids (rows) only: everything else it reads and writes
lives in the decoder's preallocated pool, so it captures as is. Each bucket's graph reads its
rows from a static (max_streams,) buffer; a batch of n slots is padded to the next bucket with the
pool's scratch slot (inert rows: they read and write only the scratch slot, whose state the step
resets). Buckets are captured at construction, largest first, sharing one memory pool (as SGLang's
CUDA-graph runner does), each after two warm-up runs on a side stream (which also compiles any
torch.compile'd part for its shapes); nothing is captured or compiled afterwards.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

StepFn = Callable[[Tensor], tuple[Tensor, Tensor]]
WARMUP_RUNS = 2


def bucket_for(buckets: Sequence[int], n: int) -> int:
    """The smallest of the sorted `buckets` >= n."""
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"batch of {n} slots exceeds the largest bucket {buckets[-1]}")
    return buckets[i]


class StepGraphs:
    """Captured steps per bucket; `run(slots)` replays the smallest bucket that holds them."""

    def __init__(self, step: StepFn, buckets: Sequence[int], scratch_slot: int, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.buckets = sorted(buckets)
        self.scratch_slot = scratch_slot
        self.rows = torch.full((self.buckets[-1],), scratch_slot, dtype=torch.int64, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, tuple[Tensor, Tensor]]] = {}
        pool = torch.cuda.graph_pool_handle()
        start = time.perf_counter()
        for i, size in enumerate(reversed(self.buckets)):
            t0 = time.perf_counter()
            self.graphs[size] = self._capture(step, size, pool)
            log.info(
                "s2pro pooled step: captured batch %d (%d/%d) in %.2f s",
                size,
                i + 1,
                len(self.buckets),
                time.perf_counter() - t0,
            )
        log.info(
            "s2pro pooled step: %d graphs captured in %.1f s", len(self.buckets), time.perf_counter() - start
        )

    def _capture(
        self, step: StepFn, size: int, pool: object
    ) -> tuple[torch.cuda.CUDAGraph, tuple[Tensor, Tensor]]:
        rows = self.rows[:size]
        rows.fill_(self.scratch_slot)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                step(rows)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = step(rows)
        return graph, out

    def bucket(self, n: int) -> int:
        """The smallest captured batch size >= n."""
        return bucket_for(self.buckets, n)

    def run(self, slots: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Replay the step for `slots`: (frames (n, N+1), ended (n,)), views of the graph's outputs
        (valid until the next replay of that bucket)."""
        n = len(slots)
        size = self.bucket(n)
        padded = list(slots) + [self.scratch_slot] * (size - n)
        self.rows[:size].copy_(torch.tensor(padded, dtype=torch.int64), non_blocking=True)
        graph, (frames, ended) = self.graphs[size]
        graph.replay()
        return frames[:n], ended[:n]
