"""The pooled decoder on CUDA (marked gpu; skipped without a CUDA device): captured steps equal
eager ones, bf16 pooled frames agree with the single-stream engine's first frames, counter noise is
the same on CPU and CUDA. Graph capture compiles flex attention first (tens of seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agent_runtime.errors import ConfigError
from agent_runtime.tts.s2pro.engine import S2ProEngine
from agent_runtime.tts.s2pro.serving.contract import PoolConfig
from agent_runtime.tts.s2pro.serving.decoder import PooledDecoder
from agent_runtime.tts.s2pro.serving.sampler import counter_noise

from .test_decoder import P1, P2, P3, TEXT, TEXT2, Job, Segment, run_alone, run_pooled, voice_of

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def engine(s2pro_fixtures: Path) -> S2ProEngine:
    return S2ProEngine.load(s2pro_fixtures / "tiny", device="cuda", dtype=torch.bfloat16)


def jobs_of(engine: S2ProEngine) -> list[Job]:
    v = voice_of(engine, 20, 1)
    return [
        Job(v, 1, P1, [(TEXT, 24, 0), (TEXT2, 12, 0)]),
        Job(None, 2, P2, [(TEXT2, 30, 5)], join_at=1),
        Job(v, 3, P3, [(TEXT, 16, 0)], join_at=4),
    ]


def counter_frames(engine: S2ProEngine, **pool) -> list[list[torch.Tensor]]:
    """Frames of `jobs_of` on a counter-noise pool (prompts built without the engine run)."""
    jobs = jobs_of(engine)
    for job in jobs:
        for text, max_frames, cancel_after in job.segments[:1]:
            job.expected = [Segment(engine.builder.build(text, job.voice), 0, max_frames, cancel_after)]
    cfg = PoolConfig(max_len=1024, noise="counter", **pool)
    run_pooled(PooledDecoder(engine.model, cfg, im_end_id=engine.im_end_id), engine, jobs)
    return [[f.cpu() for f in job.got[0].frames] for job in jobs]


def test_captured_equals_eager(engine: S2ProEngine) -> None:
    """Replayed graphs give the eager step's frames exactly (on CUDA the eager step pads to the same
    buckets, so both run the same shapes), with a bucket per batch size and with padding."""
    for pool in ({"max_streams": 4, "buckets": (1, 2, 3, 4)}, {"max_streams": 8, "buckets": (4,)}):
        eager = counter_frames(engine, graphs=False, **pool)
        captured = counter_frames(engine, graphs=True, **pool)
        assert all(len(frames) > 0 for frames in captured)
        for e, c in zip(eager, captured, strict=True):
            torch.testing.assert_close(torch.stack(c), torch.stack(e), rtol=0, atol=0)


def test_bf16_pooled_agrees_with_single_stream(engine: S2ProEngine) -> None:
    """bf16 on CUDA is not bit-exact (other GEMM shapes): the first frame (from the prefill) of
    every segment agrees and most codes of the first three frames do; every stream finishes."""
    jobs = jobs_of(engine)
    for job in jobs:
        run_alone(engine, job)
    cfg = PoolConfig(max_streams=3, max_len=1024, graphs=False, noise="generator")
    run_pooled(PooledDecoder(engine.model, cfg, im_end_id=engine.im_end_id), engine, jobs)
    same = total = 0
    for job in jobs:
        assert len(job.got) == len(job.expected)
        for got, want in zip(job.got, job.expected, strict=True):
            assert int(got.frames[0][0]) == int(want.frames[0][0])
            for g, w in zip(got.frames[:3], want.frames[:3], strict=False):
                same += int((g.cpu() == w.cpu()).sum())
                total += g.numel()
    assert same >= 0.75 * total


def test_counter_noise_same_on_cpu_and_cuda() -> None:
    seeds, counters = torch.tensor([1, 2**31 + 7]), torch.tensor([0, 123])
    cpu = counter_noise(seeds, counters, 3, 256, 128)
    cuda = counter_noise(seeds.cuda(), counters.cuda(), 3, 256, 128).cpu()
    torch.testing.assert_close(cuda, cpu, rtol=1e-6, atol=0)


def test_graphs_refuse_generator_noise(engine: S2ProEngine) -> None:
    with pytest.raises(ConfigError, match="counter"):
        PooledDecoder(
            engine.model,
            PoolConfig(max_streams=2, max_len=512, noise="generator"),
            im_end_id=engine.im_end_id,
        )


def test_profiled_step_splits_times(engine: S2ProEngine) -> None:
    cfg = PoolConfig(max_streams=2, max_len=512, graphs=True, noise="counter", buckets=(2,))
    decoder = PooledDecoder(engine.model, cfg, im_end_id=engine.im_end_id, profile=True)
    jobs = [Job(None, 1, P1, [])]
    jobs[0].expected = [Segment(engine.builder.build(TEXT, None), 0, 6, 0)]
    run_pooled(decoder, engine, jobs)
    t = decoder.times
    assert t.steps > 0 and min(t.attention_s, t.gemm_s, t.sampling_s) > 0 and t.total_s > t.gemm_s
