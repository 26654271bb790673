"""The pooled step's vectorised sampler (serving/sampler.py) against the reference sampler."""

from __future__ import annotations

import pytest
import torch

from agent_runtime.tts.s2pro.sampling import aligned_window, reference_sample, sample_window
from agent_runtime.tts.s2pro.serving.sampler import (
    MASK32,
    counter_noise,
    fold_seed,
    generator_noise,
    sample_rows,
)

SETTINGS = [
    (1.0, 0.9, 30),
    (0.8, 0.8, 30),
    (0.7, 0.7, 1),
    (1.3, 1.0, 500),
    (0.5, 0.3, 0),
    (1.0, 0.99, 10_000),
]


def windows(dtype: torch.dtype, full_len: int, lo: int, hi: int, rows: int, ties: bool, seed: int):
    """`rows` full logit vectors, -inf outside [lo, hi], and their aligned window."""
    gen = torch.Generator().manual_seed(seed)
    off, end = aligned_window(lo, hi, full_len)
    full = torch.full((rows, full_len), float("-inf"), dtype=dtype)
    vals = torch.randn(rows, hi + 1 - lo, generator=gen) * 2
    if ties:
        vals = (vals * 2).round() / 2
    full[:, lo : hi + 1] = vals.to(dtype)
    return full, off, end


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    ("full_len", "lo", "hi"), [(320, 258, 299), (1000, 901, 997), (4096, 0, 4095), (32, 0, 31)]
)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_rows_equal_reference_with_generator_noise(
    dtype: torch.dtype, full_len: int, lo: int, hi: int, ties: bool
) -> None:
    """Each row, with its own parameters and its generator's draw, gives the reference's token."""
    rows = len(SETTINGS)
    for trial in range(4):
        full, off, end = windows(dtype, full_len, lo, hi, rows, ties, seed=trial)
        temperature = torch.tensor([s[0] for s in SETTINGS], dtype=dtype)
        top_p = torch.tensor([s[1] for s in SETTINGS], dtype=dtype)
        top_k = torch.tensor([s[2] for s in SETTINGS])
        noise = torch.stack(
            [
                generator_noise(
                    torch.Generator().manual_seed(100 * trial + b),
                    off,
                    end - off,
                    full_len,
                    dtype,
                    full.device,
                )
                for b in range(rows)
            ]
        )
        got = sample_rows(
            full[:, off:end].clone(), off, full_len, temperature, top_p, top_k, noise, tie_fallback=True
        )
        for b, (t, p, k) in enumerate(SETTINGS):
            gen = torch.Generator().manual_seed(100 * trial + b)
            want = reference_sample(
                full[b], torch.tensor(t, dtype=dtype), torch.tensor(p, dtype=dtype), k, gen
            )
            assert int(got[b]) == want, (trial, b)


def test_tie_at_the_cut() -> None:
    """Equal logits straddling the top-k cut: with the fallback the reference's sort decides; without
    (counter mode) every tied logit at the cut is kept."""
    full = torch.full((2, 4096), -3.0)
    full[:, :200] = 1.0
    one, k30 = torch.ones(2), torch.tensor([30, 30])
    for seed in range(10):
        noise = torch.stack(
            [generator_noise(torch.Generator().manual_seed(seed), 0, 4096, 4096, torch.float32, full.device)]
            * 2
        )
        got = sample_rows(full.clone(), 0, 4096, one, one, k30, noise, tie_fallback=True)
        gen = torch.Generator().manual_seed(seed)
        want = sample_window(full[0].clone(), 0, 4096, torch.tensor(1.0), torch.tensor(1.0), 30, gen)
        assert got.tolist() == [want, want]
    # without the fallback: all 200 tied tokens are candidates
    seen = set()
    for counter in range(300):
        nlq = counter_noise(torch.tensor([7]), torch.tensor([counter]), 0, 0, 4096)
        seen.add(int(sample_rows(full[:1], 0, 4096, one[:1], one[:1], k30[:1], nlq)[0]))
    assert len(seen) > 30 and max(seen) < 200


def test_all_zero_ratio_gives_token_zero() -> None:
    """probs / -log(q) all zero (every q == 0 drawn as 1.0 is impossible, so force it): id 0."""
    window = torch.zeros(1, 128)
    nlq = torch.full((1, 128), float("inf"))
    one = torch.ones(1)
    assert sample_rows(window, 256, 512, one, one, torch.tensor([30]), nlq).tolist() == [0]


def test_counter_noise_properties() -> None:
    seeds = torch.tensor([fold_seed(s) for s in (0, 1, 2**40 + 5, 123)])
    counters = torch.tensor([0, 0, 3, 9])
    a = counter_noise(seeds, counters, 2, 256, 128)
    assert a.shape == (4, 128) and a.dtype == torch.float32
    assert torch.isfinite(a).all() and (a > 0).all()
    # each row depends only on its own (seed, counter): the same in another batch
    torch.testing.assert_close(counter_noise(seeds[2:3], counters[2:3], 2, 256, 128), a[2:3], rtol=0, atol=0)
    # the window's ids, not their positions, key the noise
    torch.testing.assert_close(counter_noise(seeds, counters, 2, 0, 384)[:, 256:], a, rtol=0, atol=0)
    assert not torch.equal(counter_noise(seeds, counters + 1, 2, 256, 128), a)
    assert not torch.equal(counter_noise(seeds, counters, 3, 256, 128), a)
    # uniform q: mean 1/2, and -log q has mean 1
    q = torch.exp(-counter_noise(torch.arange(64), torch.zeros(64, dtype=torch.int64), 0, 0, 4096))
    assert abs(q.mean().item() - 0.5) < 0.01 and abs((-q.log()).mean().item() - 1.0) < 0.02
    assert q.min().item() > 0 and q.max().item() < 1
    assert fold_seed(-1) <= MASK32 and fold_seed(5) == 5


def test_counter_sampling_follows_probabilities() -> None:
    """Draws with counter noise follow softmax(logits / T) on the kept tokens."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -2.0, -3.0, -4.0]])
    one = torch.ones(1)
    counts = torch.zeros(8)
    n = 4000
    for c in range(n):
        nlq = counter_noise(torch.tensor([3]), torch.tensor([c]), 0, 0, 8)
        counts[sample_rows(logits, 0, 8, one, one, torch.tensor([8]), nlq)[0]] += 1
    torch.testing.assert_close(counts / n, torch.softmax(logits[0], -1), rtol=0, atol=0.03)
