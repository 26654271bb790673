"""Sampling of many slots at once on the device, with per-slot parameters (the pooled step's).

`sample_rows` is `sampling.sample_window` for a (B, n) batch of windows with per-row temperature,
top-p and top-k: sort the window's values, pad with -inf to the aligned length, softmax + cumsum
(un-tempered), keep the prefix m, threshold `window >= sorted[m - 1]`, temper, softmax, and take
argmax(probs / -log(q)). It never syncs with the host, except with `tie_fallback`.

Ties straddling the cut (sorted[m - 1] == sorted[m]): the reference keeps the tied tokens that its
full-vocabulary sort happens to put first. With `tie_fallback` (the "generator" noise path, which
is eager anyway) those rows ask that sort, exactly as `sample_window` does (one host sync per
call); without it (the "counter" path, capturable) every tied token at the cut is kept.

Noise comes as `-log(q)` per window entry:
* `generator_noise`: q = `torch.rand((full_len,))` from the slot's own generator, in the model
  dtype, sliced to the window: the single-stream engine's draws, in its order (the caller draws the
  slow normal, slow RAS, then fast positions 1..N-1 for each slot).
* `counter_noise`: q from an integer hash of (seed, the slot's step counter, draw stream, vocab
  index) computed with int64 torch ops (32-bit values, products below 2^63, so no overflow): the
  same on CPU and CUDA, capturable in a CUDA graph, independent of the other slots. q is in (0, 1)
  with 23 random bits, in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from agent_runtime.tts.s2pro.sampling import WINDOW_ALIGN

MASK32 = 0xFFFFFFFF
_HASH_MUL = 0x045D9F3B
_INDEX_MUL = 0x27D4EB2F
_STREAM_MUL = 0x165667B1


def sample_rows(
    window: Tensor,
    offset: int,
    full_len: int,
    temperature: Tensor,
    top_p: Tensor,
    top_k: Tensor,
    neg_log_q: Tensor,
    tie_fallback: bool | Tensor = False,
) -> Tensor:
    """Tokens (B,) int64 for the windows (B, n) of logits (model dtype, -inf allowed) over vocabulary
    ids [offset, offset + n) of a `full_len` vector; temperature, top_p (B,) in the model dtype,
    top_k (B,) int64, neg_log_q (B, n) = -log(q) of the noise. Row b gives the token that
    `sample_window(window[b], offset, full_len, ...)` gives for the same noise (see the module
    docstring for ties; `tie_fallback`: True, or a (B,) bool of the rows that may fall back)."""
    sorted_vals = torch.sort(window, dim=-1, descending=True).values
    m = _kept_count(sorted_vals, full_len, top_p, top_k)
    threshold = sorted_vals.gather(-1, (m - 1)[:, None])
    keep = window >= threshold
    if tie_fallback is not False:
        keep = _resolve_ties(window, sorted_vals, m, keep, offset, full_len, tie_fallback)
    masked = torch.where(keep, window, float("-inf")) / torch.clip(temperature, min=1e-5)[:, None]
    probs = torch.softmax(masked, dim=-1)
    ratio = probs / neg_log_q
    best_ratio, best = ratio.max(dim=-1)
    # an all-zero ratio row: the reference's argmax returns index 0 of the full vector
    return torch.where(best_ratio == 0, torch.zeros_like(best), best + offset)


def _kept_count(sorted_vals: Tensor, full_len: int, top_p: Tensor, top_k: Tensor) -> Tensor:
    """m (B,) int64: how many of the sorted values survive top-k and top-p (at least 1)."""
    n = sorted_vals.shape[-1]
    padded_len = min(full_len, -(-n // WINDOW_ALIGN) * WINDOW_ALIGN)
    padded = F.pad(sorted_vals, (0, padded_len - n), value=float("-inf")) if padded_len > n else sorted_vals
    cum = torch.cumsum(torch.softmax(padded, dim=-1), dim=-1)[:, :n]
    j = torch.arange(n, device=sorted_vals.device)
    kk = top_k.clamp(max=n)
    counted = (cum <= top_p[:, None]) & (j >= 1) & (j < kk[:, None])
    return 1 + counted.sum(dim=-1)


def _resolve_ties(
    window: Tensor,
    sorted_vals: Tensor,
    m: Tensor,
    keep: Tensor,
    offset: int,
    full_len: int,
    rows: bool | Tensor,
) -> Tensor:
    """`keep` with the rows whose cut falls inside a tie redone by the reference's full sort."""
    n = window.shape[-1]
    at_cut = sorted_vals.gather(-1, (m - 1)[:, None])[:, 0]
    after_cut = sorted_vals.gather(-1, m.clamp(max=n - 1)[:, None])[:, 0]
    tied = (m < n) & (at_cut == after_cut) & (at_cut != float("-inf")) & rows
    if not bool(tied.any()):
        return keep
    keep = keep.clone()
    for b in torch.nonzero(tied).flatten().tolist():
        full = torch.full((full_len,), float("-inf"), dtype=window.dtype, device=window.device)
        full[offset : offset + n] = window[b]
        idx = torch.sort(full, descending=True).indices[: int(m[b])] - offset
        idx = idx[(idx >= 0) & (idx < n)]
        row = torch.zeros(n, dtype=torch.bool, device=window.device)
        row[idx] = True
        keep[b] = row
    return keep


def generator_noise(
    generator: torch.Generator | None,
    offset: int,
    n: int,
    full_len: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """-log(q) (n,) of one draw `torch.rand((full_len,))` from `generator`, sliced to the window
    (exactly the single-stream engine's draw and arithmetic)."""
    q = torch.rand((full_len,), dtype=dtype, device=device, generator=generator)
    return -torch.log(q[offset : offset + n])


def hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mix (int64 tensors holding values in [0, 2^32); no overflow)."""
    x = ((x >> 16) ^ x) * _HASH_MUL & MASK32
    x = ((x >> 16) ^ x) * _HASH_MUL & MASK32
    return (x >> 16) ^ x


def counter_noise(seed: Tensor, counter: Tensor, stream: int, offset: int, n: int) -> Tensor:
    """-log(q) (B, n) fp32 for vocabulary ids [offset, offset + n): q a hash of (seed (B,) int64 in
    [0, 2^32), counter (B,) int64, stream, id), uniform in (0, 1)."""
    base = hash32((seed + hash32(counter & MASK32)) & MASK32)
    base = hash32(base ^ (stream * _STREAM_MUL & MASK32))
    ids = torch.arange(offset, offset + n, device=seed.device, dtype=torch.int64)
    h = hash32((base[:, None] + ids * _INDEX_MUL) & MASK32)
    h = hash32(h ^ base[:, None])
    q = ((h >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))
    return -torch.log(q)


def fold_seed(seed: int) -> int:
    """A seed of any size as 32 bits (the counter noise's key)."""
    seed &= (1 << 64) - 1
    return (seed ^ (seed >> 32)) & MASK32
