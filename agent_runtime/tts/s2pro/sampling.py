"""Sampling exactly as the reference does it (spec 1.5), plus a fast bit-identical variant.

Reference semantics for one 1-D logit vector x of length V in the model dtype:

    sorted, idx = sort(x, descending)                   # torch's (unstable) CPU sort
    cum = cumsum(softmax(sorted))                       # UN-tempered, model dtype
    remove = (cum > top_p) | (arange(V) >= top_k); remove[0] = False
    y = where(remove scattered back to idx, -inf, x) / clip(temperature, 1e-5)
    token = argmax(softmax(y) / -log(rand(V)))          # rand in the model dtype

`temperature` and `top_p` are 0-dim tensors in the model dtype (0.8 -> 0.80078125 in bf16).

The fast variant (`sample_window`) gets the same answer without sorting V values: the slow head
can only emit semantic tokens or <|im_end|>, so every other logit is -inf and only a window
[offset, offset + n) of the vocabulary is finite. Why it is identical:

* The sorted *values* are unique whatever the sort's tie order, so sorting the window's values
  and padding with -inf gives the reference's sorted sequence; softmax and cumsum over a prefix
  padded with -inf (exp = +0, added lane by lane) give the same bits as over the whole vector.
* cum is monotone, so the kept positions are a prefix [0, m). If the m-th and (m+1)-th sorted
  values differ, the kept set is {i : x[i] >= sorted[m-1]} whatever the tie order. If they are
  equal (a tie straddles the cut), which tied tokens survive depends on the sort algorithm, so
  we run the reference sort on the full vector (rare; counted in `SamplerStats.fallbacks`).
* Elementwise ops (division, -log) on the window give the same bits as on the whole vector when
  the window is aligned (offset and end multiples of 128, or end = V), so vectorised lanes and
  tails line up; the final softmax reduction sees the same values in the same lanes.
* rand(V) is still drawn in full so the RNG stream advances exactly as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

RAS_WINDOW = 10
RAS_HIGH_TEMPERATURE = 1.0
RAS_HIGH_TOP_P = 0.9
WINDOW_ALIGN = 128


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; defaults are the reference CLI's (temperature 1.0, top_p 0.9, top_k 30)."""

    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 30

    def __post_init__(self) -> None:
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.temperature < 2:
            raise ValueError(f"temperature must be in (0, 2), got {self.temperature}")


@dataclass
class SamplerTensors:
    """0-dim parameter tensors in the model dtype, as the reference builds them."""

    temperature: Tensor
    top_p: Tensor
    top_k: int
    high_temperature: Tensor
    high_top_p: Tensor

    @classmethod
    def create(cls, params: SamplingParams, dtype: torch.dtype, device: torch.device) -> SamplerTensors:
        def t(v: float) -> Tensor:
            return torch.tensor(v, dtype=dtype, device=device)

        return cls(
            t(params.temperature), t(params.top_p), params.top_k, t(RAS_HIGH_TEMPERATURE), t(RAS_HIGH_TOP_P)
        )


@dataclass
class SamplerStats:
    """How often the exact fallback (full sort) had to run."""

    draws: int = 0
    fallbacks: int = 0
    extra: dict[str, int] = field(default_factory=dict)


# ---- the reference, verbatim semantics ----------------------------------------------------------


def reference_logits_to_probs(logits: Tensor, temperature: Tensor, top_p: Tensor, top_k: int) -> Tensor:
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cum_probs = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    positions = torch.arange(sorted_logits.shape[-1], device=logits.device)
    remove_sorted = (cum_probs > top_p) | (positions >= top_k)
    remove_sorted[0] = False
    remove = remove_sorted.scatter(dim=-1, index=sorted_indices, src=remove_sorted)
    masked = torch.where(remove, float("-inf"), logits) / torch.clip(temperature, min=1e-5)
    return torch.softmax(masked, dim=-1)


def reference_sample(
    logits: Tensor, temperature: Tensor, top_p: Tensor, top_k: int, generator: torch.Generator | None = None
) -> int:
    """One draw from a 1-D logit vector, exactly as the reference (`-log(rand)` trick)."""
    probs = reference_logits_to_probs(logits, temperature, top_p, top_k)
    q = torch.rand(probs.shape, dtype=probs.dtype, device=probs.device, generator=generator)
    return int(torch.argmax(probs / -torch.log(q)).item())


# ---- the fast exact variant ---------------------------------------------------------------------


def aligned_window(lo: int, hi: int, full_len: int) -> tuple[int, int]:
    """Smallest aligned [offset, end) covering ids lo..hi (inclusive) in a vector of full_len."""
    offset = lo // WINDOW_ALIGN * WINDOW_ALIGN
    end = min(full_len, -(-(hi + 1) // WINDOW_ALIGN) * WINDOW_ALIGN)
    return offset, end


def sample_window(
    window: Tensor,
    offset: int,
    full_len: int,
    temperature: Tensor,
    top_p: Tensor,
    top_k: int,
    generator: torch.Generator | None = None,
    stats: SamplerStats | None = None,
) -> int:
    """Same token as `reference_sample(full)` where `full` is -inf outside [offset, offset+n).

    `window` (n,) holds the logits of that range (model dtype, -inf allowed); the range must be
    aligned as `aligned_window` makes it.
    """
    n = window.numel()
    dtype, device = window.dtype, window.device
    if stats is not None:
        stats.draws += 1
    sorted_vals = torch.sort(window, descending=True).values
    padded_len = min(full_len, -(-n // WINDOW_ALIGN) * WINDOW_ALIGN)
    if padded_len > n:
        pad = torch.full((padded_len - n,), float("-inf"), dtype=dtype, device=device)
        sorted_padded = torch.cat([sorted_vals, pad])
    else:
        sorted_padded = sorted_vals
    kk = min(top_k, n)
    if kk > 1:
        probs_sorted = torch.softmax(sorted_padded, dim=-1)
        cum = torch.cumsum(probs_sorted, dim=-1)[1:kk]
        m = 1 + int(torch.count_nonzero(cum <= top_p).item())
    else:
        m = 1
    vals = sorted_vals[m - 1 : m + 1].tolist() if m < n else None
    if vals is not None and vals[0] == vals[1] and vals[0] != float("-inf"):
        # A tie straddles the cut: which tied tokens survive depends on the sort; ask it.
        if stats is not None:
            stats.fallbacks += 1
        full = torch.full((full_len,), float("-inf"), dtype=dtype, device=device)
        full[offset : offset + n] = window
        idx = torch.sort(full, descending=True).indices[:m] - offset
        idx = idx[(idx >= 0) & (idx < n)]
        keep = torch.zeros(n, dtype=torch.bool, device=device)
        keep[idx] = True
    elif vals is not None:
        keep = window >= sorted_vals[m - 1]
    else:
        keep = torch.ones(n, dtype=torch.bool, device=device)
    masked = torch.where(keep, window, float("-inf")) / torch.clip(temperature, min=1e-5)
    probs = torch.softmax(masked, dim=-1)
    q = torch.rand((full_len,), dtype=dtype, device=device, generator=generator)
    ratio = probs / -torch.log(q[offset : offset + n])
    best = int(torch.argmax(ratio).item())
    if ratio[best].item() == 0.0:  # all-zero vector: the reference's argmax returns index 0
        return 0
    return best + offset
