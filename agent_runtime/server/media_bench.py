"""Media-path latency over WebRTC on loopback (`agent-runtime bench media`).

Two aiortc peers in one process, talking over 127.0.0.1 UDP: a caller (`WebRTCCaller`) and the agent
side (`WebRTCTransport`, exactly as the server uses it). Tone bursts mark instants in both directions:

* inbound: a burst's first frame leaving the caller's track (handed to the Opus encoder) -> the
  16 kHz 20 ms frame containing it handed to the VAD (after Opus, UDP, the receive jitter buffer,
  decoding, resampling and re-framing, the same steps `Session` runs);
* outbound: a synthesizer chunk created (22.05 kHz, like piper) -> resampled, cut into 20 ms frames,
  `transport.send()`, paced out, Opus, UDP -> the first decoded frame of it arriving at the caller.

The caller's own receive buffer is pass-through, so the outbound figure is what the agent side adds.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection

from agent_runtime.audio.frame import AudioFrame
from agent_runtime.audio.resample import FrameRebuffer, StreamResampler
from agent_runtime.metrics.turns import percentiles
from agent_runtime.server.webrtc_client import WebRTCCaller
from agent_runtime.transport.webrtc import WEBRTC_RATE, WebRTCTransport, use_loopback_host_candidates

TTS_RATE = 22_050
VAD_RATE = 16_000
BURST_S = 0.1
ONSET_PEAK = 1500


def _tone(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (12_000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


@dataclass
class _Onsets:
    """Detects the first loud frame after a quiet one."""

    times: list[float] = field(default_factory=list)
    _loud: bool = False

    def feed(self, t: float, pcm: np.ndarray) -> None:
        loud = bool(np.abs(pcm).max(initial=0) > ONSET_PEAK)
        if loud and not self._loud:
            self.times.append(t)
        self._loud = loud


def _pair(sent: list[float], seen: list[float], skip: int) -> list[float]:
    """Latency of each sent onset to the first detected onset after it (ms)."""
    out = []
    for i, t in enumerate(sent):
        if i < skip:
            continue
        nxt = sent[i + 1] if i + 1 < len(sent) else float("inf")
        match = [s for s in seen if t <= s < nxt]
        if match:
            out.append((match[0] - t) * 1000)
    return out


async def measure(
    jitter_buffer_packets: int, *, decimate: bool = True, bursts: int = 30, period_s: float = 0.3
) -> dict[str, dict]:
    """One call: `bursts` tone bursts each way; returns inbound/outbound latency percentiles (ms)."""
    use_loopback_host_candidates(True)
    caller = WebRTCCaller(jitter_buffer_packets=0)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    agent = WebRTCTransport(pc, jitter_buffer_packets=jitter_buffer_packets, decimate=decimate)
    try:
        await caller.accept_answer(await agent.accept(await caller.create_offer()))
        await caller.connected()
        in_sent, in_seen, out_sent = [], _Onsets(), []
        out_seen = _Onsets()
        mic_onsets = _Onsets()
        caller.mic.on_frame_out = lambda t, pcm: mic_onsets.feed(t, pcm)
        caller.on_frame_in = out_seen.feed

        async def consume() -> None:
            resampler = StreamResampler(WEBRTC_RATE, VAD_RATE)
            rebuffer = FrameRebuffer(VAD_RATE, 20)
            while (frame := await agent.recv()) is not None:
                mono = frame.mono()
                if resampler.in_rate != mono.sample_rate:
                    resampler = StreamResampler(mono.sample_rate, VAD_RATE)
                for f in rebuffer.push(resampler.process(mono)):
                    in_seen.feed(time.monotonic(), f.pcm)

        async def caller_bursts() -> None:
            tone = _tone(WEBRTC_RATE, BURST_S)
            n = caller.mic.frame_samples
            for _ in range(bursts):
                for i in range(0, len(tone), n):
                    await caller.mic.push(tone[i : i + n])
                await asyncio.sleep(period_s + random.uniform(0, 0.02))

        async def agent_bursts() -> None:
            chunk = _tone(TTS_RATE, BURST_S, 300.0)
            for _ in range(bursts):
                await asyncio.sleep(period_s + random.uniform(0, 0.02))
                out_sent.append(time.monotonic())  # the synthesizer's chunk exists now
                resampler = StreamResampler(TTS_RATE, WEBRTC_RATE)
                rebuffer = FrameRebuffer(WEBRTC_RATE, 20)
                for f in rebuffer.push(resampler.process(AudioFrame(chunk, TTS_RATE))):
                    await agent.send(AudioFrame(f.pcm, WEBRTC_RATE, time.monotonic()))

        reader = asyncio.create_task(consume())
        await asyncio.gather(caller_bursts(), agent_bursts())
        await asyncio.sleep(0.5)
        in_sent = mic_onsets.times
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    finally:
        await caller.close()
        await agent.close()
    return {
        "inbound_ms": percentiles(_pair(in_sent, in_seen.times, skip=2) or [float("nan")]),
        "outbound_ms": percentiles(_pair(out_sent, out_seen.times, skip=2) or [float("nan")]),
    }


# (label, jitter_buffer_packets, decimate): aiortc as shipped -> each change on its own -> both.
MODES: list[tuple[str, int, bool]] = [
    ("before: aiortc jitter buffer (4 packets), soxr HQ to 16 kHz", 4, False),
    ("pass-through jitter buffer, soxr HQ to 16 kHz", 0, False),
    ("after: pass-through jitter buffer, FIR decimator", 0, True),
]


async def compare(bursts: int = 30, modes: list[tuple[str, int, bool]] | None = None) -> dict[str, dict]:
    """`measure` for each mode, one after another in the same process."""
    results = {}
    for label, packets, decimate in modes or MODES:
        results[label] = await measure(packets, decimate=decimate, bursts=bursts)
    return results
