"""Decode attention over the slot pool (serving/attention.py): each row reads its slot's valid
prefix only, whatever the other slots and the positions past the length hold."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from agent_runtime.tts.s2pro.serving.attention import FlexDecodeAttention, MaskedDecodeAttention

SLOTS, H, KV, HD, CAP = 6, 4, 2, 16, 512


def reference(q, k_pool, v_pool, rows, lengths):
    out = []
    for b, (slot, n) in enumerate(zip(rows.tolist(), lengths.tolist(), strict=True)):
        k = k_pool[None, :, slot, :n]
        v = v_pool[None, :, slot, :n]
        y = F.scaled_dot_product_attention(q[b : b + 1, :, None], k, v, enable_gqa=True)
        out.append(y.reshape(1, H * HD))
    return torch.cat(out)


@pytest.mark.parametrize("kind", ["masked", "flex"])
def test_two_slots_partial_blocks(kind: str) -> None:
    """Rows whose lengths end inside their first block (a case the flex path once got wrong: its
    eager form reads the whole pool sequence below a row's limit unless mask_mod bounds both ends)."""
    gen = torch.Generator().manual_seed(1)
    k_pool = torch.randn(KV, 3, CAP, HD, generator=gen)
    v_pool = torch.randn(KV, 3, CAP, HD, generator=gen)
    for rows, lengths in (([1, 0], [40, 70]), ([1], [40]), ([0, 1], [1, 1])):
        rows_t, lengths_t = torch.tensor(rows), torch.tensor(lengths)
        q = torch.randn(len(rows), H, HD, generator=gen)
        attn = make(kind, 3, len(rows))
        attn.prepare(rows_t, lengths_t)
        torch.testing.assert_close(attn(q, k_pool, v_pool), reference(q, k_pool, v_pool, rows_t, lengths_t))


def make(kind: str, slots: int, max_batch: int) -> FlexDecodeAttention | MaskedDecodeAttention:
    if kind == "flex":
        return FlexDecodeAttention(slots, max_batch, H, KV, HD, CAP, torch.device("cpu"), compiled=False)
    return MaskedDecodeAttention(H, KV, HD, CAP, torch.device("cpu"))


@pytest.mark.parametrize("kind", ["masked", "flex"])
def test_decode_attention_reads_valid_prefix_only(kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    k_pool = torch.randn(KV, SLOTS, CAP, HD, generator=gen)
    v_pool = torch.randn(KV, SLOTS, CAP, HD, generator=gen)
    rows = torch.tensor([4, 0, 2, 5, 1])  # slot 3 is not in the step
    lengths = torch.tensor([1, 127, 128, 129, 512])
    q = torch.randn(len(rows), H, HD, generator=gen)
    attn = make(kind, SLOTS, SLOTS - 1)
    attn.prepare(rows, lengths)
    want = reference(q, k_pool, v_pool, rows, lengths)
    torch.testing.assert_close(attn(q, k_pool, v_pool), want, rtol=1e-5, atol=1e-5)
    # garbage past the lengths and in other slots changes nothing
    for slot, n in zip(rows.tolist(), lengths.tolist(), strict=True):
        k_pool[:, slot, n:] = 1e30
        v_pool[:, slot, n:] = 1e30
    # a slot not in the step (NaN only where nothing reads it: flex's eager CPU form computes
    # scores over the whole pool and masks them, the compiled kernel skips the blocks)
    k_pool[:, 3] = v_pool[:, 3] = float("nan") if kind == "masked" else 1e30
    torch.testing.assert_close(attn(q, k_pool, v_pool), want, rtol=1e-5, atol=1e-5)
    if kind == "flex":  # per row: the slot's blocks below its length, all mask_mod-checked
        bm = attn.block_mask
        assert bm is not None
        assert bm.full_kv_num_blocks is None
        assert bm.kv_num_blocks[:, 0, 0].tolist() == [1, 1, 1, 2, 4]
        assert bm.kv_indices[4, 0, 0, :4].tolist() == [4, 5, 6, 7]  # slot 1's blocks
        assert bm.kv_indices[3, 0, 0, :2].tolist() == [20, 21]  # slot 5's


def test_flex_needs_block_multiple() -> None:
    with pytest.raises(ValueError, match="multiple of 128"):
        FlexDecodeAttention(2, 1, H, KV, HD, 100, torch.device("cpu"), compiled=False)
