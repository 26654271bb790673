"""CUDA smoke tests of the engine (skipped without a GPU). On GPU the engine is numerically
equivalent to the reference, not bit-identical (other kernels), so these check behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agent_runtime.tts.s2pro.engine import S2ProEngine
from agent_runtime.tts.s2pro.random_model import SyntheticTokenizer

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
    engine = S2ProEngine(model, SyntheticTokenizer(cfg.semantic_begin_id, cfg.codebook_size))
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
    tok = SyntheticTokenizer(cfg.semantic_begin_id, cfg.codebook_size)
    engine = S2ProEngine(model, tok, compile_fast=True, compile_slow=True, attention="sdpa")
    stream = engine.open_stream(params=PARAMS, seed=0, max_frames=6)
    codes = stream.generate(TEXT)
    assert codes.shape[0] == cfg.num_codebooks
    assert stream.generate("<|speaker:0|>More.").shape[0] == cfg.num_codebooks  # longer context, same graphs


def test_cuda_flash_attention_matches_sdpa() -> None:
    """flash-attn's KV-cache kernel vs SDPA on one bf16 model: same prompt and frames fed to both,
    hidden states close at every position; flash streams reproducible through the prefix cache."""
    pytest.importorskip("flash_attn", reason="flash-attn is not installed (optional, CUDA only)")
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("flash-attn needs an Ampere (sm80) or newer GPU")
    cfg = make_config()
    model = make_model(cfg, torch.bfloat16).to("cuda")
    tok = SyntheticTokenizer(cfg.semantic_begin_id, cfg.codebook_size)
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


def test_cuda_batched_decode_matches_unbatched() -> None:
    """Batched decode (on by default on CUDA) against one stream at a time, in the engine's default
    attention path: the batched slow-AR states stay close to the single-stream ones at every step,
    and lock-step streams batch and give valid frames."""
    from agent_runtime.tts.s2pro.batched import decode_slow_batch

    from .test_batched_decode import run_rounds

    cfg = make_config()
    model = make_model(cfg, torch.bfloat16).to("cuda")
    engine = S2ProEngine(model, SyntheticTokenizer(cfg.semantic_begin_id, cfg.codebook_size))
    assert engine.batch_decode and engine.scheduler.max_batch == 16
    prompts = [engine.builder.build(TEXT, random_voice(cfg, frames=f, seed=f)) for f in (20, 70, 310)]
    caches = [engine._new_cache(p.shape[1]) for p in prompts]
    frames = [random_frames(engine, 12, seed=b) for b in range(len(prompts))]
    with torch.inference_mode():
        for cache, prompt in zip(caches, prompts, strict=True):
            engine._prefill(cache, prompt, 0, want_output=False)
        for t in range(12):
            positions = [p.shape[1] + t for p in prompts]
            kv_lens = [engine._decode_slots(c, pos) for c, pos in zip(caches, positions, strict=True)]
            values = torch.stack([f[:, t] for f in frames]).view(len(prompts), -1, 1).to("cuda")
            normed, _ = decode_slow_batch(model, values, [c.layers for c in caches], positions, kv_lens)
            for b, (cache, pos) in enumerate(zip(caches, positions, strict=True)):
                want, _ = engine._decode(cache, frames[b][:, t], pos)
                got, want = normed[b].float().flatten(), want.float().flatten()
                assert F.cosine_similarity(got, want, dim=0) > 0.999
                assert (got - want).abs().max() < 0.25
    streams = [engine.open_stream(voice=random_voice(cfg), params=PARAMS, seed=i) for i in range(3)]
    out = run_rounds(engine, streams, rounds=10, cancel={})
    assert engine.batch_stats.sizes[3] >= 1 and max(engine.batch_stats.sizes) == 3
    for got in out:  # 9 frames each (budget 10), fewer where <|im_end|> came first
        kept = np.stack([f for f in got if f is not None], axis=1)
        assert kept.shape[0] == cfg.num_codebooks and 1 <= kept.shape[1] <= 9
        assert (kept >= 0).all() and (kept < cfg.codebook_size).all()
