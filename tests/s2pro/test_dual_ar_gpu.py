"""CUDA smoke tests of the engine (skipped without a GPU). On GPU the engine is numerically
equivalent to the reference, not bit-identical (other kernels), so these check behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent_runtime.tts.s2pro.cli_generate import _SyntheticTokenizer
from agent_runtime.tts.s2pro.engine import S2ProEngine

from .test_dual_ar_engine import PARAMS, TEXT, make_config, make_model, random_voice

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_engine_prefix_cache_and_continuation(dtype: torch.dtype) -> None:
    cfg = make_config()
    model = make_model(cfg, dtype).to("cuda")
    engine = S2ProEngine(model, _SyntheticTokenizer(cfg.semantic_begin_id, cfg.codebook_size))
    voice = random_voice(cfg)
    a = engine.open_stream(voice=voice, params=PARAMS, seed=1, max_frames=12, use_prefix_cache=False)
    b = engine.open_stream(voice=voice, params=PARAMS, seed=1, max_frames=12)
    c = engine.open_stream(voice=voice, params=PARAMS, seed=1, max_frames=12)
    first = a.generate(TEXT)
    b.generate(TEXT)
    np.testing.assert_array_equal(c.generate(TEXT), first)
    assert first.shape[0] == cfg.num_codebooks and first.dtype == np.int64
    assert (first >= 0).all() and (first < cfg.codebook_size).all()
    assert b.generate("<|speaker:0|>More.").shape[0] == cfg.num_codebooks


def test_cuda_compiled_fast_step_runs() -> None:
    cfg = make_config()
    model = make_model(cfg, torch.bfloat16).to("cuda")
    engine = S2ProEngine(model, _SyntheticTokenizer(cfg.semantic_begin_id, cfg.codebook_size), compile_fast=True)
    codes = engine.open_stream(params=PARAMS, seed=0, max_frames=6).generate(TEXT)
    assert codes.shape[0] == cfg.num_codebooks
