"""Sampling rules: the fast windowed sampler draws exactly what the reference draws."""

from __future__ import annotations

import collections

import pytest
import torch

from agent_runtime.tts.s2pro.sampling import (
    SamplerStats,
    SamplerTensors,
    SamplingParams,
    aligned_window,
    reference_logits_to_probs,
    reference_sample,
    sample_window,
)

from .test_dual_ar_engine import PARAMS, make_config, make_engine


def test_parameter_tensors_use_model_dtype() -> None:
    st = SamplerTensors.create(SamplingParams(0.8, 0.9, 30), torch.bfloat16, torch.device("cpu"))
    assert st.temperature.item() == 0.80078125
    assert st.top_p.item() == 0.8984375
    assert st.high_temperature.item() == 1.0 and st.high_top_p.item() == 0.8984375
    assert SamplerTensors.create(SamplingParams(0.7, 0.7, 5), torch.bfloat16, torch.device("cpu")).top_p.item() == 0.69921875


def test_invalid_params_rejected() -> None:
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError):
        SamplingParams(temperature=2.0)


def test_top_p_uses_untempered_probabilities() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    t = torch.tensor(0.1)
    # softmax([2,1,0,-1]) = .64, .24, .09, .03 -> cum .64, .88, .97: top_p .9 keeps 2 tokens whatever T
    probs = reference_logits_to_probs(logits, t, torch.tensor(0.9), 10)
    assert (probs[2:] == 0).all() and (probs[:2] > 0).all()
    # top_k = 1 keeps only the best; the first sorted entry is never removed even if top_p is tiny
    probs = reference_logits_to_probs(logits, torch.tensor(1.0), torch.tensor(0.01), 1)
    assert probs.tolist() == [1.0, 0.0, 0.0, 0.0]


def _window_case(dtype: torch.dtype, full_len: int, lo: int, hi: int, gen: torch.Generator, ties: bool) -> tuple:
    off, end = aligned_window(lo, hi, full_len)
    full = torch.full((full_len,), float("-inf"), dtype=dtype)
    vals = torch.randn(hi + 1 - lo, generator=gen) * 2
    if ties:
        vals = (vals * 2).round() / 2
    full[lo : hi + 1] = vals.to(dtype)
    return full, off, end


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    ("full_len", "lo", "hi"),
    [(155_776, 151_645, 155_773), (320, 258, 299), (1000, 901, 997), (4096, 0, 4095), (32, 0, 31)],
)
def test_window_sampler_equals_reference(dtype: torch.dtype, full_len: int, lo: int, hi: int) -> None:
    gen = torch.Generator().manual_seed(full_len)
    settings = [(1.0, 0.9, 30), (0.8, 0.8, 30), (0.7, 0.7, 1), (1.3, 1.0, 500), (0.5, 0.3, 0), (1.0, 0.99, 10_000)]
    stats = SamplerStats()
    trials = 6 if full_len > 100_000 else 25
    for trial in range(trials):
        full, off, end = _window_case(dtype, full_len, lo, hi, gen, ties=trial % 2 == 1)
        for temperature, top_p, top_k in settings:
            t = torch.tensor(temperature, dtype=dtype)
            p = torch.tensor(top_p, dtype=dtype)
            g_ref = torch.Generator().manual_seed(trial)
            g_new = torch.Generator().manual_seed(trial)
            expected = reference_sample(full, t, p, top_k, g_ref)
            got = sample_window(full[off:end].clone(), off, full_len, t, p, top_k, g_new, stats)
            assert got == expected, (trial, temperature, top_p, top_k)
            assert torch.equal(g_ref.get_state(), g_new.get_state())  # same RNG consumption
    if full_len < 100_000:
        assert stats.fallbacks > 0  # the tie path was exercised


def test_tie_at_the_cut_uses_reference_order() -> None:
    """Many equal logits straddle the top-k cut: the kept subset follows torch.sort's order."""
    full = torch.full((4096,), -3.0)
    full[:200] = 1.0  # 200 ties, top_k = 30 keeps 30 of them
    stats = SamplerStats()
    for seed in range(20):
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        t, p = torch.tensor(1.0), torch.tensor(1.0)
        assert sample_window(full.clone(), 0, 4096, t, p, 30, g2, stats) == reference_sample(full, t, p, 30, g1)
    assert stats.fallbacks == 20


def test_ras_uses_high_temperature_draw_on_repeat() -> None:
    """Repetition-aware sampling: both draws always happen; the second wins on a repeat."""
    cfg = make_config()
    engine = make_engine(cfg, torch.float32, seed=0)
    st = SamplerTensors.create(PARAMS, torch.float32, torch.device("cpu"))
    normed = torch.randn(1, 1, cfg.slow.dim)
    logits = torch.nn.functional.linear(normed, engine._head_w)[0, -1] + engine._bias_w
    off = engine._win_off
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        tok = sample_window(logits, off, cfg.vocab_size, st.temperature, st.top_p, st.top_k, g)
        tok_hi = sample_window(logits, off, cfg.vocab_size, st.high_temperature, st.high_top_p, st.top_k, g)
        state_after = g.get_state()
        for previous, want in ((None, tok), (collections.deque([tok] * 10), tok_hi), (collections.deque([0] * 10), tok)):
            g2 = torch.Generator().manual_seed(seed)
            got = engine._slow_token(normed, previous, st, g2, SamplerStats())
            assert torch.equal(g2.get_state(), state_after)
            want_final = want if (previous is None or cfg.semantic_begin_id <= tok <= cfg.semantic_end_id) else tok
            assert got == want_final
