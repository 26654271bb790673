"""A small, readable Llama decoder in PyTorch (gpt-fast style), sized for batch-1 CPU inference.

Weights use llama.cpp's GGUF layout: the converter permutes the rows of Q and K so that rotary
embedding rotates *adjacent* pairs (x0, x1), (x2, x3), ... instead of HF's two halves; `apply_rope`
therefore rotates interleaved pairs (as complex numbers) and the GGUF weights are used as stored.
The KV cache is preallocated for `max_context` positions; `forward` appends to it at `start`.

Decoding one token reads every weight once, so it is bound by memory bandwidth. `use_decode_dtype`
keeps a second, half-precision copy of the weights for one-row matvecs (decode steps and the
output head): half the bytes to read. `use_decode_int4` instead keeps the checkpoint's own 4-bit
blocks (Q4_0/Q4_1, one eighth of the fp32 bytes) for torch's int4 weight-only matvec: the weights
are exactly the checkpoint's, the activations go through bf16. Prefill (many rows, compute bound)
keeps the fp32 weights unless `use_prefill_dtype` gives it bf16 copies (fast on CPUs with AMX or
AVX-512 bf16, several times slower than fp32 on AVX2-only CPUs).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    rope_theta: float
    norm_eps: float
    context_length: int

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class Linear(nn.Linear):
    """`nn.Linear` without bias or random init: weights are always loaded from the checkpoint.

    With a `decode_weight` (a half-precision copy of `weight`), one-row inputs are multiplied by
    that copy instead (input rounded to its dtype, fp32 output). With `decode_packed` (an int8
    copy, per output channel scales, packed for fbgemm), one-row inputs go through fbgemm's dynamic
    int8 matvec (the input row quantised per call to 7 bits, `reduce_range`, which keeps AVX2's
    16-bit accumulation from saturating; fp32 output). With `decode_int4` (the checkpoint's 4-bit
    blocks packed for torch's CPU int4 kernel, see `pack_int4`), one-row inputs are rounded to bf16
    and multiplied by exactly the stored weights (bf16 output, returned as fp32)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.prefill_weight: torch.Tensor | None = None  # a bf16 copy for many-row inputs (prefill)
        self.decode_weight: torch.Tensor | None = None
        self.decode_packed: Any = None
        self.decode_int4: Int4Weight | None = None

    def reset_parameters(self) -> None:
        pass

    def forward(self, x: torch.Tensor, prefill: bool = False) -> torch.Tensor:
        """`prefill`: x is (part of) a prompt, multiplied by the prefill copy if there is one, in
        `PREFILL_BLOCK`-row calls (so a row's linears do not depend on how the prompt was chunked;
        attention still may, on CPUs whose fp32 GEMMs pick kernels by row count: LocalLM returns a
        restarted prompt's stored logits rather than re-feeding it). Otherwise one-row inputs take
        the decode copies."""
        if prefill:
            if self.prefill_weight is not None:
                return blocked_linear(x, self.prefill_weight)
            return F.linear(x, self.weight)
        if x.dim() == 1 or x.shape[0] == 1:
            if self.decode_int4 is not None:
                return self.decode_int4.matvec(x)
            if self.decode_packed is not None:
                row = x.reshape(1, -1).float()
                return torch.ops.quantized.linear_dynamic(row, self.decode_packed, True).reshape(*x.shape[:-1], -1)
            dw = self.decode_weight
            if dw is not None:
                return F.linear(x.to(dw.dtype), dw).to(x.dtype)
        return F.linear(x, self.weight)


PREFILL_BLOCK = 32


def blocked_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (T, in) @ weight.T in calls of exactly `PREFILL_BLOCK` rows (the last padded with zeros), in
    weight's dtype, returned in x's. oneDNN's bf16 GEMM picks its kernel by the row count, and a row's
    result differs between kernels; with one row count every row comes out the same wherever it sits."""
    t = x.shape[0]
    padded = F.pad(x.to(weight.dtype), (0, 0, 0, -t % PREFILL_BLOCK))
    out = torch.cat([F.linear(block, weight) for block in padded.split(PREFILL_BLOCK)])
    return out[:t].to(x.dtype)


def pack_int8(weight: torch.Tensor) -> Any:
    """`weight` (out, in) as fbgemm's packed int8 matrix: symmetric, one scale per output row."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
    zeros = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated in torch; fbgemm's kernel is what we use
        warnings.simplefilter("ignore")
        q = torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None)


@dataclass(frozen=True, slots=True)
class Int4Weight:
    """A (out, in) matrix stored as 4-bit integers in blocks of 32 along each row
    (w = q * scale + offset, as Q4_0/Q4_1 store it), packed for `_weight_int4pack_mm_for_cpu`."""

    packed: torch.Tensor  # uint8 (out, in // 2), the kernel's layout
    scales_and_zeros: torch.Tensor  # bf16 (in // 32, out, 2): the kernel computes (q - 8) * scale + zero

    BLOCK = 32

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        row = x.reshape(1, -1).to(torch.bfloat16)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(row, self.packed, self.BLOCK, self.scales_and_zeros)
        return out.to(x.dtype).reshape(*x.shape[:-1], -1)


def pack_int4(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> Int4Weight:
    """Pack q (out, in) integers 0..15 with per-block (out, in // 32) `scale` and `offset`.

    The kernel's zero point is in the weight's domain, (q - 8) * scale + zero, so zero = offset + 8 * scale.
    Scales and zeros are kept in bf16 (the kernel's requirement): Q4_1's fp16 scales lose 3 bits there.
    """
    out_features, in_features = q.shape
    if (
        in_features % Int4Weight.BLOCK
        or out_features % 16
        or scale.shape != (out_features, in_features // Int4Weight.BLOCK)
    ):
        raise ValueError(
            f"int4 packing needs rows in multiples of 16 and blocks of {Int4Weight.BLOCK}: got q {tuple(q.shape)}, "
            f"scale {tuple(scale.shape)}"
        )
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 2)
    zeros = offset + 8.0 * scale
    scales_and_zeros = torch.stack([scale.t(), zeros.t()], dim=-1).to(torch.bfloat16).contiguous()
    return Int4Weight(packed, scales_and_zeros)


def int4_supported() -> bool:
    """Whether this torch build has the CPU int4 weight-only matvec (x86 and arm64 builds of torch >= 2.5)."""
    try:
        w = pack_int4(torch.zeros(16, 32, dtype=torch.uint8), torch.ones(16, 1), torch.zeros(16, 1))
        w.matvec(torch.ones(32))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


def int8_supported() -> bool:
    """Whether this torch build has fbgemm's dynamic int8 linear (x86 CPU builds do)."""
    try:
        packed = pack_int8(torch.ones(2, 4))
        torch.ops.quantized.linear_dynamic(torch.ones(1, 4), packed, True)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rope_table(head_dim: int, length: int, theta: float) -> torch.Tensor:
    """Complex rotations e^{i * pos * theta^(-2j/d)}, shape (length, head_dim // 2)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x (T, H, D) by rot (T, D/2)."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * rot[:, None, :]).flatten(-2).type_as(x)


class Attention(nn.Module):
    """Grouped-query attention over the KV cache.

    Query heads are grouped by the KV head they share (head h uses KV head h // group), so each
    KV head attends for `group * T` query rows in one `bmm`: no K/V repetition, no GQA expansion.
    """

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        self.wqkv = Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim)
        self.wo = Linear(cfg.n_heads * cfg.head_dim, cfg.dim)

    def forward(
        self,
        x: torch.Tensor,
        rot: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        start: int,
        blocked: torch.Tensor | None,
        prefill: bool = False,
    ) -> torch.Tensor:
        """x (T, dim) at positions start..; caches (n_kv, max_ctx, hd); blocked (group*T, start+T) or None."""
        t, end = x.shape[0], start + x.shape[0]
        qk, v = self.wqkv(x, prefill).split([(self.n_heads + self.n_kv) * self.hd, self.n_kv * self.hd], -1)
        qk = apply_rope(qk.view(t, self.n_heads + self.n_kv, self.hd), rot)  # rotate q and k together
        q, k = qk.split([self.n_heads, self.n_kv], 1)
        k_cache[:, start:end] = k.transpose(0, 1)
        v_cache[:, start:end] = v.view(t, self.n_kv, self.hd).transpose(0, 1)
        q = q.transpose(0, 1).reshape(self.n_kv, -1, self.hd)  # (n_kv, group * T, hd)
        scores = torch.bmm(q, k_cache[:, :end].transpose(1, 2)).mul_(self.scale)
        if blocked is not None:
            scores.masked_fill_(blocked, float("-inf"))
        out = torch.bmm(torch.softmax(scores, dim=-1), v_cache[:, :end])
        return self.wo(out.view(self.n_heads, t, self.hd).transpose(0, 1).reshape(t, -1), prefill)


class FeedForward(nn.Module):
    """SwiGLU with gate and up projections fused into one matmul."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.w13 = Linear(cfg.dim, 2 * cfg.hidden_dim)
        self.w2 = Linear(cfg.hidden_dim, cfg.dim)

    def forward(self, x: torch.Tensor, prefill: bool = False) -> torch.Tensor:
        gate, up = self.w13(x, prefill).chunk(2, -1)
        return self.w2(F.silu(gate) * up, prefill)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)


class Llama(nn.Module):
    """Decoder-only Llama with tied or separate output head and a preallocated KV cache."""

    def __init__(self, cfg: LlamaConfig, max_context: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_context = min(max_context, cfg.context_length)
        self.tok_embeddings = Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = Linear(cfg.dim, cfg.vocab_size)
        shape = (cfg.n_layers, cfg.n_kv_heads, self.max_context, cfg.head_dim)
        self.register_buffer("rot", torch.empty(self.max_context, cfg.head_dim // 2, dtype=torch.complex64), persistent=False)
        self.register_buffer("k_cache", torch.empty(shape), persistent=False)
        self.register_buffer("v_cache", torch.empty(shape), persistent=False)
        if self.rot.device.type != "meta":
            self.init_buffers()

    @property
    def decode_dtype(self) -> torch.dtype:
        """The dtype one-token steps multiply with (the weights' own unless `use_decode_dtype`;
        torch.qint8 for the packed int8 copies, torch.quint4x2 for the checkpoint's 4-bit blocks)."""
        if self.layers[0].feed_forward.w2.decode_int4 is not None:
            return torch.quint4x2
        if self.output.decode_packed is not None:
            return torch.qint8
        dw = self.output.decode_weight
        return self.output.weight.dtype if dw is None else dw.dtype

    def use_decode_dtype(self, dtype: torch.dtype | None) -> None:
        """Multiply one-row inputs by a copy of every linear weight in `dtype` (torch.qint8: packed
        int8 for fbgemm; None or the weights' own dtype: drop the copies)."""
        for module in self.modules():
            if isinstance(module, Linear):
                module.decode_int4 = None
                same = dtype is None or dtype == module.weight.dtype
                module.decode_packed = pack_int8(module.weight) if dtype == torch.qint8 else None
                module.decode_weight = None if same or dtype == torch.qint8 else module.weight.detach().to(dtype)

    @property
    def prefill_dtype(self) -> torch.dtype:
        """The dtype many-row inputs (prefill) multiply with: the weights' own unless `use_prefill_dtype`."""
        pw = self.layers[0].feed_forward.w2.prefill_weight
        return self.layers[0].feed_forward.w2.weight.dtype if pw is None else pw.dtype

    def use_prefill_dtype(self, dtype: torch.dtype | None) -> None:
        """Multiply many-row inputs of the block linears by copies in `dtype` (bf16: the CPU's AMX or
        AVX-512 bf16 GEMM); None or the weights' own dtype drops the copies. The output head only ever
        sees one row (the last position), so it keeps its weights."""
        for module in self.layers.modules():
            if isinstance(module, Linear):
                same = dtype is None or dtype == module.weight.dtype
                module.prefill_weight = None if same else module.weight.detach().to(dtype)

    def use_decode_int4(self, blocks: dict[Linear, Int4Weight]) -> None:
        """One-token steps multiply every linear in `blocks` by its packed 4-bit weights; the others
        (the output head: SmolLM2 ties it to the 8-bit embedding) keep fp32."""
        self.use_decode_dtype(None)
        for module, weight in blocks.items():
            module.decode_int4 = weight

    def init_buffers(self) -> None:
        """Fill the rope table and zero the KV cache."""
        with torch.no_grad():
            self.rot.copy_(rope_table(self.cfg.head_dim, self.max_context, self.cfg.rope_theta))
            self.k_cache.zero_()
            self.v_cache.zero_()

    def forward(self, tokens: torch.Tensor, start: int, prefill: bool | None = None) -> torch.Tensor:
        """Feed `tokens` (T,) at positions start..start+T-1; return the last position's logits (vocab,).
        `prefill` (default: T > 1) picks the block linears' prefill weights over their decode ones."""
        t = tokens.shape[0]
        prefill = t > 1 if prefill is None else prefill
        end = start + t
        if end > self.max_context:
            raise ValueError(f"context overflow: {end} > {self.max_context} positions")
        blocked = None
        if t > 1:  # causal mask over the cached prefix plus the new block, one copy per grouped head
            group = self.cfg.n_heads // self.cfg.n_kv_heads
            blocked = torch.ones(t, end, dtype=torch.bool).triu(diagonal=start + 1).repeat(group, 1)
        rot = self.rot[start:end]
        x = self.tok_embeddings(tokens)
        for i, layer in enumerate(self.layers):
            h = layer.attention_norm(x)
            x = x + layer.attention(h, rot, self.k_cache[i], self.v_cache[i], start, blocked, prefill)
            x = x + layer.feed_forward(layer.ffn_norm(x), prefill)
        return self.output(self.norm(x[-1]))
