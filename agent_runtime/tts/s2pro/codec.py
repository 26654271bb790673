"""S2-Pro audio codec (causal "modded DAC", 44.1 kHz, 10 codebooks) in plain PyTorch.

Shapes use B = batch, C = channels, L = samples at some rate, T = code frames, N = codebooks.

    encode: audio (B, 1, L) --encoder--> latent (B, latent_dim, L / hop)
            --quantizer.encode--> codes (B, N, T),  T = ceil(L / frame_length)
    decode: codes (B, N, T) --quantizer.decode--> latent (B, latent_dim, T * factor)
            --decoder--> audio (B, 1, T * frame_length)

Every layer on the decode path is causal. Modules that look at the past take an optional
`StreamCache`: with it they prepend the context carried from the previous call (conv left context,
transposed-conv overlap, attention keys/values and RoPE position) and store what the next call
needs, so decoding frames chunk by chunk equals one decode of all frames (see `streaming.py`).
Module and parameter names follow the reference checkpoint (`codec.pth`) after weight-norm fusion
(`codec_loader.py`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent_runtime.tts.s2pro.codec_config import CodecConfig, TransformerConfig
from agent_runtime.tts.s2pro.model import FeedForward, RMSNorm  # the Dual-AR's own layers
from agent_runtime.tts.s2pro.model import apply_rotary_emb as apply_rope  # interleaved RoPE in fp32

__all__ = ["CodecConfig", "S2ProCodec", "StreamCache"]


class StreamCache:
    """State carried between streaming calls, keyed by module (one entry per stateful layer)."""

    def __init__(self) -> None:
        self._store: dict[int, Any] = {}

    def get(self, module: nn.Module) -> Any:
        return self._store.get(id(module))

    def put(self, module: nn.Module, value: Any) -> None:
        self._store[id(module)] = value

    def clear(self) -> None:
        self._store.clear()

    def copy(self) -> StreamCache:
        """A copy whose tensors are cloned (the two caches evolve independently)."""
        other = StreamCache()
        for key, value in self._store.items():
            if isinstance(value, Tensor):
                value = value.clone()
            elif isinstance(value, tuple):
                value = tuple(t.clone() if isinstance(t, Tensor) else t for t in value)
            other._store[key] = value
        return other

    def tensors(self) -> list[Tensor]:
        """Every tensor held (for state-size accounting)."""
        out: list[Tensor] = []
        for v in self._store.values():
            items = v if isinstance(v, tuple | list) else (v,)
            out.extend(t for t in items if isinstance(t, Tensor))
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


# ----------------------------------------------------------------------------- convolutions
# Streaming calls see short inputs (a few frames) but full-size weights. torch's CPU conv kernels
# re-lay-out the weight on every call, which then dominates (a 1536->768 transposed conv on 5 steps:
# ~0.6 s); one matrix product against the weight as stored costs ~1 ms. Full decodes keep torch's
# kernels (the reference's arithmetic); streaming uses these GEMM forms (same sums, other order).
def conv1d_gemm(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int = 1) -> Tensor:
    """Stride-1, ungrouped conv1d without padding as one GEMM: (B, C_in, L) -> (B, C_out, L - eff + 1)."""
    c_out, c_in, k = weight.shape
    bsz = x.shape[0]
    cols = x.unfold(-1, (k - 1) * dilation + 1, 1)  # (B, C_in, L_out, eff)
    if dilation > 1:
        cols = cols[..., ::dilation]  # (B, C_in, L_out, k)
    n_out = cols.shape[2]
    cols = cols.permute(1, 3, 0, 2).reshape(c_in * k, bsz * n_out)
    y = torch.mm(weight.reshape(c_out, c_in * k), cols)  # (C_out, B * L_out)
    if bias is not None:
        y = y + bias[:, None]
    return y.view(c_out, bsz, n_out).transpose(0, 1)


def conv_transpose1d_gemm(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
    """ConvTranspose1d as a GEMM plus overlap-add: (B, C_in, L) -> (B, C_out, (L - 1) * stride + k)."""
    c_in, c_out, k = weight.shape
    bsz, _, length = x.shape
    phases = math.ceil(k / stride)
    xs = x.permute(0, 2, 1).reshape(bsz * length, c_in)
    cols = torch.mm(xs, weight.reshape(c_in, c_out * k)).view(bsz, length, c_out, k)  # weight read row-major
    if phases * stride != k:
        cols = F.pad(cols, (0, phases * stride - k))
    cols = cols.view(bsz, length, c_out, phases, stride)  # input t -> output block t + phase
    y = x.new_zeros(bsz, length + phases - 1, c_out, stride)
    for p in range(phases):
        y[:, p : p + length] += cols[:, :, :, p]
    y = y.permute(0, 2, 1, 3).reshape(bsz, c_out, -1)[..., : (length - 1) * stride + k]
    return y if bias is None else y + bias[:, None]


def _gemm_pays(n_out: int, c_in: int, k: int) -> bool:
    """Short outputs relative to the weight: one GEMM beats the conv kernels (measured on CPU)."""
    return 2 * n_out <= c_in * k


class CausalConv1d(nn.Module):
    """Conv1d padded on the left by `dilation*(k-1)+1 - stride` (plus right zeros to complete a stride).

    Parameters live in `self.conv` (an nn.Conv1d) so names match the checkpoint (`<name>.conv.weight`).
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, stride=stride, dilation=dilation, groups=groups)
        self.stride = stride
        self.effective_kernel = (kernel_size - 1) * dilation + 1
        self.left_pad = self.effective_kernel - stride

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:  # (B, C, L) -> (B, C', L/stride)
        if cache is None:
            length = x.shape[-1]
            n_out = math.ceil((length - self.effective_kernel + self.left_pad) / self.stride + 1)
            right = (n_out - 1) * self.stride + (self.effective_kernel - self.left_pad) - length
            x = F.pad(x, (self.left_pad, right), mode="constant", value=0.0)
        else:
            if self.stride != 1:
                raise ValueError("streaming supports stride-1 convolutions only")
            if self.left_pad > 0:
                ctx = cache.get(self)
                if ctx is None:
                    ctx = x.new_zeros(x.shape[0], x.shape[1], self.left_pad)
                x = torch.cat([ctx, x], dim=-1)
                cache.put(self, x[..., -self.left_pad:].clone())
            k = self.conv.kernel_size[0]
            n_out = x.shape[-1] - self.effective_kernel + 1
            if self.conv.groups == 1 and x.device.type == "cpu" and _gemm_pays(n_out, x.shape[1], k):
                return conv1d_gemm(x, self.conv.weight, self.conv.bias, self.conv.dilation[0])
        return self.conv(x).contiguous()


class CausalConvTranspose1d(nn.Module):
    """ConvTranspose1d with `kernel - stride` samples trimmed on the right: exactly `stride * L` out."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(c_in, c_out, kernel_size, stride=stride)
        self.stride = stride
        self.trim = kernel_size - stride
        # input frames before a chunk that still contribute to its first output samples
        self.context = math.ceil(self.trim / stride)

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:  # (B, C, L) -> (B, C', s*L)
        n_ctx = 0
        if cache is not None and self.context > 0:
            ctx = cache.get(self)
            if ctx is None:
                ctx = x.new_zeros(x.shape[0], x.shape[1], self.context)
            x = torch.cat([ctx, x], dim=-1)
            cache.put(self, x[..., -self.context:].clone())
            n_ctx = self.context
        if cache is not None and x.device.type == "cpu":
            y = conv_transpose1d_gemm(x, self.conv.weight, self.conv.bias, self.stride)
        else:
            y = self.conv(x)
        y = y[..., n_ctx * self.stride : y.shape[-1] - self.trim]
        return y.contiguous()


class Snake1d(nn.Module):
    """x + sin(alpha x)^2 / (alpha + 1e-9), per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        shape = x.shape
        x = x.reshape(shape[0], shape[1], -1)
        x = x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)
        return x.reshape(shape)


class Seq(nn.Sequential):
    """nn.Sequential that threads the stream cache through its children."""

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:  # type: ignore[override]
        for module in self:
            x = module(x, cache)
        return x


class ResidualUnit(nn.Module):
    """Snake -> dilated causal conv k -> Snake -> conv k1, plus the input."""

    def __init__(self, dim: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.block = Seq(
            Snake1d(dim),
            CausalConv1d(dim, dim, kernel_size, dilation=dilation),
            Snake1d(dim),
            CausalConv1d(dim, dim, 1),
        )

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        y = self.block(x, cache)
        crop = x.shape[-1] - y.shape[-1]
        if crop > 0:
            x = x[..., :-crop]
        return x + y


# ------------------------------------------------------------------------------ transformer
_ROPE_BLOCK = 4096
_rope_tables: dict[tuple[int, float, str, str], Tensor] = {}


def rope_table(n_positions: int, head_dim: int, base: float, dtype: str, device: torch.device | str = "cpu") -> Tensor:
    """cos/sin table (P, head_dim/2, 2) for interleaved RoPE, computed in fp32, stored in `dtype`.

    Grown lazily in blocks of 4096 positions and shared by all transformers with the same head
    size and base; a position's values do not depend on the table length.
    """
    key = (head_dim, float(base), dtype, str(device))
    table = _rope_tables.get(key)
    if table is None or table.shape[0] < n_positions:
        size = max(_ROPE_BLOCK, math.ceil(n_positions / _ROPE_BLOCK) * _ROPE_BLOCK)
        base_value: float | int = int(base) if float(base).is_integer() else base
        inv_freq = 1.0 / (base_value ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
        angles = torch.outer(torch.arange(size), inv_freq)
        rot = torch.polar(torch.ones_like(angles), angles)
        table = torch.stack([rot.real, rot.imag], dim=-1).to(getattr(torch, dtype)).to(device)
        _rope_tables[key] = table
    return table


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))  # init 0.01 in training; always loaded

    def forward(self, x: Tensor) -> Tensor:
        return x.mul_(self.gamma)


class Attention(nn.Module):
    """Multi-head attention with fused qkv, interleaved RoPE, a causal window and a KV cache."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.n_head, cfg.n_local_heads, cfg.head_dim
        self.window = cfg.window_size
        self.wqkv = nn.Linear(cfg.dim, (cfg.n_head + 2 * cfg.n_local_heads) * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor, rope: Tensor, mask: Tensor, cache: StreamCache | None) -> Tensor:
        bsz, seqlen, _ = x.shape  # x: (B, T, dim)
        kv = self.n_kv * self.head_dim
        q, k, v = self.wqkv(x).split([self.n_head * self.head_dim, kv, kv], dim=-1)
        q = apply_rope(q.view(bsz, seqlen, self.n_head, self.head_dim), rope)
        k = apply_rope(k.view(bsz, seqlen, self.n_kv, self.head_dim), rope)
        v = v.view(bsz, seqlen, self.n_kv, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if cache is not None:
            past = cache.get(self)
            if past is not None:
                k = torch.cat([past[0], k], dim=2)
                v = torch.cat([past[1], v], dim=2)
            keep = self.window - 1
            cache.put(self, (k[:, :, -keep:].clone(), v[:, :, -keep:].clone()) if keep > 0 else None)
        if self.n_head != self.n_kv:
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(bsz, seqlen, self.n_head * self.head_dim)
        return self.wo(y)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg.dim, cfg.intermediate_size)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention_layer_scale = LayerScale(cfg.dim)
        self.ffn_layer_scale = LayerScale(cfg.dim)

    def forward(self, x: Tensor, rope: Tensor, mask: Tensor, cache: StreamCache | None) -> Tensor:
        h = x + self.attention_layer_scale(self.attention(self.attention_norm(x), rope, mask, cache))
        return h + self.ffn_layer_scale(self.feed_forward(self.ffn_norm(h)))


class WindowedTransformer(nn.Module):
    """Causal transformer over (B, C, T) with attention limited to the last `window` positions.

    RoPE positions count from 0 at the first frame of a call; with a cache they continue across
    calls (position = index of the frame since the stream started), as a single call would see them.
    """

    def __init__(self, cfg: TransformerConfig, rope_dtype: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.rope_dtype = rope_dtype
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def _mask(self, q_start: int, n_q: int, k_start: int, n_k: int, device: torch.device) -> Tensor:
        qpos = torch.arange(q_start, q_start + n_q, device=device).view(-1, 1)
        kpos = torch.arange(k_start, k_start + n_k, device=device).view(1, -1)
        allowed = (kpos <= qpos) & (kpos >= (qpos - self.cfg.window_size + 1).clamp(min=0))
        return allowed[None, None]  # (1, 1, n_q, n_k)

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:  # (B, C, T) -> (B, C, T)
        x = x.transpose(1, 2)  # (B, T, C)
        seqlen = x.shape[1]
        start, n_past = 0, 0
        if cache is not None:
            start = cache.get(self) or 0
            n_past = min(start, self.cfg.window_size - 1)
            cache.put(self, start + seqlen)
        table = rope_table(start + seqlen, self.cfg.head_dim, self.cfg.rope_base, self.rope_dtype, x.device)
        rope = table[start : start + seqlen]
        mask = self._mask(start, seqlen, start - n_past, n_past + seqlen, x.device)
        for layer in self.layers:
            x = layer(x, rope, mask, cache)
        x = self.norm(x)
        return x.transpose(1, 2)


# --------------------------------------------------------------------------------- encoder
class EncoderBlock(nn.Module):
    """3 residual units at C/2 -> Snake -> strided causal conv to C -> optional transformer."""

    def __init__(self, cfg: CodecConfig, i: int) -> None:
        super().__init__()
        e = cfg.encoder
        dim, stride = e.block_channels[i], e.rates[i]
        layers: list[nn.Module] = [ResidualUnit(dim // 2, e.residual_kernel_size, d) for d in e.residual_dilations]
        layers += [Snake1d(dim // 2), CausalConv1d(dim // 2, dim, 2 * stride, stride=stride)]
        tcfg = e.block_transformer(i)
        if tcfg is not None:
            layers.append(WindowedTransformer(tcfg, cfg.rope_table_dtype))
        self.block = Seq(*layers)

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        return self.block(x, cache)


class Encoder(nn.Module):
    """audio (B, 1, L) -> latent (B, latent_dim, L / hop_length)."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        e = cfg.encoder
        layers: list[nn.Module] = [CausalConv1d(1, e.dim, e.stem_kernel_size)]
        layers += [EncoderBlock(cfg, i) for i in range(len(e.rates))]
        layers += [Snake1d(e.block_channels[-1]), CausalConv1d(e.block_channels[-1], cfg.latent_dim, e.final_kernel_size)]
        self.block = Seq(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


# ------------------------------------------------------------------------------- quantizer
class ConvNeXtBlock(nn.Module):
    """Causal depthwise conv -> LayerNorm -> Linear x ratio -> GELU -> Linear -> gamma, plus input."""

    def __init__(self, dim: int, kernel_size: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, kernel_size, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pwconv1 = nn.Linear(dim, int(mlp_ratio * dim))
        self.pwconv2 = nn.Linear(int(mlp_ratio * dim), dim)
        self.gamma = nn.Parameter(torch.ones(dim))  # init 1e-6 in training; always loaded

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:  # (B, C, T)
        y = self.dwconv(x, cache).permute(0, 2, 1)  # (B, T, C)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        y = (self.gamma * y).permute(0, 2, 1)
        return x + y


class VectorQuantize(nn.Module):
    """Factorised, cosine-distance VQ: in_proj to codebook_dim, nearest code, out_proj back."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.in_proj = nn.Conv1d(input_dim, codebook_dim, 1)
        self.out_proj = nn.Conv1d(codebook_dim, input_dim, 1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim, _weight=torch.empty(codebook_size, codebook_dim))

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, D, T) -> (quantized z (B, D, T), indices (B, T))."""
        z_e = self.in_proj(z)  # (B, d, T)
        enc = z_e.permute(0, 2, 1).reshape(-1, z_e.shape[1])  # (B*T, d)
        enc = F.normalize(enc)
        book = F.normalize(self.codebook.weight)
        dist = enc.pow(2).sum(1, keepdim=True) - 2 * enc @ book.t() + book.pow(2).sum(1, keepdim=True).t()
        indices = (-dist).max(1)[1].view(z.shape[0], -1)
        z_q = self.lookup(indices)
        z_q = z_e + (z_q - z_e)  # the reference's straight-through form (not bit-equal to z_q)
        return self.out_proj(z_q), indices

    def lookup(self, indices: Tensor) -> Tensor:
        """indices (B, T) -> codebook vectors (B, d, T)."""
        return F.embedding(indices, self.codebook.weight).transpose(1, 2)

    def decode(self, indices: Tensor) -> Tensor:
        """indices (B, T) -> (B, D, T)."""
        return self.out_proj(self.lookup(indices))


class ResidualVQ(nn.Module):
    """Each level quantizes what the previous levels left over."""

    def __init__(self, input_dim: int, n_codebooks: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.quantizers = nn.ModuleList(
            VectorQuantize(input_dim, codebook_size, codebook_dim) for _ in range(n_codebooks)
        )

    def encode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, D, T) -> (sum of quantized levels (B, D, T), codes (B, n, T))."""
        z_sum: Tensor | float = 0.0
        residual = z
        codes = []
        for vq in self.quantizers:
            z_i, idx = vq.quantize(residual)
            z_sum = z_sum + z_i
            residual = residual - z_i
            codes.append(idx)
        assert isinstance(z_sum, Tensor)
        return z_sum, torch.stack(codes, dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, n, T) -> (B, D, T)."""
        z: Tensor | float = 0.0
        for i, vq in enumerate(self.quantizers):
            z = z + vq.decode(codes[:, i, :])
        assert isinstance(z, Tensor)
        return z


class DownsampleResidualVectorQuantize(nn.Module):
    """Down-sample x4 -> pre-transformer -> semantic VQ + residual VQ; decode mirrors it."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        q = cfg.quantizer
        dims = (q.input_dim, *q.downsample_dims)
        self.semantic_quantizer = ResidualVQ(q.input_dim, q.n_semantic_codebooks, q.semantic_codebook_size, q.codebook_dim)
        self.quantizer = ResidualVQ(q.input_dim, q.n_residual_codebooks, q.residual_codebook_size, q.codebook_dim)

        def convnext(dim: int) -> ConvNeXtBlock:
            return ConvNeXtBlock(dim, q.convnext_kernel_size, q.convnext_mlp_ratio, q.convnext_norm_eps)

        self.downsample = Seq(*(
            Seq(CausalConv1d(dims[i], dims[i + 1], f, stride=f), convnext(dims[i + 1]))
            for i, f in enumerate(q.downsample_factors)
        ))
        self.upsample = Seq(*(
            Seq(CausalConvTranspose1d(dims[i + 1], dims[i], f, stride=f), convnext(dims[i]))
            for i, f in reversed(list(enumerate(q.downsample_factors)))
        ))
        self.pre_module = WindowedTransformer(q.transformer, cfg.rope_table_dtype)
        self.post_module = WindowedTransformer(q.transformer, cfg.rope_table_dtype)

    def encode(self, z: Tensor) -> Tensor:
        """latent (B, D, L) -> codes (B, N, L / prod(factors)), int64."""
        z = self.pre_module(self.downsample(z))
        z_sem, sem_codes = self.semantic_quantizer.encode(z)
        _, res_codes = self.quantizer.encode(z - z_sem)
        return torch.cat([sem_codes, res_codes], dim=1)

    def decode(self, codes: Tensor, cache: StreamCache | None = None) -> Tensor:
        """codes (B, N, T) -> latent (B, D, T * prod(factors)); codes above a codebook are clamped."""
        sem = codes[:, :1].clamp(max=self.semantic_quantizer.codebook_size - 1)
        res = codes[:, 1:].clamp(max=self.quantizer.codebook_size - 1)
        z = self.semantic_quantizer.decode(sem) + self.quantizer.decode(res)
        z = self.post_module(z, cache)
        return self.upsample(z, cache)


# --------------------------------------------------------------------------------- decoder
class DecoderBlock(nn.Module):
    """Snake -> causal transposed conv (kernel 2*stride) C -> C/2 -> 3 residual units."""

    def __init__(self, cfg: CodecConfig, i: int) -> None:
        super().__init__()
        d = cfg.decoder
        c_in = d.dim if i == 0 else d.block_channels[i - 1]
        c_out, stride = d.block_channels[i], d.rates[i]
        self.block = Seq(
            Snake1d(c_in),
            CausalConvTranspose1d(c_in, c_out, 2 * stride, stride),
            *(ResidualUnit(c_out, d.residual_kernel_size, dil) for dil in d.residual_dilations),
        )

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        return self.block(x, cache)


class Decoder(nn.Module):
    """latent (B, latent_dim, L') -> audio (B, 1, L' * hop_length) in [-1, 1]."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        d = cfg.decoder
        layers: list[nn.Module] = [CausalConv1d(cfg.latent_dim, d.dim, d.stem_kernel_size)]
        layers += [DecoderBlock(cfg, i) for i in range(len(d.rates))]
        layers += [Snake1d(d.block_channels[-1]), CausalConv1d(d.block_channels[-1], d.out_channels, d.final_kernel_size)]
        self.model = Seq(*layers)

    def forward(self, x: Tensor, cache: StreamCache | None = None) -> Tensor:
        return torch.tanh(self.model(x, cache))


# ------------------------------------------------------------------------------------ codec
class S2ProCodec(nn.Module):
    """The whole codec. Build with `S2ProCodec(config)`; load weights with `codec_loader.load_codec`."""

    def __init__(self, config: CodecConfig | None = None) -> None:
        super().__init__()
        self.config = config or CodecConfig.default()
        self.encoder = Encoder(self.config)
        self.quantizer = DownsampleResidualVectorQuantize(self.config)
        self.decoder = Decoder(self.config)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.model[0].conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.model[0].conv.weight.device

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_length(self) -> int:
        return self.config.frame_length

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    @torch.inference_mode()
    def encode(self, audio: Tensor) -> Tensor:
        """audio (L,), (B, L) or (B, 1, L) float at `sample_rate` -> codes (B, N, ceil(L / frame_length)) int64.

        The waveform is right-padded with zeros to whole frames; it is cast to the codec's dtype.
        """
        if audio.ndim == 1:
            audio = audio[None, None]
        elif audio.ndim == 2:
            audio = audio[:, None]
        length = audio.shape[-1]
        if length == 0:
            raise ValueError("cannot encode an empty waveform")
        pad = math.ceil(length / self.frame_length) * self.frame_length - length
        audio = F.pad(audio.to(self.device, self.dtype), (0, pad))
        return self.quantizer.encode(self.encoder(audio)).long()

    @torch.inference_mode()
    def decode(self, codes: Tensor, cache: StreamCache | None = None) -> Tensor:
        """codes (N, T) or (B, N, T) -> float32 audio (B, 1, T * frame_length).

        With a `cache`, the frames continue the stream whose state it holds (see streaming.py).
        """
        if codes.ndim == 2:
            codes = codes[None]
        if codes.shape[1] != self.num_codebooks:
            raise ValueError(f"codes have {codes.shape[1]} codebooks, the codec expects {self.num_codebooks}")
        codes = codes.to(self.device, torch.long)
        if bool((codes < 0).any()):
            raise ValueError("codes must be non-negative")
        z = self.quantizer.decode(codes, cache)
        return self.decoder(z, cache).float()
