"""The flash-attn KV-cache path, on CPU through the kernel's documented contract.

flash-attn needs CUDA, so these tests inject `contract_kernel`, a plain-torch implementation of
`flash_attn_with_kvcache` as the engine calls it (k / v written into the (B, capacity, KV, hd)
cache at `cache_seqlens`, GQA, bottom-right causal mask), accepted on CPU in fp32 / bf16 (the real
kernel takes only fp16 / bf16 on CUDA). The flash cache layout must then give the SDPA path's
hidden states, and the same codes, through prefill, decode, cache growth, the prefix cache and
continuation. The real kernel is compared with SDPA in test_dual_ar_gpu.py.
"""

from __future__ import annotations

import importlib.util
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from agent_runtime.errors import ConfigError
from agent_runtime.tts.s2pro.engine import S2ProEngine
from agent_runtime.tts.s2pro.flash_decode import FlashKernel, FlashLayerKV
from agent_runtime.tts.s2pro.kv_cache import SlowKVCache
from agent_runtime.tts.s2pro.model import LayerKV
from agent_runtime.tts.s2pro.random_model import SyntheticTokenizer

from .test_dual_ar_engine import PARAMS, TEXT, make_config, make_model, random_voice


def contract_kernel(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    k: Tensor | None = None,
    v: Tensor | None = None,
    *,
    cache_seqlens: Tensor,
    softmax_scale: float,
    causal: bool,
) -> Tensor:
    """`flash_attn_with_kvcache` for the arguments the engine passes (others would be a TypeError)."""
    batch, seqlen_q, heads, head_dim = q.shape
    kv_heads = k_cache.shape[2]
    assert cache_seqlens.dtype == torch.int32 and cache_seqlens.shape == (batch,)
    assert k_cache.shape == v_cache.shape and k_cache.shape[3] == head_dim and heads % kv_heads == 0
    assert q.dtype == k_cache.dtype == v_cache.dtype and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    out = torch.empty_like(q)
    for b in range(batch):
        start = int(cache_seqlens[b])
        if k is not None and v is not None:
            assert k.shape == v.shape == (batch, k.shape[1], kv_heads, head_dim)
            assert start + k.shape[1] <= k_cache.shape[1], "the cache must hold the new keys"
            k_cache[b, start : start + k.shape[1]] = k[b]
            v_cache[b, start : start + k.shape[1]] = v[b]
            start += k.shape[1]
        keys = k_cache[b, :start].float().repeat_interleave(heads // kv_heads, dim=1)  # (L, H, hd)
        values = v_cache[b, :start].float().repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[b].float(), keys) * softmax_scale
        if causal:  # query i sees keys j <= i + L - S (bottom-right aligned)
            rows = torch.arange(seqlen_q)[:, None]
            scores = scores.masked_fill(torch.arange(start)[None, :] > rows + start - seqlen_q, float("-inf"))
        out[b] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), values).to(q.dtype)
    return out


CPU_KERNEL = FlashKernel(contract_kernel, device_types=("cpu",), dtypes=(torch.float32, torch.bfloat16))


def engine_pair(dtype: torch.dtype, seed: int = 0) -> tuple[S2ProEngine, S2ProEngine]:
    """An SDPA engine and a flash-layout engine (contract kernel) on one random model."""
    cfg = make_config()
    model = make_model(cfg, dtype, seed)
    tok = SyntheticTokenizer(cfg.semantic_begin_id, cfg.codebook_size)
    flash = S2ProEngine(model, tok, attention="flash", flash_kernel=CPU_KERNEL)
    return S2ProEngine(model, tok, attention="sdpa"), flash


def teacher_forced_states(engine: S2ProEngine, prompt: Tensor, frames: Tensor) -> list[tuple[Tensor, Tensor]]:
    """(normed, fast_in) of a prefill of `prompt` (N+1, T) then decodes of `frames` (N+1, F)."""
    cache = engine._new_cache(prompt.shape[1])
    with torch.inference_mode():
        states = [engine._prefill(cache, prompt, 0)]
        states += [engine._decode(cache, frames[:, i], prompt.shape[1] + i) for i in range(frames.shape[1])]
    return [s for s in states if s is not None]


def random_frames(engine: S2ProEngine, count: int, seed: int = 0) -> Tensor:
    """(N+1, count) frames: a semantic token and its codes per column."""
    cfg = engine.cfg
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, cfg.codebook_size, (cfg.num_codebooks, count), generator=gen)
    return torch.cat([codes[:1] + cfg.semantic_begin_id, codes])


def test_contract_kernel_equals_masked_sdpa() -> None:
    """The stand-in itself: appending at 5 and attending causally == SDPA over the filled cache."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3, h, 16, generator=gen) for h in (4, 2, 2))
    k_cache, v_cache = torch.randn(1, 12, 2, 16, generator=gen), torch.randn(1, 12, 2, 16, generator=gen)
    expected_k = torch.cat([k_cache[:, :5], k], dim=1).transpose(1, 2).repeat_interleave(2, dim=1)
    expected_v = torch.cat([v_cache[:, :5], v], dim=1).transpose(1, 2).repeat_interleave(2, dim=1)
    mask = torch.arange(8)[None, :] <= torch.arange(5, 8)[:, None]
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), expected_k, expected_v, attn_mask=mask)
    seqlens = torch.tensor([5], dtype=torch.int32)
    out = contract_kernel(q, k_cache, v_cache, k, v, cache_seqlens=seqlens, softmax_scale=1 / math.sqrt(16), causal=True)
    torch.testing.assert_close(out, expected.transpose(1, 2))
    assert torch.equal(k_cache[:, 5:8], k) and torch.equal(v_cache[:, 5:8], v)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 2e-5), (torch.bfloat16, 6e-2)], ids=["fp32", "bf16"])
def test_flash_layout_matches_sdpa_through_prefill_decode_and_growth(dtype: torch.dtype, tol: float) -> None:
    sdpa, flash = engine_pair(dtype)
    prompt = sdpa.builder.build(TEXT, random_voice(sdpa.cfg, frames=310))
    assert prompt.shape[1] < 512 < prompt.shape[1] + 20  # the decodes grow the cache past one block
    frames = random_frames(sdpa, 512 - prompt.shape[1] + 4)
    expected = teacher_forced_states(sdpa, prompt, frames)
    got = teacher_forced_states(flash, prompt, frames)
    assert len(got) == len(expected) == frames.shape[1] + 1
    for (normed, fast_in), (want_normed, want_fast_in) in zip(got, expected, strict=True):
        torch.testing.assert_close(normed, want_normed, atol=tol, rtol=tol)
        torch.testing.assert_close(fast_in, want_fast_in, atol=tol, rtol=tol)


def test_flash_engine_streams_equal_sdpa_with_prefix_cache_and_continuation() -> None:
    sdpa, flash = engine_pair(torch.float32, seed=3)
    voice = random_voice(sdpa.cfg, frames=50)
    texts = [TEXT, "<|speaker:0|>And a second segment, continuing the first."]
    results = []
    for engine in (sdpa, flash):
        codes = []
        for _ in range(2):  # prefix cache: a miss, then a hit
            stream = engine.open_stream(voice=voice, params=PARAMS, seed=7, max_frames=10)
            codes += [stream.generate(text) for text in texts]
        assert engine.prefix_misses == 1 and engine.prefix_hits == 1
        results.append(codes)
    assert flash.attention == "flash" and isinstance(stream.cache.layers[0], FlashLayerKV)
    for got, expected in zip(results[1], results[0], strict=True):
        assert got.shape[1] > 0
        np.testing.assert_array_equal(got, expected)


def test_flash_cache_layout_grows_snapshots_and_restores() -> None:
    cfg = make_config()
    cache = SlowKVCache(cfg.slow, cfg.cache_len, torch.float32, torch.device("cpu"), 10, flash=CPU_KERNEL)
    assert cache.capacity == 512 and cache.layers[0].k.shape == (1, 512, cfg.slow.n_local_heads, cfg.slow.head_dim)
    for i, layer in enumerate(cache.layers):
        layer.k.copy_(torch.arange(layer.k.numel(), dtype=torch.float32).view_as(layer.k) + i)
        layer.v.copy_(-layer.k)
    before = [(layer.k.clone(), layer.v.clone()) for layer in cache.layers]
    cache.ensure(600)
    assert cache.capacity == 1024
    for layer, (k, v) in zip(cache.layers, before, strict=True):
        assert torch.equal(layer.k[:, :512], k) and torch.equal(layer.v[:, :512], v)
        assert not layer.k[:, 512:].any()
    snap = cache.snapshot(300)
    assert snap[0][0].shape == (1, 300, cfg.slow.n_local_heads, cfg.slow.head_dim)
    other = SlowKVCache(cfg.slow, cfg.cache_len, torch.float32, torch.device("cpu"), flash=CPU_KERNEL)
    other.restore(snap)
    for layer, (k, v) in zip(other.layers, before, strict=True):
        assert torch.equal(layer.k[:, :300], k[:, :300]) and torch.equal(layer.v[:, :300], v[:, :300])
        assert not layer.k[:, 300:].any()


def test_flash_refused_on_cpu_with_the_reason() -> None:
    cfg = make_config()
    tok = SyntheticTokenizer(cfg.semantic_begin_id, cfg.codebook_size)
    with pytest.raises(ConfigError, match=r"attention: flash is unavailable: it needs a cuda device, the model is on cpu"):
        S2ProEngine(make_model(cfg, torch.bfloat16), tok, attention="flash")
    with pytest.raises(ConfigError, match="attention must be one of auto, sdpa, flash"):
        S2ProEngine(make_model(cfg, torch.float32), tok, attention="fast")


def test_auto_on_cpu_uses_sdpa_and_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_config()
    tok = SyntheticTokenizer(cfg.semantic_begin_id, cfg.codebook_size)
    with caplog.at_level(logging.INFO, logger="agent_runtime.tts.s2pro.flash_decode"):
        engine = S2ProEngine(make_model(cfg, torch.float32), tok)
    assert engine.attention == "sdpa"
    assert "slow-AR attention: sdpa (flash unused: it needs a cuda device" in caplog.text
    assert type(engine.open_stream(params=PARAMS).cache.layers[0]) is LayerKV


def test_unusable_reasons() -> None:
    cpu = torch.device("cpu")
    cfg = make_config().slow
    assert CPU_KERNEL.unusable_reason(cpu, torch.float32, cfg) is None
    assert "needs float16/bfloat16 weights, the model is float32" in (
        FlashKernel(contract_kernel, device_types=("cpu",)).unusable_reason(cpu, torch.float32, cfg) or ""
    )
    odd = make_config(head_dim=12).slow
    assert "head_dim 12 is not a multiple of 8" in (CPU_KERNEL.unusable_reason(cpu, torch.float32, odd) or "")


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_default_kernel_reports_a_missing_flash_attn() -> None:
    """The lazily imported kernel: its absence is a reason, not an ImportError at import time."""
    kernel = FlashKernel(device_types=("cpu",))
    reason = kernel.unusable_reason(torch.device("cpu"), torch.bfloat16, make_config().slow)
    assert reason is not None and reason.startswith("flash-attn is not importable")
