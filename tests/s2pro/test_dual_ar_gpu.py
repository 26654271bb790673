"""CUDA smoke tests of the engine (skipped without a GPU). On GPU the engine is numerically
equivalent to the reference, not bit-identical (other kernels), so these check behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agent_runtime.tts.s2pro.cli_generate import _SyntheticTokenizer
from agent_runtime.tts.s2pro.engine import S2ProEngine

from .test_dual_ar_engine import PARAMS, TEXT, make_config, make_model, random_voice
from .test_flash_decode import random_frames, teacher_forced_states

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


def test_cuda_flash_attention_matches_sdpa() -> None:
    """flash-attn's KV-cache kernel vs SDPA on one bf16 model: same prompt and frames fed to both,
    hidden states close at every position; flash streams reproducible through the prefix cache."""
    pytest.importorskip("flash_attn", reason="flash-attn is not installed (optional, CUDA only)")
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("flash-attn needs an Ampere (sm80) or newer GPU")
    cfg = make_config()
    model = make_model(cfg, torch.bfloat16).to("cuda")
    tok = _SyntheticTokenizer(cfg.semantic_begin_id, cfg.codebook_size)
    sdpa = S2ProEngine(model, tok, attention="sdpa")
    flash = S2ProEngine(model, tok, attention="flash")
    assert flash.attention == "flash" and S2ProEngine(model, tok).attention == "flash"
    prompt = sdpa.builder.build(TEXT, random_voice(cfg, frames=310))
    frames = random_frames(sdpa, 512 - prompt.shape[1] + 4)  # the decodes grow the cache past 512 slots
    expected = teacher_forced_states(sdpa, prompt, frames)
    got = teacher_forced_states(flash, prompt, frames)
    for (normed, fast_in), (want_normed, want_fast_in) in zip(got, expected, strict=True):
        for a, b in ((normed, want_normed), (fast_in, want_fast_in)):
            a, b = a.float().flatten(), b.float().flatten()
            assert F.cosine_similarity(a, b, dim=0) > 0.999
            assert (a - b).abs().max() < 0.25
    logits = [F.linear(n, model.output_weight()).argmax(-1) for n, _ in got]
    want_logits = [F.linear(n, model.output_weight()).argmax(-1) for n, _ in expected]
    agree = sum(bool(torch.equal(a, b)) for a, b in zip(logits, want_logits, strict=True))
    assert agree >= 0.8 * len(logits)
    voice = random_voice(cfg)
    b = flash.open_stream(voice=voice, params=PARAMS, seed=1, max_frames=12).generate(TEXT)  # prefix miss
    c = flash.open_stream(voice=voice, params=PARAMS, seed=1, max_frames=12).generate(TEXT)  # prefix hit
    assert flash.prefix_hits == 1
    np.testing.assert_array_equal(b, c)
    assert b.shape[0] == cfg.num_codebooks and (b >= 0).all() and (b < cfg.codebook_size).all()
