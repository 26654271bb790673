"""One decode step of several S2-Pro streams as one forward (the engine's batched decode).

Decoding one frame is weight-bound at batch 1: every GEMM is a GEMV over the whole matrix. With B
streams in decode at once, the per-token GEMMs run on B stacked rows instead, reading each weight
matrix once per step for all of them:

* slow AR: wqkv, wo and the SwiGLU of every layer, the final norm and `fast_project_in` on (B, 1, D),
  qk-norm and RoPE (row-wise, each row with its stream's position) on (B, 1, heads, hd); only the
  cache write and attention run per stream (`Attention.attend`), each against its own KV cache
  (`LayerKV` or flash layout) at its own position and attended length;
* the engine then applies its windowed head to the (B, 1, D) normed rows in one GEMM;
* fast AR: one pass over the codebooks for all B streams (`FastARStepper.step` on B rows, with a
  B-row fast cache owned by the batch; every frame rewrites the fast cache before reading it, so
  the streams' own fast caches carry nothing across frames). Sampling stays per stream.

A GEMM over B rows does not give the same bits as B GEMVs (fp32 on CPU), so batching is not part of
the engine's bit-exact CPU path; the results are numerically equivalent to the unbatched ones.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from agent_runtime.tts.s2pro.model import DualARConfig, DualARTransformer, FastARStepper, LayerKV, causal_mask

if TYPE_CHECKING:
    from agent_runtime.tts.s2pro.flash_decode import FlashLayerKV


@dataclass
class BatchStats:
    """What the engine's batched decode did: forwards run, frames they made, batch-size histogram."""

    forwards: int = 0
    frames: int = 0
    sizes: collections.Counter[int] = field(default_factory=collections.Counter)

    def record(self, batch: int) -> None:
        self.forwards += 1
        self.frames += batch
        self.sizes[batch] += 1


def decode_slow_batch(
    model: DualARTransformer,
    values: Tensor,
    caches: Sequence[Sequence[LayerKV | FlashLayerKV]],
    positions: Sequence[int],
    kv_lens: Sequence[int],
    math_sdpa: bool = False,
) -> tuple[Tensor, Tensor]:
    """Decode one position for each of B streams: values (B, N+1, 1), stream b's frame at
    `positions[b]` with its per-layer `caches[b]` read over `kv_lens[b]` slots.

    Returns (normed (B, 1, D), fast_in (B, 1, fast D)), row b what `model.forward_slow` returns for
    stream b alone (up to the GEMMs' row-count-dependent rounding).
    """
    device = values.device
    masks = [causal_mask(torch.tensor([p], device=device), n) for p, n in zip(positions, kv_lens, strict=True)]
    freqs = model.freqs_cis[torch.tensor(positions, device=device)].unsqueeze(1)  # (B, 1, hd/2, 2)
    x = model.embed(values)
    with sdpa_kernel(SDPBackend.MATH) if math_sdpa else contextlib.nullcontext():
        for i, layer in enumerate(model.layers):
            attn = layer.attention
            q, k, v = attn.qkv(layer.attention_norm(x))
            q, k = attn.rotate(q, k, freqs)
            rows = [
                attn.attend(q[b : b + 1], k[b : b + 1], v[b : b + 1], masks[b], caches[b][i], pos, n)
                for b, (pos, n) in enumerate(zip(positions, kv_lens, strict=True))
            ]
            h = x + attn.wo(torch.cat(rows))
            x = h + layer.feed_forward(layer.ffn_norm(h))
    return model.slow_outputs(x)


def first_code(cfg: DualARConfig, token: int) -> int:
    """The frame's first code: the slow token's semantic index (clamped, as the reference does)."""
    return min(max(token - cfg.semantic_begin_id, 0), cfg.codebook_size - 1)


class BatchedFastAR:
    """The fast AR for up to `max_batch` streams at once, on a fast cache of `max_batch` rows.

    Uses the eager `FastARStepper.step` (a `compile_fast` engine compiles its one-stream step only).
    """

    def __init__(self, model: DualARTransformer, stepper: FastARStepper, max_batch: int) -> None:
        f = model.cfg.fast
        self.model = model
        self.stepper = stepper
        self.max_batch = max_batch
        shape = (max_batch, f.n_local_heads, model.cfg.num_codebooks, f.head_dim)

        def zeros() -> Tensor:
            return torch.zeros(shape, dtype=model.dtype, device=model.device)

        self.caches = [LayerKV(zeros(), zeros()) for _ in range(f.n_layer)]

    def codes(self, fast_in: Tensor, tokens: Sequence[int], samplers: Sequence[Callable[[Tensor], int]]) -> list[list[int]]:
        """Codes of B frames: fast_in (B, 1, fast D), the slow tokens, one sampler per stream
        (called with that stream's (codebook_size,) logits, codebook by codebook)."""
        batch = len(tokens)
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"batch of {batch} streams, the fast AR takes 1..{self.max_batch}")
        cfg = self.model.cfg
        caches = [LayerKV(kv.k[:batch], kv.v[:batch]) for kv in self.caches]
        step = FastARStepper.step
        step(self.stepper, fast_in.view(batch, 1, -1), 0, caches, want_logits=False)
        codes = [first_code(cfg, tok) for tok in tokens]
        frames = [[code] for code in codes]
        emb = self.model.fast_embeddings.weight
        for k in range(1, cfg.num_codebooks):
            x = F.embedding(torch.tensor(codes, device=fast_in.device), emb).view(batch, 1, -1)
            logits = step(self.stepper, x, k, caches)
            assert logits is not None
            codes = [sample(logits[b, -1]) for b, sample in enumerate(samplers)]
            for frame, code in zip(frames, codes, strict=True):
                frame.append(code)
        return frames
