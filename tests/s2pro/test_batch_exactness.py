"""When batched decode is exact on CPU (issue 11 (b); docs/perf_dual_ar.md, "When batching is exact").

A batched decode step computes each stream's row with a B-row GEMM where the stream alone uses a
one-row GEMM (GEMV). Whether the two give the same bits is the CPU kernels' business, per dtype and
shape. The documented rule, checked here on the fixture checkpoint:

* fp32: the batched GEMM rounds rows differently from the GEMV on x86 (measured on an AMD EPYC and
  on an AVX512/AMX Xeon), but only in the last bits of fp32, so the sampled codes of batched streams
  equal the codes alone (the docs state this for CPU fp32; a near tie could flip a code, which this
  test would catch on a CPU where it happens).
* bf16: exact where the CPU's bf16 GEMMs are row-count invariant for the model's shapes (then the
  codes must be equal, asserted); otherwise not guaranteed, and documented so (one bf16 rounding
  step is 0.4 %, enough to change a draw: 0/4 and 1/8 identical streams on an AMD EPYC).
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agent_runtime.tts.s2pro.engine import S2ProEngine, S2ProStream
from agent_runtime.tts.s2pro.prompt import VoiceReference

from .test_dual_ar_engine import PARAMS

TEXTS = [
    "<|speaker:0|>Hello world, [laugh] this is a test.",
    "Sure, we are open tomorrow from nine until six.",
    "One more reply, please, and a slightly longer one than the others.",
    "Short.",
]
FRAMES = 24
STREAMS = 4


def gemms_row_invariant(engine: S2ProEngine, rows: int) -> bool:
    """Whether every linear layer of the model gives a row the same bits in a `rows`-row GEMM as alone."""
    model = engine.model
    gen = torch.Generator().manual_seed(0)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)] + [engine._head_w]
    for w in weights:
        x = torch.randn(rows, 1, w.shape[1], generator=gen).to(w.dtype)
        if not torch.equal(F.linear(x, w), torch.cat([F.linear(x[b : b + 1], w) for b in range(rows)])):
            return False
    return True


def streams_of(engine: S2ProEngine, voice: VoiceReference) -> list[S2ProStream]:
    return [engine.open_stream(voice=voice if i % 2 == 0 else None, params=PARAMS, seed=10 + i) for i in range(STREAMS)]


def batched_codes(engine: S2ProEngine, voice: VoiceReference) -> list[np.ndarray]:
    """Each stream's codes when all STREAMS decode in lock-step rounds (every round one batch)."""
    sched = engine.scheduler
    streams = streams_of(engine, voice)
    segments = sched.submit(
        lambda: [s.start_segment(t, max_frames=FRAMES) for s, t in zip(streams, TEXTS, strict=True)]
    ).result()
    out: list[list[np.ndarray]] = [[] for _ in streams]
    live = set(range(STREAMS))
    while live:
        order = sorted(live)
        futs: list[Future] = sched.submit(lambda: [sched.submit_step(segments[i]) for i in order]).result()  # noqa: B023
        for i, fut in zip(order, futs, strict=True):
            frame = fut.result()
            if frame is None:
                live.discard(i)
            else:
                out[i].append(frame)
    sched.submit(lambda: [s.end_segment(seg) for s, seg in zip(streams, segments, strict=True)]).result()
    return [np.stack(frames, axis=1) for frames in out]


def compare(fixtures: Path, dtype: torch.dtype) -> tuple[list[bool], S2ProEngine]:
    alone_engine = S2ProEngine.load(fixtures / "tiny", dtype=dtype, batch_decode="off")
    batch_engine = S2ProEngine.load(fixtures / "tiny", dtype=dtype, batch_decode="on", max_batch=STREAMS)
    voice = VoiceReference.create("reference transcript.", np.load(fixtures / "reference_codes.npy"))
    try:
        alone = [s.generate(t, max_frames=FRAMES) for s, t in zip(streams_of(alone_engine, voice), TEXTS, strict=True)]
        together = batched_codes(batch_engine, voice)
    finally:
        alone_engine.close(wait=True)
        batch_engine.close(wait=True)
    assert batch_engine.batch_stats.forwards > 0 and max(batch_engine.batch_stats.sizes) == STREAMS
    return [a.shape == b.shape and np.array_equal(a, b) for a, b in zip(alone, together, strict=True)], batch_engine


@pytest.mark.slow
def test_fp32_batched_codes_equal_unbatched_on_cpu(s2pro_fixtures: Path) -> None:
    same, _ = compare(s2pro_fixtures, torch.float32)
    assert same == [True] * STREAMS


def test_bf16_batched_codes_equal_unbatched_where_the_gemms_are_row_invariant(s2pro_fixtures: Path) -> None:
    same, engine = compare(s2pro_fixtures, torch.bfloat16)
    if not all(gemms_row_invariant(engine, rows) for rows in range(2, STREAMS + 1)):
        pytest.skip(f"bf16 GEMMs are row-count dependent on this CPU: batched bf16 is not exact here "
                    f"(documented; {sum(same)}/{STREAMS} streams identical)")
    assert same == [True] * STREAMS
