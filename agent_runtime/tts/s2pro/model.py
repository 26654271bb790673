"""Fish Audio S2-Pro Dual-AR text-to-semantic transformer (gpt-fast style, one file).

Shapes: B = batch (1, or several streams' decode rows), S = positions in this call, L = attended KV length,
N = num_codebooks, D = model dim, H / KV = query / key-value heads, hd = head dim.

The slow AR is a Qwen3-shaped decoder over text tokens whose input embedding also sums the
N codebook embeddings at semantic positions; the fast AR is a small decoder run once per
frame over the N codebooks. Numerics follow the reference exactly (spec section 1 and the
checklist in section 8): interleaved RoPE with a bf16-rounded table applied in fp32, the
custom RMSNorm (normalise in fp32, cast, then weight) and torch's own `F.rms_norm` for the
q/k norms, SDPA for the slow AR, plain model-dtype attention for the fast AR.

KV handling is explicit: every forward receives the cache tensors, the first position `start`
and the number of KV slots `kv_len` to attend over, so the engine decides how much of the
cache is read (the math here does not care whether the cache is 32k slots or just enough).
On CUDA the slow AR's caches may instead be `FlashLayerKV`s (flash_decode.py), which store
K/V and attend through flash-attn's KV-cache kernel themselves.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

if TYPE_CHECKING:
    from agent_runtime.tts.s2pro.flash_decode import FlashLayerKV


@dataclass(frozen=True)
class TransformerConfig:
    """One decoder stack (the slow AR or the fast AR)."""

    n_layer: int
    dim: int
    n_head: int
    n_local_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float = 1e-6
    rope_base: float = 1_000_000.0
    qk_norm: bool = False
    qkv_bias: bool = False
    o_bias: bool = False

    def __post_init__(self) -> None:
        if self.n_head % self.n_local_heads:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_local_heads {self.n_local_heads}")


@dataclass(frozen=True)
class DualARConfig:
    """The whole Dual-AR model: slow AR over the text vocabulary, fast AR over codebooks."""

    vocab_size: int
    slow: TransformerConfig
    fast: TransformerConfig
    num_codebooks: int
    codebook_size: int
    semantic_begin_id: int
    semantic_end_id: int
    max_seq_len: int
    tie_word_embeddings: bool = True
    # S2-Pro (fish_qwen3_omni) sets both; OpenAudio S1 (flat dual_ar) defaults to False for both.
    scale_codebook_embeddings: bool = True
    norm_fastlayer_input: bool = True

    @property
    def cache_len(self) -> int:
        """KV slots of the reference's static cache (`max_seq_len` rounded up to 8)."""
        return (self.max_seq_len + 7) // 8 * 8


def precompute_freqs_cis(seq_len: int, n_elem: int, base: float) -> Tensor:
    """RoPE table (seq_len, n_elem // 2, 2) of (cos, sin), computed in fp32 and stored as bf16."""
    freqs = 1.0 / (base ** (torch.arange(0, n_elem, 2)[: (n_elem // 2)].float() / n_elem))
    t = torch.arange(seq_len, device=freqs.device)
    freqs = torch.outer(t, freqs)
    cis = torch.polar(torch.ones_like(freqs), freqs)
    return torch.stack([cis.real, cis.imag], dim=-1).to(dtype=torch.bfloat16)


def apply_rotary_emb(x: Tensor, freqs_cis: Tensor) -> Tensor:
    """Interleaved (GPT-J) rotation of x (B, S, H, hd) by freqs_cis (S, hd/2, 2), in fp32
    (or (B, S, hd/2, 2): a position per batch row, for batched decoding)."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    fc = freqs_cis.view(-1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack(
        [
            xs[..., 0] * fc[..., 0] - xs[..., 1] * fc[..., 1],
            xs[..., 1] * fc[..., 0] + xs[..., 0] * fc[..., 1],
        ],
        -1,
    )
    return out.flatten(3).type_as(x)


class RMSNorm(nn.Module):
    """Reference RMSNorm: normalise in fp32, cast back to the input dtype, then scale."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class LayerKV:
    """K/V tensors of one attention layer: (B, KV, capacity, hd) each, written in place."""

    __slots__ = ("k", "v")
    seq_dim = 2  # the slot axis

    def __init__(self, k: Tensor, v: Tensor) -> None:
        self.k = k
        self.v = v

    @classmethod
    def zeros(cls, cfg: TransformerConfig, capacity: int, dtype: torch.dtype, device: torch.device) -> LayerKV:
        shape = (1, cfg.n_local_heads, capacity, cfg.head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def capacity(self) -> int:
        return self.k.shape[2]


def causal_mask(positions: Tensor, kv_len: int) -> Tensor:
    """Bool mask (1, 1, S, kv_len): query at position p sees slots 0..p (reference `causal_mask` rows)."""
    slots = torch.arange(kv_len, device=positions.device)
    return (slots[None, :] <= positions[:, None])[None, None]


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig, use_sdpa: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.use_sdpa = use_sdpa
        total = (cfg.n_head + 2 * cfg.n_local_heads) * cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, total, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.dim, bias=cfg.o_bias)
        if cfg.qk_norm:  # torch's own RMSNorm (F.rms_norm), not the custom one: numerics differ
            self.q_norm = nn.RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = nn.RMSNorm(cfg.head_dim, cfg.norm_eps)

    def forward(
        self,
        x: Tensor,
        freqs_cis: Tensor,
        mask: Tensor,
        cache: LayerKV | FlashLayerKV | None,
        start: int,
        kv_len: int,
        math_sdpa: bool = False,
    ) -> Tensor:
        """x (B, S, D) at positions start..start+S-1 -> (B, S, D).

        With a cache the new K/V are written at [start, start+S) and attention reads the first
        `kv_len` slots; `mask` is (1, 1, S, kv_len). Without a cache it attends over x itself.
        A `FlashLayerKV` cache stores K/V and attends itself (causally over [0, start+S)).
        """
        q, k, v = self.qkv(x)
        q, k = self.rotate(q, k, freqs_cis)
        return self.wo(self.attend(q, k, v, mask, cache, start, kv_len, math_sdpa))

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The projection: x (B, S, D) -> q (B, S, H, hd), k and v (B, S, KV, hd)."""
        cfg = self.cfg
        bsz, seqlen, _ = x.shape
        q_size = cfg.n_head * cfg.head_dim
        kv_size = cfg.n_local_heads * cfg.head_dim
        q, k, v = self.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(bsz, seqlen, cfg.n_head, cfg.head_dim)
        k = k.view(bsz, seqlen, cfg.n_local_heads, cfg.head_dim)
        v = v.view(bsz, seqlen, cfg.n_local_heads, cfg.head_dim)
        return q, k, v

    def rotate(self, q: Tensor, k: Tensor, freqs_cis: Tensor) -> tuple[Tensor, Tensor]:
        """qk-norm (where configured) and RoPE of q and k (freqs_cis as `apply_rotary_emb` takes it)."""
        if self.cfg.qk_norm:
            q = self.q_norm(q)
            k = self.k_norm(k)
        return apply_rotary_emb(q, freqs_cis), apply_rotary_emb(k, freqs_cis)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor,
        cache: LayerKV | FlashLayerKV | None,
        start: int,
        kv_len: int,
        math_sdpa: bool = False,
    ) -> Tensor:
        """Cache write and attention of rotated q, k and v -> (B, S, H * hd), the input of `wo`.
        Batched decoding calls this once per stream (its own cache, position and mask)."""
        cfg = self.cfg
        bsz, seqlen = q.shape[:2]
        q_size = cfg.n_head * cfg.head_dim
        if cache is not None and not isinstance(cache, LayerKV):  # flash-attn's kernel (CUDA)
            return cache.attend(q, k, v, start).reshape(bsz, seqlen, q_size)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, S, hd)

        if cache is not None:
            cache.k[:, :, start : start + seqlen] = k
            cache.v[:, :, start : start + seqlen] = v
            k = cache.k[:, :, :kv_len]
            v = cache.v[:, :, :kv_len]
        rep = cfg.n_head // cfg.n_local_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)

        if not self.use_sdpa:
            y = _eager_attention(q, k, v, mask)
        elif math_sdpa:  # callers running many layers enter this context once themselves
            with sdpa_kernel(SDPBackend.MATH):
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return y.transpose(1, 2).contiguous().view(bsz, seqlen, q_size)


def _eager_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """The fast AR's attention: everything in the model dtype (no fp32 up-cast)."""
    scale = 1 / math.sqrt(q.size(-1))
    bias = torch.zeros(1, 1, q.size(-2), k.size(-2), dtype=q.dtype, device=q.device)
    bias = torch.where(mask.logical_not(), float("-inf"), bias)
    w = q @ k.transpose(-2, -1) * scale
    w += bias
    w = torch.softmax(w, dim=-1)
    return w @ v


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), dim -> hidden -> dim (also the codec's transformer MLP)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig, use_sdpa: bool) -> None:
        super().__init__()
        self.attention = Attention(cfg, use_sdpa)
        self.feed_forward = FeedForward(cfg.dim, cfg.intermediate_size)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(
        self,
        x: Tensor,
        freqs_cis: Tensor,
        mask: Tensor,
        cache: LayerKV | FlashLayerKV | None,
        start: int,
        kv_len: int,
        math_sdpa: bool = False,
    ) -> Tensor:
        h = x + self.attention(self.attention_norm(x), freqs_cis, mask, cache, start, kv_len, math_sdpa)
        return h + self.feed_forward(self.ffn_norm(h))


class DualARTransformer(nn.Module):
    """Parameter names match the reference after its key remap (see checkpoint.py)."""

    def __init__(self, cfg: DualARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        s, f = cfg.slow, cfg.fast
        self.embeddings = nn.Embedding(cfg.vocab_size, s.dim)
        self.codebook_embeddings = nn.Embedding(cfg.codebook_size * cfg.num_codebooks, s.dim)
        self.layers = nn.ModuleList(TransformerBlock(s, use_sdpa=True) for _ in range(s.n_layer))
        self.norm = RMSNorm(s.dim, s.norm_eps)
        if not cfg.tie_word_embeddings:
            self.output = nn.Linear(s.dim, cfg.vocab_size, bias=False)
        self.fast_project_in: nn.Module = nn.Linear(s.dim, f.dim) if f.dim != s.dim else nn.Identity()
        self.fast_embeddings = nn.Embedding(cfg.codebook_size, f.dim)
        self.fast_layers = nn.ModuleList(TransformerBlock(f, use_sdpa=False) for _ in range(f.n_layer))
        self.fast_norm = RMSNorm(f.dim, f.norm_eps)
        self.fast_output = nn.Linear(f.dim, cfg.codebook_size, bias=False)
        # Non-persistent like the reference; cast with the model (bf16 values up-cast in fp32 runs).
        self.register_buffer(
            "freqs_cis", precompute_freqs_cis(cfg.cache_len, s.head_dim, s.rope_base), persistent=False
        )
        self.register_buffer(
            "fast_freqs_cis",
            precompute_freqs_cis(cfg.num_codebooks, f.head_dim, f.rope_base),
            persistent=False,
        )

    def reset_buffers(self) -> None:
        """(Re)build the RoPE tables on CPU in bf16 (needed after construction on the meta device)."""
        cfg = self.cfg
        self.freqs_cis = precompute_freqs_cis(cfg.cache_len, cfg.slow.head_dim, cfg.slow.rope_base)
        self.fast_freqs_cis = precompute_freqs_cis(cfg.num_codebooks, cfg.fast.head_dim, cfg.fast.rope_base)

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embeddings.weight.device

    # ---- slow AR -------------------------------------------------------------------------

    def embed(self, values: Tensor) -> Tensor:
        """values (B, N+1, S): row 0 token ids, rows 1..N codes -> input embeddings (B, S, D)."""
        cfg = self.cfg
        embeds = [
            self.codebook_embeddings(values[:, i + 1] + i * cfg.codebook_size) for i in range(cfg.num_codebooks)
        ]
        vq_sum = torch.stack(embeds, dim=1).sum(dim=1)
        tokens = values[:, 0]
        is_semantic = (tokens >= cfg.semantic_begin_id) & (tokens <= cfg.semantic_end_id)
        vq_sum[~is_semantic] = 0
        x = self.embeddings(tokens) + vq_sum
        if cfg.scale_codebook_embeddings:
            mask = is_semantic.unsqueeze(-1).expand_as(x)
            x = torch.where(mask, x / math.sqrt(cfg.num_codebooks + 1), x)
        return x

    def forward_slow(
        self,
        values: Tensor,
        caches: Sequence[LayerKV | FlashLayerKV] | None,
        start: int,
        kv_len: int,
        *,
        math_sdpa: bool = False,
        return_all: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Run the slow AR on values (B, N+1, S) placed at positions start..start+S-1.

        Returns (normed, fast_in): the final-normed hidden states (B, S', D) that feed the
        logits, and the fast-AR input (B, S', fast D) (normed or pre-norm per config, then
        `fast_project_in`), where S' = S with `return_all`, else 1 (last position).
        With `FlashLayerKV` caches `kv_len` is unused (the kernel reads [0, start+S)).
        """
        seqlen = values.shape[-1]
        positions = torch.arange(start, start + seqlen, device=values.device)
        if caches is None:
            kv_len = seqlen
        mask = causal_mask(positions, kv_len)
        freqs = self.freqs_cis[start : start + seqlen]
        x = self.embed(values)
        # The reference decodes under sdpa_kernel(MATH); entered once here rather than per layer.
        with sdpa_kernel(SDPBackend.MATH) if math_sdpa else contextlib.nullcontext():
            for i, layer in enumerate(self.layers):
                x = layer(x, freqs, mask, None if caches is None else caches[i], start, kv_len)
        if seqlen > 1 and not return_all:
            x = x[:, -1:]
        return self.slow_outputs(x)

    def slow_outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(normed, fast_in) of the last slow layer's output x (B, S, D), as `forward_slow` returns them."""
        normed = self.norm(x)
        hidden = normed if self.cfg.norm_fastlayer_input else x
        return normed, self.fast_project_in(hidden)

    def output_weight(self) -> Tensor:
        """(vocab, D) matrix of the slow head (the tied input embeddings for S2-Pro)."""
        return self.embeddings.weight if self.cfg.tie_word_embeddings else self.output.weight

    def slow_logits(self, normed: Tensor) -> Tensor:
        """Full-vocabulary logits (B, S, vocab) of the final-normed hidden states."""
        return F.linear(normed, self.output_weight())

    # ---- fast AR -------------------------------------------------------------------------

    def new_fast_caches(self) -> list[LayerKV]:
        """Fast-AR KV cache: num_codebooks slots per layer, like the reference."""
        f = self.cfg.fast
        return [LayerKV.zeros(f, self.cfg.num_codebooks, self.dtype, self.device) for _ in range(f.n_layer)]

    def forward_fast(self, x: Tensor, pos: int, caches: list[LayerKV]) -> Tensor:
        """One fast-AR position: x (B, 1, fast D) at codebook position `pos` -> logits (B, 1, codebook_size)."""
        n = self.cfg.num_codebooks
        mask = causal_mask(torch.tensor([pos], device=x.device), n)
        freqs = self.fast_freqs_cis[pos : pos + 1]
        for layer, cache in zip(self.fast_layers, caches, strict=True):
            x = layer(x, freqs, mask, cache, pos, n)
        return self.fast_output(self.fast_norm(x))

    def fast_logits_teacher(self, hidden: Tensor, codes: Tensor) -> Tensor:
        """Fast logits (N, codebook_size) for input [hidden, emb(codes[0]), ..., emb(codes[N-2])]."""
        caches = self.new_fast_caches()
        out = [self.forward_fast(hidden.view(1, 1, -1), 0, caches)[0, 0]]
        for k in range(1, self.cfg.num_codebooks):
            emb = self.fast_embeddings(codes[k - 1 : k]).view(1, 1, -1)
            out.append(self.forward_fast(emb, k, caches)[0, 0])
        return torch.stack(out)


class FastARStepper:
    """Per-frame fast AR with fewer Python/dispatch steps than `forward_fast`, same arithmetic.

    Precomputes the per-position RoPE rows and attention biases, calls the layers' tensors
    directly, rotates q and k in one go (elementwise, so the same bits) and, at position 0
    (whose logits the reference discards), computes only the last layer's K/V. Bit-identity
    with `forward_fast` is checked by the tests.
    """

    def __init__(self, model: DualARTransformer) -> None:
        cfg = model.cfg
        f = cfg.fast
        self.model = model
        self.cfg = cfg
        self.n_cb = cfg.num_codebooks
        self.q_size = f.n_head * f.head_dim
        self.kv_size = f.n_local_heads * f.head_dim
        self.rep = f.n_head // f.n_local_heads
        self.scale = 1 / math.sqrt(f.head_dim)
        self.qk_norm = f.qk_norm
        device, dtype = model.device, model.dtype
        self.freqs = [model.fast_freqs_cis[p : p + 1].view(1, 1, 1, f.head_dim // 2, 2) for p in range(self.n_cb)]
        slots = torch.arange(self.n_cb, device=device)
        zeros = torch.zeros(1, 1, 1, self.n_cb, dtype=dtype, device=device)
        self.bias = [torch.where((slots <= p).logical_not()[None, None, None], float("-inf"), zeros) for p in range(self.n_cb)]
        self.layers = list(model.fast_layers)

    def _rope(self, x: Tensor, pos: int) -> Tensor:
        xs = x.float().reshape(*x.shape[:-1], -1, 2)
        fc = self.freqs[pos]
        out = torch.stack(
            [
                xs[..., 0] * fc[..., 0] - xs[..., 1] * fc[..., 1],
                xs[..., 1] * fc[..., 0] + xs[..., 0] * fc[..., 1],
            ],
            -1,
        )
        return out.flatten(3).type_as(x)

    def _norm(self, norm: RMSNorm, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + norm.eps)).type_as(x) * norm.weight

    def step(self, x: Tensor, pos: int, caches: list[LayerKV], want_logits: bool = True) -> Tensor | None:
        """x (B, 1, fast D) at codebook position `pos` -> logits (B, 1, codebook_size) (or None).

        B is 1 for one stream; batched decoding passes B streams' rows and caches of B rows."""
        f = self.cfg.fast
        bsz = x.shape[0]
        n_layers = len(self.layers)
        for i, (layer, cache) in enumerate(zip(self.layers, caches, strict=True)):
            attn = layer.attention
            h_in = self._norm(layer.attention_norm, x)
            qkv = F.linear(h_in, attn.wqkv.weight, attn.wqkv.bias)
            heads = f.n_head + f.n_local_heads
            if self.qk_norm:
                q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
                q = attn.q_norm(q.view(bsz, 1, f.n_head, f.head_dim))
                k = attn.k_norm(k.view(bsz, 1, f.n_local_heads, f.head_dim))
                qk = self._rope(torch.cat([q, k], dim=2), pos)
            else:
                qk = self._rope(qkv[..., : heads * f.head_dim].view(bsz, 1, heads, f.head_dim), pos)
                v = qkv[..., heads * f.head_dim :]
            k = qk[:, :, f.n_head :].transpose(1, 2)
            cache.k[:, :, pos : pos + 1] = k
            cache.v[:, :, pos : pos + 1] = v.view(bsz, 1, f.n_local_heads, f.head_dim).transpose(1, 2)
            if not want_logits and i == n_layers - 1:
                return None
            q = qk[:, :, : f.n_head].transpose(1, 2)
            keys = cache.k.repeat_interleave(self.rep, dim=1)
            values = cache.v.repeat_interleave(self.rep, dim=1)
            w = q @ keys.transpose(-2, -1) * self.scale
            w += self.bias[pos]
            w = torch.softmax(w, dim=-1)
            y = (w @ values).transpose(1, 2).contiguous().view(bsz, 1, self.q_size)
            h = x + F.linear(y, attn.wo.weight, attn.wo.bias)
            ff = layer.feed_forward
            n = self._norm(layer.ffn_norm, h)
            x = h + F.linear(F.silu(F.linear(n, ff.w1.weight)) * F.linear(n, ff.w3.weight), ff.w2.weight)
        model = self.model
        return F.linear(self._norm(model.fast_norm, x), model.fast_output.weight)
