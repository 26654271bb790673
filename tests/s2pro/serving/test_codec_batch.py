"""Batched streaming codec: every row equals its own stream's decode, state included (issue 11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agent_runtime.tts.s2pro.codec import S2ProCodec, StreamCache
from agent_runtime.tts.s2pro.codec_loader import load_codec
from agent_runtime.tts.s2pro.serving.codec_batch import BatchedCodecDecoder, bench_batched_codec
from agent_runtime.tts.s2pro.streaming import CodecStreamDecoder

RTOL, ATOL = 1e-5, 1e-6  # fp32: summation order only (audio is in [-1, 1])


@pytest.fixture(scope="module")
def tiny(s2pro_fixtures: Path) -> S2ProCodec:
    return load_codec(s2pro_fixtures / "codec_tiny.pth", s2pro_fixtures / "codec_tiny.json")


@pytest.fixture(scope="module")
def codes(s2pro_fixtures: Path) -> np.ndarray:
    return np.load(s2pro_fixtures / "codec_tiny_codes.npy")  # (4, 349); attention window 128


def assert_same_state(a: StreamCache, b: StreamCache, atol: float = 1e-5) -> None:
    """Same entries, shapes, positions; tensors equal up to summation order."""
    assert a._store.keys() == b._store.keys()
    for key, x in a._store.items():
        y = b._store[key]
        if isinstance(x, int) or x is None:
            assert x == y
            continue
        xs, ys = (x, y) if isinstance(x, tuple) else ((x,), (y,))
        for u, v in zip(xs, ys, strict=True):
            assert u.shape == v.shape and u.dtype == v.dtype
            torch.testing.assert_close(u, v, rtol=RTOL, atol=atol)


def stream_codes(codes: np.ndarray, i: int) -> np.ndarray:
    """A different code sequence per stream."""
    return np.roll(codes, 41 * i, axis=1)


# positions and chunk sizes: fresh, past the 128-frame window, inside it, at the window's edge
STARTS = [0, 150, 7, 127, 64]
SIZES = [1, 4, 2, 4, 3]


@pytest.mark.parametrize("n_streams", [1, 3, 5])
def test_rows_equal_per_stream_decoding(tiny, codes, n_streams: int) -> None:
    batch = BatchedCodecDecoder(tiny)
    refs, rows = [], []
    for i in range(n_streams):
        dec = CodecStreamDecoder(tiny)
        if STARTS[i]:
            dec.decode_chunk(stream_codes(codes, i)[:, : STARTS[i]])
        refs.append(dec)
        rows.append(dec.fork())  # the batched path continues from the same state
    for _ in range(3):
        items, expected = [], []
        for i, (ref, row) in enumerate(zip(refs, rows, strict=True)):
            pos, n = ref.frames_decoded, SIZES[i]
            chunk = stream_codes(codes, i)[:, pos : pos + n]
            expected.append(ref.decode_chunk(chunk))
            items.append((row._cache, chunk))
        got = batch.decode(items)
        for e, g in zip(expected, got, strict=True):
            assert g.dtype == np.float32 and g.shape == e.shape
            np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)
        for ref, row in zip(refs, rows, strict=True):
            assert_same_state(ref._cache, row._cache)


def test_mixed_positions_in_one_forward(tiny, codes) -> None:
    """Rows of one chunk length at positions 0, 5, 127 and 300 share a forward."""
    batch = BatchedCodecDecoder(tiny)
    calls = []
    inner = batch.decode_batch
    batch.decode_batch = lambda states, c: calls.append(len(states)) or inner(states, c)  # type: ignore[method-assign]
    refs = [CodecStreamDecoder(tiny) for _ in range(4)]
    for ref, start in zip(refs, [0, 5, 127, 300], strict=True):
        if start:
            ref.decode_chunk(codes[:, :start])
    rows = [ref.fork() for ref in refs]
    chunks = [codes[:, r.frames_decoded : r.frames_decoded + 2] for r in refs]
    expected = [ref.decode_chunk(c) for ref, c in zip(refs, chunks, strict=True)]
    got = batch.decode([(row._cache, c) for row, c in zip(rows, chunks, strict=True)])
    assert calls == [4]
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)
    for ref, row in zip(refs, rows, strict=True):
        assert_same_state(ref._cache, row._cache)


def test_groups_by_chunk_length_and_max_batch(tiny, codes) -> None:
    for max_batch, forwards in [(None, [2, 2, 1]), (1, [1, 1, 1, 1, 1])]:
        batch = BatchedCodecDecoder(tiny, max_batch=max_batch)
        calls: list[int] = []
        inner = batch.decode_batch
        batch.decode_batch = lambda s, c, inner=inner, calls=calls: calls.append(len(s)) or inner(s, c)  # type: ignore[method-assign]
        sizes = [1, 4, 1, 4, 2]
        out = batch.decode([(StreamCache(), codes[:, :n]) for n in sizes])
        assert sorted(calls, reverse=True) == forwards
        assert [len(a) // tiny.frame_length for a in out] == sizes


def test_push_many_equals_push_with_join_and_reset(tiny, codes) -> None:
    """Each decoder's schedule is kept; a stream joins mid-way, another is reset and starts over."""
    rng = np.random.default_rng(0)
    schedules = [(1, 4), (3, 2), (2, 5)]
    refs = [CodecStreamDecoder(tiny, f, c) for f, c in schedules]
    decs = [CodecStreamDecoder(tiny, f, c) for f, c in schedules]
    pos = [0, 0, 0]
    batch = BatchedCodecDecoder(tiny)
    for step in range(14):
        active = [0, 1] + ([2] if step >= 4 else [])  # stream 2 joins at step 4
        if step == 8:  # stream 0 ends its utterance and starts a new one
            for d in (refs[0], decs[0]):
                d.reset()
            pos[0] = 0
        items, expected = [], []
        for i in active:
            n = int(rng.integers(0, 12)) + (10 if i == 1 else 0)  # 0 frames, or several chunks
            chunk = stream_codes(codes, i)[:, pos[i] : pos[i] + n]
            pos[i] += n
            expected.append(refs[i].push(chunk))
            items.append((decs[i], chunk))
        got = batch.push_many(items)
        for e, g in zip(expected, got, strict=True):
            assert [len(a) for a in g] == [len(a) for a in e]
            for a, b in zip(e, g, strict=True):
                np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL)
    assert pos[1] > 128  # stream 1 is past the attention window
    expected = [ref.flush() for ref in refs]
    got = batch.flush_many(decs)
    assert [len(g) for g in got] == [len(e) for e in expected]
    for e, g in zip(expected, got, strict=True):
        for a, b in zip(e, g, strict=True):
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL)
    for ref, dec in zip(refs, decs, strict=True):
        assert (dec.frames_decoded, dec.chunks_emitted, dec.pending_frames) == (
            ref.frames_decoded, ref.chunks_emitted, ref.pending_frames)
        assert dec.last_stats == ref.last_stats
        assert_same_state(ref._cache, dec._cache)


def test_bad_input_is_rejected(tiny, codes) -> None:
    batch = BatchedCodecDecoder(tiny)
    state, dec = StreamCache(), CodecStreamDecoder(tiny)
    with pytest.raises(ValueError, match="twice"):
        batch.decode_batch([state, state], torch.zeros(2, 4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        batch.decode([(state, codes[:3, :2])])
    with pytest.raises(ValueError, match="twice"):
        batch.push_many([(dec, codes[:, :1]), (dec, codes[:, 1:2])])
    with pytest.raises(ValueError, match="shape"):
        batch.push_many([(dec, codes[:, :1]), (CodecStreamDecoder(tiny), codes[:3, :1])])
    assert dec.pending_frames == 0  # nothing was buffered by the failed call
    assert batch.decode([]) == [] and batch.push_many([]) == []


def test_bench_runs(tiny) -> None:
    lines: list[str] = []
    res = bench_batched_codec(tiny, streams=2, frames=8, chunk_frames=4, repeats=1, log=lines.append)
    assert res["per_stream_s"] > 0 and res["batched_s"] > 0
    assert res["max_abs_diff"] <= 1e-5
    assert len(lines) == 1 and "batched" in lines[0]


def compare_rounds(codec: S2ProCodec, codes: np.ndarray, exact: bool) -> None:
    """4 streams at positions 0, 5, 140, 60, three 4-frame rounds: batched vs per-stream, within
    summation order (`exact`, fp32) or within a few % of the signal (bf16)."""
    batch = BatchedCodecDecoder(codec)
    refs = [CodecStreamDecoder(codec) for _ in range(4)]
    for ref, start in zip(refs, [0, 5, 140, 60], strict=True):
        if start:
            ref.decode_chunk(codes[:, :start])
    rows = [ref.fork() for ref in refs]
    for _ in range(3):
        chunks = [codes[:, r.frames_decoded : r.frames_decoded + 4] for r in refs]
        expected = [ref.decode_chunk(c) for ref, c in zip(refs, chunks, strict=True)]
        got = batch.decode([(row._cache, c) for row, c in zip(rows, chunks, strict=True)])
        for e, g in zip(expected, got, strict=True):
            if exact:
                np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
            else:
                assert np.abs(g - e).max() <= 0.05
                assert np.sqrt(np.mean((g - e) ** 2)) <= 0.03 * np.sqrt(np.mean(e**2))
    for ref, row in zip(refs, rows, strict=True):
        if exact:
            assert_same_state(ref._cache, row._cache, atol=1e-4)
        else:
            assert ref._cache._store.keys() == row._cache._store.keys()


def test_bf16_batched_close_to_per_stream(s2pro_fixtures: Path, codes) -> None:
    codec = load_codec(s2pro_fixtures / "codec_tiny.pth", s2pro_fixtures / "codec_tiny.json", "bf16")
    compare_rounds(codec, codes, exact=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cuda_batched_matches_per_stream(s2pro_fixtures: Path, codes, dtype: str) -> None:
    """On the GPU: fp32 (TF32 off) to summation order, bf16 within a few % of the signal."""
    codec = load_codec(s2pro_fixtures / "codec_tiny.pth", s2pro_fixtures / "codec_tiny.json", dtype, "cuda")
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        compare_rounds(codec, codes, exact=dtype == "fp32")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
