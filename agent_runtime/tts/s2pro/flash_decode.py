"""Slow-AR attention through flash-attn's KV-cache kernel (CUDA, optional `flash-attn` package).

`flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=..., causal=True)` writes the
new K/V into the cache at `cache_seqlens` and attends over the first `cache_seqlens + S` slots with
a bottom-right-aligned causal mask, GQA included, in one kernel: no `repeat_interleave` of the cache
and no mask tensor. Its cache is sequence-major, (B, capacity, KV, hd), so the engine keeps the slow
AR's cache in that layout (`FlashLayerKV`) when it uses this path; the model hands the layer q/k/v
already qk-normed and RoPE-rotated (its own interleaved RoPE with the bf16-rounded table, so the
kernel's rotary arguments stay unused).

The kernel is fp16/bf16 and CUDA (Ampere or newer) only, and it is not bit-identical to the reference:
CPU always takes the exact SDPA path. `FlashKernel` carries the kernel function, resolved lazily from
`flash_attn`, and what it accepts, so tests can substitute a plain-torch reference of the contract.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from agent_runtime.errors import ConfigError
from agent_runtime.tts.s2pro.model import TransformerConfig

log = logging.getLogger(__name__)

ATTENTION_MODES = ("auto", "sdpa", "flash")
KernelFn = Callable[..., Tensor]


@functools.cache
def _flash_attn_with_kvcache() -> KernelFn:
    from flash_attn import flash_attn_with_kvcache

    return flash_attn_with_kvcache


@dataclass(frozen=True)
class FlashKernel:
    """A `flash_attn_with_kvcache`-compatible function and the devices / dtypes it accepts.

    `fn` None means flash-attn's own kernel, imported on first use.
    """

    fn: KernelFn | None = None
    device_types: tuple[str, ...] = ("cuda",)
    dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)
    max_head_dim: int = 256

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return (self.fn or _flash_attn_with_kvcache())(*args, **kwargs)

    def unusable_reason(self, device: torch.device, dtype: torch.dtype, cfg: TransformerConfig) -> str | None:
        """Why this kernel cannot run the slow AR here; None when it can."""
        if device.type not in self.device_types:
            return f"it needs a {'/'.join(self.device_types)} device, the model is on {device}"
        if dtype not in self.dtypes:
            names = "/".join(str(d).removeprefix("torch.") for d in self.dtypes)
            return f"it needs {names} weights, the model is {str(dtype).removeprefix('torch.')}"
        if cfg.head_dim % 8 or cfg.head_dim > self.max_head_dim:
            return f"head_dim {cfg.head_dim} is not a multiple of 8 up to {self.max_head_dim}"
        if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
            return f"flash-attn needs an Ampere (sm80) or newer GPU, {torch.cuda.get_device_name(device)} is older"
        if self.fn is None:
            try:
                _flash_attn_with_kvcache()
            except (ImportError, OSError) as exc:
                return f"flash-attn is not importable ({exc}); install it into a CUDA torch environment"
        return None


DEFAULT_KERNEL = FlashKernel()


def select_flash(
    mode: str, kernel: FlashKernel, device: torch.device, dtype: torch.dtype, cfg: TransformerConfig
) -> bool:
    """Whether the slow AR uses `kernel` for `attention: mode` (auto | sdpa | flash); logs the choice.

    "flash" where the kernel cannot run raises ConfigError with the reason; "auto" falls back to SDPA.
    """
    if mode not in ATTENTION_MODES:
        raise ConfigError(f"attention must be one of {', '.join(ATTENTION_MODES)}; got {mode!r}")
    reason = None if mode == "sdpa" else kernel.unusable_reason(device, dtype, cfg)
    if mode == "flash" and reason is not None:
        raise ConfigError(f"attention: flash is unavailable: {reason}")
    use_flash = mode != "sdpa" and reason is None
    if use_flash:
        log.info("S2-Pro slow-AR attention: flash (KV-cache kernel) on %s", device)
    else:
        log.info("S2-Pro slow-AR attention: sdpa%s", f" (flash unused: {reason})" if reason else "")
    return use_flash


class FlashLayerKV:
    """K/V of one slow-AR layer in flash-attn's layout, (B, capacity, KV, hd) each, plus the kernel
    that writes new K/V into them and attends."""

    __slots__ = ("k", "kernel", "v")
    seq_dim = 1  # the slot axis (LayerKV's is 2)

    def __init__(self, k: Tensor, v: Tensor, kernel: FlashKernel) -> None:
        self.k = k
        self.v = v
        self.kernel = kernel

    @classmethod
    def zeros(
        cls, cfg: TransformerConfig, capacity: int, dtype: torch.dtype, device: torch.device, kernel: FlashKernel
    ) -> FlashLayerKV:
        shape = (1, capacity, cfg.n_local_heads, cfg.head_dim)
        k = torch.zeros(shape, dtype=dtype, device=device)
        return cls(k, torch.zeros_like(k), kernel)

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, start: int) -> Tensor:
        """q (B, S, H, hd), k / v (B, S, KV, hd) of positions start..start+S-1 -> (B, S, H, hd).

        Stores k / v at slots [start, start+S) and attends causally over slots [0, start+S).
        """
        seqlens = torch.full((q.shape[0],), start, dtype=torch.int32, device=q.device)
        return self.kernel(
            q, self.k, self.v, k=k, v=v, cache_seqlens=seqlens, softmax_scale=1 / math.sqrt(q.shape[-1]), causal=True
        )
