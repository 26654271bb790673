"""`PooledEngine` on CUDA (gpu-marked; run by deploy/gpu-bench.sh serve-tests): the fixture
checkpoint in bf16, captured steps, many calls at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from agent_runtime.tts.s2pro.engine import S2ProEngine
from agent_runtime.tts.s2pro.serving.contract import PoolConfig
from agent_runtime.tts.s2pro.serving.engine import PooledEngine
from tests.s2pro.synth_support import PARAMS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
TEXTS = ("Hello there, how are you today?", "And a second sentence follows.")


def _engines(fixtures: Path, **pool: object) -> tuple[S2ProEngine, PooledEngine]:
    single = S2ProEngine.load(fixtures / "tiny", device="cuda", dtype=torch.bfloat16, compile_fast=False)
    cfg = PoolConfig(**{"max_streams": 8, "max_len": 1024, **pool})  # type: ignore[arg-type]
    return single, PooledEngine(single.model, single.tokenizer, cfg)


def test_bf16_pooled_agrees_with_single_on_first_frames(s2pro_fixtures: Path) -> None:
    """Eager step, noise "generator": the first frames of each segment equal the single engine's."""
    single, pooled = _engines(s2pro_fixtures, graphs=False, noise="generator")
    try:
        for seed in (1, 2, 3):
            a = single.open_stream(None, params=PARAMS, seed=seed, max_frames=8)
            b = pooled.open_stream(None, params=PARAMS, seed=seed, max_frames=8)
            want, got = a.generate(TEXTS[0]), b.generate(TEXTS[0])
            np.testing.assert_array_equal(got[:, :2], want[:, :2])
            b.close()
    finally:
        single.close(wait=True)
        pooled.close(wait=True)


def test_captured_step_serves_many_calls(s2pro_fixtures: Path) -> None:
    """CUDA graphs + counter noise: 12 calls on 8 slots (admitted as slots free), 2 segments each,
    every one finishes; the step never recompiles during calls (captured at start-up)."""
    single, pooled = _engines(s2pro_fixtures, graphs=True, noise="counter")

    async def call(i: int) -> int:
        while True:
            try:
                stream = await pooled.open_stream_async(None, params=PARAMS, seed=i, max_frames=12)
                break
            except Exception as exc:  # PoolFull: wait for a slot
                assert "slots" in str(exc)
                await asyncio.sleep(0.01)
        try:
            n = 0
            for text in TEXTS:
                n += len([f async for f in stream.add_text_async(text)])
            return n
        finally:
            stream.close()

    async def run() -> list[int]:
        return await asyncio.gather(*(call(i) for i in range(12)))

    try:
        frames = asyncio.run(run())
        assert all(n > 0 for n in frames)
        snap = pooled.stats()
        assert snap.steps > 0 and snap.active.max > 1
    finally:
        single.close(wait=True)
        pooled.close(wait=True)
