"""Media-path latency over WebRTC on loopback (`agent-runtime bench media`).

Two aiortc peers in one process, talking over 127.0.0.1 UDP: a caller (`WebRTCCaller`) and the agent
side (`WebRTCTransport`, exactly as the server uses it). Tone bursts mark instants in both directions:

* inbound: a burst's first frame leaving the caller's track (handed to the Opus encoder) -> the
  16 kHz 20 ms frame containing it handed to the VAD (after Opus, UDP, the receive jitter buffer,
  decoding, resampling and re-framing, the same steps `Session` runs);
* outbound: a synthesizer chunk created (22.05 kHz, like piper) -> resampled, cut into 20 ms frames,
  `transport.send()`, paced out, Opus, UDP -> the first decoded frame of it arriving at the caller.

The caller's own receive buffer is pass-through, so the outbound figure is what the agent side adds.

`voice_calls` times whole turns as the caller hears them: a real server (`CallServer`, the engines the
config names) on loopback, an aiortc caller speaking piper-synthesized questions of three kinds (plain,
with a mid-sentence pause, long). Voice to voice *at the client* runs from the caller's last audible
sound (the end of the last 10 ms above -45 dBFS in the audio the caller's track sent) to the agent's
first audible sample (peak above `AGENT_AUDIBLE_PEAK`) in the audio the caller received; the server's
own figure for the same turn (`voice_to_voice_ms` of its live `latency` event: its end of speech to its
first audio frame sent) is printed next to it.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

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


# -- voice to voice at the client ---------------------------------------------------------------------
AGENT_AUDIBLE_PEAK = 300  # int16 peak: the load harness's `measure.audible_peak`
QUESTIONS: list[tuple[str, list[str], int]] = [
    ("plain", ["What time do you open tomorrow?"], 0),
    ("pause", ["Hi, I'd like to know", "what time you open tomorrow."], 700),  # as in the demo
    (
        "long",
        [
            "Hello, I bought a pair of headphones from your shop last week and the left side stopped "
            "working yesterday. Can I return them if I do not have the receipt any more?"
        ],
        0,
    ),
]
VAD_MODES: list[tuple[str, str]] = [
    ("before: end of speech = webrtcvad's last voiced frame", "webrtcvad"),
    ("after: end of speech = energy gate", "energy"),
]


def caller_speech_end(sent: list[tuple[float, np.ndarray]], rate: int = WEBRTC_RATE) -> float | None:
    """When the caller's last audible sound left: the end of the last audible 10 ms block
    (`audio.level`) in the frames its track sent, `(departure time, pcm)` each."""
    from agent_runtime.audio.level import last_audible_end

    for t, pcm in reversed(sent):
        audible = last_audible_end(pcm, rate)
        if audible is not None:
            return t + audible
    return None


def agent_onset(
    received: list[tuple[float, np.ndarray]], after: float, rate: int = WEBRTC_RATE
) -> float | None:
    """The first audible agent sample arriving after `after`: its frame's arrival + its offset."""
    for t, pcm in received:
        if t < after:
            continue
        loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > AGENT_AUDIBLE_PEAK)
        if len(loud):
            return t + loud[0] / rate
    return None


def question_audio(say) -> list[tuple[str, np.ndarray]]:
    """(kind, int16 16 kHz audio) per question: each part trimmed to its audible span, pauses between."""
    from agent_runtime.audio.level import audible_span

    out = []
    for kind, parts, pause_ms in QUESTIONS:
        pieces = []
        for i, text in enumerate(parts):
            pcm = say(text)
            a, b = audible_span(pcm)
            if i:
                pieces.append(np.zeros(VAD_RATE * pause_ms // 1000, np.int16))
            pieces.append(pcm[int(a * VAD_RATE) : int(b * VAD_RATE)])
        out.append((kind, np.concatenate(pieces)))
    return out


async def one_turn(base_url: str, pcm16k: np.ndarray, timeout_s: float = 30.0) -> dict[str, Any]:
    """One call, one question: client and server voice to voice (ms), whether the caller heard the agent
    while still talking (a premature reply), and how many replies the server started sending audio for
    while the caller was talking (dropped before anything audible reached the caller)."""
    caller = WebRTCCaller()
    sent: list[tuple[float, np.ndarray]] = []
    got: list[tuple[float, np.ndarray]] = []
    caller.mic.on_frame_out = lambda t, pcm: sent.append((t, pcm))
    caller.on_frame_in = lambda t, pcm: got.append((t, pcm))
    try:
        await caller.call_http(base_url)
        await caller.connected()
        await caller.wait_event(lambda e: e.get("kind") == "session", 5.0)
        await asyncio.sleep(0.3)  # a little silence before speaking, as a caller would
        start = time.monotonic()
        await caller.say(pcm16k, VAD_RATE)
        during = len(caller.events)  # events so far came while the caller was speaking
        end = caller_speech_end(sent)
        assert end is not None, "the caller sent no audible audio"
        early = agent_onset(got, start)
        premature = early is not None and early < end
        deadline = time.monotonic() + timeout_s
        onset = None
        while onset is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            onset = agent_onset(got, end)
        server = None
        while onset is not None and server is None and time.monotonic() < deadline + 5:
            # the reply's own `latency` event: one sent while the caller spoke belongs to a reply
            # started at a pause (its first frames, silent, left before it was dropped)
            server = next(
                (e.get("voice_to_voice_ms") for e in caller.events[during:] if e.get("kind") == "latency"), None
            )
            await asyncio.sleep(0.02)
        started_early = sum(e.get("kind") == "latency" for e in caller.events[:during])
        return {
            "client_ms": None if onset is None else round((onset - end) * 1000, 1),
            "server_ms": server,
            "premature": premature,
            "server_started_early": started_early,
        }
    finally:
        await caller.close()


async def voice_calls(
    config_path: str | None = None, calls: int = 3, *, instant: bool = False, modes: list[tuple[str, str]] | None = None
) -> dict[str, dict[str, Any]]:
    """`calls` calls per question kind and VAD mode against one in-process server (engines loaded and
    warmed once); per mode and kind the client and server voice to voice (p50, ms) and the samples."""
    from agent_runtime.config import load_config
    from agent_runtime.engines import build_engines, build_instant_engines
    from agent_runtime.server.app import CallServer
    from agent_runtime.server.slowloris import start_http
    from agent_runtime.vad.evaluate import say_with_piper

    use_loopback_host_candidates(True)
    loop = asyncio.get_running_loop()
    base_cfg = load_config(config_path, {"server": {"loopback_only": True}})
    if instant:
        engines = build_instant_engines(base_cfg, reply="Yes, we open at nine tomorrow.")
    else:
        engines = await asyncio.to_thread(build_engines, base_cfg, warm_loop=loop)
    questions = await asyncio.to_thread(question_audio, say_with_piper())
    results: dict[str, dict[str, Any]] = {}
    for label, mode in modes or VAD_MODES:
        cfg = load_config(config_path, {"server": {"loopback_only": True}, "vad": {"end_of_speech": mode}})
        server = CallServer(cfg, lambda: engines, host="127.0.0.1", environ={})
        runner = await start_http(server.app, "127.0.0.1", 0, header_timeout_s=cfg.server.header_timeout_s)
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        samples: list[dict[str, Any]] = []
        try:
            while server.engines is None:
                await asyncio.sleep(0.01)
            for _ in range(calls):
                for kind, pcm in questions:
                    samples.append({"kind": kind, **await one_turn(base, pcm)})
        finally:
            await server.drain(1.0)
            await runner.cleanup()
        results[label] = summarize_voice(samples)
    if not instant:
        await engines.llm.aclose()
    return results


def summarize_voice(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """p50 of client and server voice to voice, per question kind and over all, and the premature count."""

    def p50(values: list[float | None]) -> float | None:
        v = [x for x in values if x is not None]
        return round(float(np.percentile(v, 50)), 1) if v else None

    kinds = list(dict.fromkeys(s["kind"] for s in samples))
    out: dict[str, Any] = {
        k: {
            "client_p50_ms": p50([s["client_ms"] for s in samples if s["kind"] == k]),
            "server_p50_ms": p50([s["server_ms"] for s in samples if s["kind"] == k]),
        }
        for k in kinds
    }
    out["all"] = {
        "client_p50_ms": p50([s["client_ms"] for s in samples]),
        "server_p50_ms": p50([s["server_ms"] for s in samples]),
    }
    out["premature_replies"] = sum(bool(s["premature"]) for s in samples)
    out["server_started_early"] = sum(s.get("server_started_early", 0) for s in samples)
    out["unanswered"] = sum(s["client_ms"] is None for s in samples)
    out["samples"] = samples
    return out
