"""Streaming codec decoder: equals the full decode, constant cost per chunk, push/flush/reset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from agent_runtime.tts.s2pro.codec import S2ProCodec
from agent_runtime.tts.s2pro.codec_loader import load_codec
from agent_runtime.tts.s2pro.streaming import CodecStreamDecoder, stream_decode


@pytest.fixture(scope="module")
def tiny(s2pro_fixtures: Path) -> S2ProCodec:
    return load_codec(s2pro_fixtures / "codec_tiny.pth", s2pro_fixtures / "codec_tiny.json")


@pytest.fixture(scope="module")
def codes(s2pro_fixtures: Path) -> np.ndarray:
    return np.load(s2pro_fixtures / "codec_tiny_codes.npy")  # (4, 349): longer than the 128-frame window


@pytest.fixture(scope="module")
def full(tiny: S2ProCodec, codes: np.ndarray) -> np.ndarray:
    return tiny.decode(torch.from_numpy(codes))[0, 0].numpy()


@pytest.mark.parametrize(
    ("first", "later", "frames"),
    [(1, 1, 140), (2, 4, 349), (4, 2, 200), (3, 7, 349), (128, 1, 140), (349, 1, 349)],
)
def test_stream_equals_full_decode(tiny, codes, full, first: int, later: int, frames: int) -> None:
    """Every schedule crosses the 128-frame attention window; frames beyond `frames` are skipped for speed."""
    chunks = stream_decode(tiny, codes[:, :frames], first, later)
    sizes = [len(c) // tiny.frame_length for c in chunks]
    assert sizes[0] == min(first, frames)
    assert all(s == later for s in sizes[1:-1]) and sum(sizes) == frames
    audio = np.concatenate(chunks)
    assert audio.dtype == np.float32 and audio.shape == (frames * tiny.frame_length,)
    assert np.abs(audio - full[: audio.size]).max() <= 1e-5


def test_stream_matches_reference_audio(tiny, codes, s2pro_fixtures: Path) -> None:
    ref = np.load(s2pro_fixtures / "codec_tiny_expected.npz")["audio_out"]
    audio = np.concatenate(stream_decode(tiny, codes, 5, 16))
    assert audio.shape == ref.shape
    assert np.abs(audio - ref).max() <= 1e-5


def test_push_schedule_flush_reset(tiny, codes, full) -> None:
    dec = CodecStreamDecoder(tiny, first_chunk_frames=3, chunk_frames=5)
    out: list[np.ndarray] = []
    assert dec.push(codes[:, :2]) == [] and dec.pending_frames == 2
    out += dec.push(codes[:, 2:3])  # first chunk complete (3 frames)
    assert [len(c) for c in out] == [3 * 32]
    out += dec.push(codes[:, 3:14])  # 11 frames: two chunks of 5, one frame left
    assert [len(c) // 32 for c in out] == [3, 5, 5] and dec.pending_frames == 1
    out += dec.push(codes[:, 14:])
    out += dec.flush()
    assert dec.flush() == [] and dec.frames_decoded == codes.shape[1]
    np.testing.assert_allclose(np.concatenate(out), full, rtol=0, atol=1e-5)

    dec.reset()
    assert dec.frames_decoded == 0 and dec.state_nbytes() == 0
    again = dec.push(codes[:, :3]) + dec.flush()
    np.testing.assert_allclose(np.concatenate(again), full[: 3 * 32], rtol=0, atol=1e-5)


def test_fork_is_independent(tiny, codes, full) -> None:
    dec = CodecStreamDecoder(tiny)
    dec.decode_chunk(codes[:, :10])
    fork = dec.fork()
    a = dec.decode_chunk(codes[:, 10:12])
    fork.decode_chunk(codes[:, 100:103])  # diverge
    b = dec.decode_chunk(codes[:, 12:14])
    np.testing.assert_allclose(np.concatenate([a, b]), full[10 * 32 : 14 * 32], rtol=0, atol=1e-5)


def test_bad_codes_are_rejected(tiny) -> None:
    dec = CodecStreamDecoder(tiny)
    with pytest.raises(ValueError, match="shape"):
        dec.push(np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ValueError):
        CodecStreamDecoder(tiny, first_chunk_frames=0)


def _chunk_flops(dec: CodecStreamDecoder, chunk: np.ndarray) -> int:
    with FlopCounterMode(display=False) as counter:
        dec.decode_chunk(chunk)
    return counter.get_total_flops()


@pytest.mark.parametrize("n", [1, 4])
def test_cost_per_chunk_is_constant(tiny, codes, n: int) -> None:
    """Same FLOPs and state size for a chunk at frame 150 and at frame 330 (window of 128 full)."""
    window = tiny.config.quantizer.transformer.window_size
    dec = CodecStreamDecoder(tiny, n, n)
    dec.decode_chunk(codes[:, :150])
    flops_early = _chunk_flops(dec, codes[:, 150 : 150 + n])
    state_early = dec.state_nbytes()
    assert dec.last_stats is not None and dec.last_stats.attention_keys == window - 1 + n
    dec.decode_chunk(codes[:, 150 + n : 330])
    flops_late = _chunk_flops(dec, codes[:, 330 : 330 + n])
    assert flops_early == flops_late > 0
    assert dec.state_nbytes() == state_early
    assert dec.last_stats.attention_keys == window - 1 + n

    # versus re-decoding the prefix: the cost of producing the same chunk grows with the position
    with FlopCounterMode(display=False) as counter:
        tiny.decode(torch.from_numpy(codes[:, : 330 + n]))
    assert counter.get_total_flops() > 50 * flops_late


def test_state_stops_growing_at_the_window(tiny, codes) -> None:
    dec = CodecStreamDecoder(tiny)
    sizes = []
    for t in range(0, 200, 10):
        dec.decode_chunk(codes[:, t : t + 10])
        sizes.append(dec.state_nbytes())
    assert sizes[0] < sizes[12]  # grows while the attention window fills (128 frames)
    assert len(set(sizes[13:])) == 1  # then constant


def test_bench_runs_on_tiny_shapes(s2pro_fixtures: Path) -> None:
    from agent_runtime.tts.s2pro.codec_bench import BenchOptions, run_bench

    lines: list[str] = []
    res = run_bench(
        BenchOptions(seconds=0.05, chunk_frames=8, sizes=(1, 2), repeats=1, threads=1,
                     config_path=str(s2pro_fixtures / "codec_tiny.json")),
        log=lines.append,
    )
    assert set(res["chunk_ms"]) == {1, 2}
    assert res["stream_total_s"] > 0 and res["prefix_total_s"] > 0 and res["peak_mib"] > 0
    assert any("ratio" in line for line in lines)
