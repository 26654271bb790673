"""Slow-AR decode attention of the pooled step: one query per batch row against its slot's KV,
reading only the slot's valid length.

The pool keeps K and V per layer as (KV, P, capacity, hd) (P = slots + one scratch slot), so that
`pool.view(1, KV, P * capacity, hd)` is the whole pool as one long sequence. A step calls
`prepare(rows, lengths)` once (row b attends slot rows[b] over [0, lengths[b])), then the
attention per layer with q (B, H, hd). Both implementations keep static shapes and never sync:

* `MaskedDecodeAttention` (the simple reference): gathers the rows' whole slots and masks past
  each length; reads `capacity` positions per row. Used to check the fast path, and on CPU.
* `FlexDecodeAttention`: FlexAttention in the paged-attention form (torch's
  experimental/_paged_attention.py): the B queries (B, H, 1, hd) against the pool as one sequence
  (batch 1, broadcast), with a block mask whose row b lists the blocks of slot rows[b] below its
  length (`mask_mod` cuts the last one). Only those blocks are read, split across programs;
  the work scales with the batch and its lengths, not with the pool. Compiled on CUDA (Triton flex
  decoding); on CPU it runs eagerly (unfused, materialises the scores: for tests, not speed).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

FLEX_BLOCK = 128


class MaskedDecodeAttention:
    """Gather-and-mask attention (fp32 scores), the simple and obviously correct path."""

    def __init__(
        self, n_head: int, kv_heads: int, head_dim: int, capacity: int, device: torch.device
    ) -> None:
        self.n_head = n_head
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.scale = 1 / math.sqrt(head_dim)
        self.slots = torch.arange(capacity, device=device)
        self.rows: Tensor | None = None
        self.mask: Tensor | None = None

    def prepare(self, rows: Tensor, lengths: Tensor) -> None:
        self.rows = rows
        self.mask = self.slots[None, :] < lengths[:, None]  # (B, capacity)

    def __call__(self, q: Tensor, k_pool: Tensor, v_pool: Tensor) -> Tensor:
        """q (B, H, hd) -> (B, H * hd), head h reading KV head h // (H / KV)."""
        assert self.rows is not None and self.mask is not None, "prepare() first"
        bsz = q.shape[0]
        rep = self.n_head // self.kv_heads
        k = k_pool[:, self.rows].transpose(0, 1).float()  # (B, KV, capacity, hd)
        v = v_pool[:, self.rows].transpose(0, 1).float()
        qg = q.float().view(bsz, self.kv_heads, rep, self.head_dim)
        scores = (qg @ k.transpose(-1, -2)) * self.scale  # (B, KV, rep, capacity)
        scores = scores.masked_fill(~self.mask[:, None, None], float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v  # (B, KV, rep, hd)
        return y.to(q.dtype).reshape(bsz, self.n_head * self.head_dim)


class FlexDecodeAttention:
    """FlexAttention over the pool as one paged sequence (see the module docstring)."""

    def __init__(
        self,
        pool_slots: int,
        max_batch: int,
        n_head: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device,
        compiled: bool,
    ) -> None:
        if capacity % FLEX_BLOCK:
            raise ValueError(f"flex attention needs a KV capacity multiple of {FLEX_BLOCK}; got {capacity}")
        self.n_head = n_head
        self.head_dim = head_dim
        self.capacity = capacity
        self.slot_blocks = capacity // FLEX_BLOCK
        self.total_len = pool_slots * capacity
        # as converted paged masks do: index rows as wide as the whole pool's blocks
        self.block_ids = torch.arange(pool_slots * self.slot_blocks, dtype=torch.int32, device=device)
        # static: mask_mod reads them (row b: the pool sequence's [start[b], limit[b]))
        self.start = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.limit = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.rows: Tensor | None = None
        self.block_mask: BlockMask | None = None
        start, limit = self.start, self.limit

        def valid(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            # the block mask already selects the slot's blocks; the eager (CPU) path needs both ends
            return (kv_idx >= start[b]) & (kv_idx < limit[b])

        self.mask_mod = valid  # one function object: compiled flex guards on it
        self.fn: Callable[..., Tensor] = flex_attention
        if compiled:
            _allow_recompiles(max_batch + 8)  # one compile per batch bucket (at most max_batch)
            self.fn = torch.compile(flex_attention, dynamic=False)

    def prepare(self, rows: Tensor, lengths: Tensor) -> None:
        bsz = rows.shape[0]
        self.rows = rows
        first = rows * self.slot_blocks  # the slot's first block in the pool sequence
        self.start[:bsz] = rows * self.capacity
        self.limit[:bsz] = rows * self.capacity + lengths
        # All of a row's blocks are listed as partial (mask_mod-checked) blocks, none as full ones:
        # flex decoding then splits each row's own block list across its SPLIT_KV programs
        # (split-K per row); with full blocks it splits the whole pool sequence's length, so a
        # row's blocks would all land in the first split (as vLLM's flex backend notes).
        n_blocks = (lengths + FLEX_BLOCK - 1) // FLEX_BLOCK
        last_block = self.block_ids.shape[0] - 1
        idx = (first[:, None] + self.block_ids[None]).clamp(max=last_block).to(torch.int32)
        self.block_mask = BlockMask.from_kv_blocks(
            n_blocks.to(torch.int32)[:, None, None],
            idx[:, None, None],
            BLOCK_SIZE=FLEX_BLOCK,
            mask_mod=self.mask_mod,
            seq_lengths=(1, self.total_len),
            compute_q_blocks=False,  # only the backward pass needs them
        )

    def __call__(self, q: Tensor, k_pool: Tensor, v_pool: Tensor) -> Tensor:
        """q (B, H, hd) -> (B, H * hd)."""
        assert self.block_mask is not None, "prepare() first"
        bsz = q.shape[0]
        k = k_pool.view(1, k_pool.shape[0], self.total_len, self.head_dim)
        v = v_pool.view(1, v_pool.shape[0], self.total_len, self.head_dim)
        out = self.fn(q[:, :, None], k, v, block_mask=self.block_mask, enable_gqa=True)
        return out.reshape(bsz, self.n_head * self.head_dim)


def _allow_recompiles(n: int) -> None:
    """Let dynamo compile a function for `n` shapes (its default limit, 8, is below the buckets)."""
    dynamo_config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), n))
