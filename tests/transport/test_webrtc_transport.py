"""The WebRTC transport's parts: paced outbound track, jitter buffers, decimator, loopback ICE."""

from __future__ import annotations

import asyncio
import time

import aioice.ice
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from agent_runtime.audio.frame import AudioFrame
from agent_runtime.server.media_bench import measure
from agent_runtime.server.webrtc_client import WebRTCCaller
from agent_runtime.transport.webrtc import (
    AgentAudioTrack,
    Decimator,
    PassThroughJitterBuffer,
    WebRTCTransport,
    use_loopback_host_candidates,
)


def _frame(value: int, n: int = 960) -> np.ndarray:
    return np.full(n, value, dtype=np.int16)


async def test_track_paces_20ms_frames_and_sends_silence_when_idle() -> None:
    track = AgentAudioTrack()
    t0 = time.monotonic()
    frames = [await track.recv() for _ in range(11)]
    elapsed = time.monotonic() - t0
    assert 0.18 <= elapsed < 0.35  # 10 intervals of 20 ms
    assert all(f.samples == 960 and f.sample_rate == 48_000 for f in frames)
    assert [f.pts for f in frames[:3]] == [0, 960, 1920]
    assert not any(f.to_ndarray().any() for f in frames)  # silence


async def test_at_most_one_frame_queued_and_clear_silences_at_once() -> None:
    track = AgentAudioTrack()
    await track.push(_frame(1000))  # the slot was free: returns at once
    second = asyncio.create_task(track.push(_frame(2000)))
    await asyncio.sleep(0.05)
    assert not second.done() and track.queued_samples == 960  # waits until the first leaves
    first = await track.recv()
    assert int(first.to_ndarray().max()) == 1000
    await asyncio.wait_for(second, 1)
    track.clear()
    assert track.queued_samples == 0
    nxt = await track.recv()
    assert not nxt.to_ndarray().any()  # the cleared frame was never sent


def _packet(seq: int, ts: int) -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts)
    p._data = bytes([seq % 256])  # type: ignore[attr-defined]
    return p


def test_pass_through_jitter_buffer_releases_at_once_and_drops_late() -> None:
    buf = PassThroughJitterBuffer()
    out = [buf.add(_packet(s, s * 960))[1] for s in (65534, 65535, 0, 2, 1, 2, 3)]
    released = [None if f is None else f.timestamp for f in out]
    assert released == [65534 * 960, 65535 * 960, 0, 2 * 960, None, None, 3 * 960]
    assert buf.dropped == 2
    # aiortc's own buffer (what jitter_buffer_packets=4 keeps) holds packets back
    ref = JitterBuffer(capacity=16, prefetch=4)
    assert [ref.add(_packet(s, s * 960))[1] is not None for s in range(5)] == [False] * 4 + [True]


def test_decimator_streams_like_one_shot_and_filters() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(48_000) * 3000).astype(np.int16)
    whole = Decimator().process(x)
    d = Decimator()
    parts = np.concatenate([d.process(x[i : i + 977]) for i in range(0, len(x), 977)])
    assert len(whole) == 16_000 and np.array_equal(whole, parts)
    t = np.arange(48_000) / 48_000
    for freq, low, high in ((1000, 0.97, 1.03), (9000, 0.0, 0.01)):
        tone = (10_000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
        dd = Decimator()
        y = np.concatenate([dd.process(tone[i : i + 960]) for i in range(0, 48_000, 960)])
        assert low <= np.abs(y[1000:]).max() / 10_000 <= high


def test_loopback_candidates_patch_is_reversible() -> None:
    from agent_runtime.transport import webrtc

    was_patched = aioice.ice.get_host_addresses is not webrtc._ORIGINAL_HOST_ADDRESSES
    use_loopback_host_candidates(True)
    assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
    use_loopback_host_candidates(False)
    assert aioice.ice.get_host_addresses is webrtc._ORIGINAL_HOST_ADDRESSES
    use_loopback_host_candidates(was_patched)


@pytest.mark.slow
async def test_transport_round_trip_and_hang_up() -> None:
    use_loopback_host_candidates(True)
    caller = WebRTCCaller()
    agent = WebRTCTransport(RTCPeerConnection(RTCConfiguration(iceServers=[])))
    await caller.accept_answer(await agent.accept(await caller.create_offer()))
    await caller.connected()
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)).astype(np.int16)
    caller.play(tone, 16_000)
    got = []
    async with asyncio.timeout(5):
        while sum(len(f.pcm) for f in got) < 8000:
            f = await agent.recv()
            assert f is not None and f.sample_rate == 16_000 and f.channels == 1
            got.append(f)
    assert max(np.abs(f.pcm).max() for f in got) > 4000
    t = time.monotonic()
    for _ in range(10):
        await agent.send(AudioFrame(_frame(6000), 48_000))
    await asyncio.sleep(0.3)
    assert caller.audio_after(t) is not None
    await caller.close()
    async with asyncio.timeout(10):
        while (f := await agent.recv()) is not None:
            pass
    await agent.close()


@pytest.mark.slow
async def test_jitter_buffer_setting_changes_inbound_latency() -> None:
    shipped = await measure(4, decimate=True, bursts=6, period_s=0.15)
    ours = await measure(0, decimate=True, bursts=6, period_s=0.15)
    # aiortc's buffer holds 4 packets (80 ms) before a frame is decoded; pass-through holds none
    assert shipped["inbound_ms"]["p50"] - ours["inbound_ms"]["p50"] > 50
    assert ours["inbound_ms"]["p50"] < 40


async def test_caller_audio_stopping_counts_as_hang_up() -> None:
    use_loopback_host_candidates(True)
    caller = WebRTCCaller()
    agent = WebRTCTransport(RTCPeerConnection(RTCConfiguration(iceServers=[])), media_timeout_s=0.5)
    await caller.accept_answer(await agent.accept(await caller.create_offer()))
    await caller.connected()
    assert await agent.recv() is not None
    caller.mic.stop()  # the browser vanished: no more RTP, no DTLS goodbye
    t = time.monotonic()
    async with asyncio.timeout(5):
        while await agent.recv() is not None:
            pass
    assert time.monotonic() - t < 2.0
    await agent.close()
    await caller.close()
