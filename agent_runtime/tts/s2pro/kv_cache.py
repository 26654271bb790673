"""Slow-AR KV caches sized to need, and the attend-length rules that keep them bit-exact.

The reference keeps a static cache of `cache_len` (max_seq_len rounded to 8) slots per layer and
always attends over all of them with a mask. Reading fewer slots gives the same bits on CPU if the
attended length keeps the kernels' blocking (measured on torch 2.13, see tests):

* prefill (default SDPA backend = the CPU flash kernel, KV blocks of 512): attend over
  `min(round_up(end, 512), cache_len)` slots;
* decode (math backend; its KV matmul reduces over the length): `min(round_up(pos + 1, 64),
  cache_len)` slots.

Masked slots contribute exp(-inf) = +0 weights whatever they hold, so stale values are harmless.

On CUDA the cache may hold its layers in flash-attn's layout instead (`FlashLayerKV`, slots on
axis 1); the flash kernel reads exactly [0, end), so the attend-length rules do not apply to it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agent_runtime.tts.s2pro.flash_decode import FlashKernel, FlashLayerKV
from agent_runtime.tts.s2pro.model import LayerKV, TransformerConfig

PREFILL_BLOCK = 512
DECODE_BLOCK = 64


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def prefill_kv_len(end: int, cache_len: int) -> int:
    """Slots to attend over when prefilling positions up to `end` (exclusive)."""
    return min(_round_up(end, PREFILL_BLOCK), cache_len)


def decode_kv_len(pos: int, cache_len: int) -> int:
    """Slots to attend over when decoding the position `pos`."""
    return min(_round_up(pos + 1, DECODE_BLOCK), cache_len)


class SlowKVCache:
    """Per-layer K/V of one conversation, grown in blocks of 512 slots up to `cache_len`.

    Layers are `LayerKV`s (SDPA), or `FlashLayerKV`s for `flash` (flash_decode.py).
    """

    def __init__(
        self,
        cfg: TransformerConfig,
        cache_len: int,
        dtype: torch.dtype,
        device: torch.device,
        capacity: int = 0,
        flash: FlashKernel | None = None,
    ) -> None:
        self.cfg = cfg
        self.cache_len = cache_len
        self.dtype = dtype
        self.device = device
        self.flash = flash
        cap = min(cache_len, _round_up(max(capacity, 1), PREFILL_BLOCK))
        self.layers = [self._new_layer(cap) for _ in range(cfg.n_layer)]

    def _new_layer(self, capacity: int) -> LayerKV | FlashLayerKV:
        if self.flash is None:
            return LayerKV.zeros(self.cfg, capacity, self.dtype, self.device)
        return FlashLayerKV.zeros(self.cfg, capacity, self.dtype, self.device, self.flash)

    @property
    def capacity(self) -> int:
        return self.layers[0].capacity

    def ensure(self, slots: int) -> None:
        """Make room for `slots` slots (keeps the contents)."""
        if slots <= self.capacity:
            return
        if slots > self.cache_len:
            raise ValueError(f"context of {slots} positions exceeds the model's {self.cache_len}")
        new_cap = min(self.cache_len, max(_round_up(slots, PREFILL_BLOCK), 2 * self.capacity))
        for i, layer in enumerate(self.layers):
            grown = self._new_layer(new_cap)
            grown.k.narrow(layer.seq_dim, 0, layer.capacity).copy_(layer.k)
            grown.v.narrow(layer.seq_dim, 0, layer.capacity).copy_(layer.v)
            self.layers[i] = grown

    def snapshot(self, length: int) -> list[tuple[Tensor, Tensor]]:
        """Copies of the first `length` slots of every layer (for the prefix cache), in its layout."""
        return [
            (kv.k.narrow(kv.seq_dim, 0, length).clone(), kv.v.narrow(kv.seq_dim, 0, length).clone())
            for kv in self.layers
        ]

    def restore(self, snapshot: list[tuple[Tensor, Tensor]]) -> None:
        """Write a snapshot (taken from a cache of the same layout) back into the first slots."""
        length = snapshot[0][0].shape[self.layers[0].seq_dim]
        self.ensure(length)
        for kv, (k, v) in zip(self.layers, snapshot, strict=True):
            kv.k.narrow(kv.seq_dim, 0, length).copy_(k)
            kv.v.narrow(kv.seq_dim, 0, length).copy_(v)

    def nbytes(self) -> int:
        return sum(kv.k.numel() * kv.k.element_size() * 2 for kv in self.layers)
