"""G.711 mu-law against a scalar transcription of the ITU-T G.191 reference code."""

from __future__ import annotations

import numpy as np

from agent_runtime.audio import mulaw


def _g191_compress(lin: int) -> int:
    """ulaw_compress() of ITU-T G.191 (STL g711.c), one sample."""
    absno = ((~lin) >> 2) + 33 if lin < 0 else (lin >> 2) + 33
    absno = min(absno, 0x1FFF)
    i = absno >> 6
    segno = 1
    while i != 0:
        segno += 1
        i >>= 1
    high_nibble = 0x0008 - segno
    low_nibble = 0x000F - ((absno >> segno) & 0x000F)
    out = (high_nibble << 4) | low_nibble
    return out | 0x0080 if lin >= 0 else out


def _g191_expand(code: int) -> int:
    """ulaw_expand() of ITU-T G.191, one byte."""
    sign = -1 if code < 0x80 else 1
    mantissa = ~code
    exponent = (mantissa >> 4) & 0x07
    segment = exponent + 1
    mantissa &= 0x0F
    step = 4 << segment
    return sign * ((0x0080 << exponent) + step * mantissa + step // 2 - 4 * 33)


def test_encode_matches_reference_for_every_sample() -> None:
    x = np.arange(-32768, 32768, dtype=np.int16)
    ours = np.frombuffer(mulaw.encode(x), dtype=np.uint8)
    ref = np.array([_g191_compress(int(v)) for v in x], dtype=np.uint8)
    assert np.array_equal(ours, ref)


def test_decode_matches_reference_and_known_codes() -> None:
    ours = mulaw.decode(bytes(range(256)))
    assert ours.dtype == np.int16
    assert list(ours) == [_g191_expand(c) for c in range(256)]
    # well-known points of the PCMU table
    assert ours[0xFF] == 0 and ours[0x7F] == 0
    assert ours[0x80] == 32124 and ours[0x00] == -32124
    assert ours[0xF0] == 120 and ours[0x70] == -120 and ours[0xE0] == 372


def test_round_trip_is_idempotent_and_close() -> None:
    codes = bytes(range(256))
    assert mulaw.encode(mulaw.decode(codes)) == codes.replace(b"\x7f", b"\xff")  # -0 encodes as +0
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(8000) * 4000).clip(-32768, 32767).astype(np.int16)
    back = mulaw.decode(mulaw.encode(pcm)).astype(np.int32)
    err = np.abs(back - pcm)
    assert np.all(err <= np.maximum(8, np.abs(pcm.astype(np.int32)) // 16))  # < 1 step of its segment
    assert len(mulaw.encode(pcm.reshape(-1, 1))) == 8000
