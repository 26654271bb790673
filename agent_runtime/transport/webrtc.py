"""WebRTC call leg on aiortc: the caller's microphone track in, a paced agent track out.

Outbound, `AgentAudioTrack` is the track aiortc's RTP sender pulls from: every 20 ms it hands over
exactly one frame (48 kHz mono s16) - agent audio if some is queued, silence otherwise. `send()`
returns once at most one frame is waiting, so `clear()` silences the agent within a frame.

Inbound, aiortc's receiver passes every RTP packet through a jitter buffer before decoding. Its
default for audio holds 4 packets (80 ms) so that a playout device never starves; the agent does not
play caller audio, it feeds VAD and ASR, which do not mind a late or missing packet. So by default
(`server.jitter_buffer_packets: 0`) the buffer is replaced by `PassThroughJitterBuffer`, which
releases each packet as it arrives and drops packets that arrive after a later one.
`docs/perf_media.md` has the measured effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections.abc import Callable

import aioice.ice
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCIceServer, RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add, uint16_gt

from agent_runtime.audio.frame import AudioFrame
from agent_runtime.transport.base import Transport
from agent_runtime.transport.hangup import HangUp

log = logging.getLogger("agent_runtime.transport.webrtc")

WEBRTC_RATE = 48_000
FRAME_MS = 20
_ORIGINAL_HOST_ADDRESSES = aioice.ice.get_host_addresses


# -- ICE --------------------------------------------------------------------------------------------
def use_loopback_host_candidates(enabled: bool) -> None:
    """Gather only 127.0.0.1 host candidates (aioice skips loopback by default), or restore.

    Process-wide: aioice looks the function up as a module global at every gathering.
    """
    if enabled:
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []
    else:
        aioice.ice.get_host_addresses = _ORIGINAL_HOST_ADDRESSES


def ice_servers_from_config(servers: list, environ: dict[str, str]) -> list[RTCIceServer]:
    """`server.ice_servers` entries -> aiortc RTCIceServer (credentials read from the environment)."""
    out = []
    for s in servers:
        username = environ.get(s.username_env) if s.username_env else None
        credential = environ.get(s.credential_env) if s.credential_env else None
        out.append(RTCIceServer(urls=list(s.urls), username=username, credential=credential))
    return out


# -- inbound: jitter buffer ---------------------------------------------------------------------------
class PassThroughJitterBuffer:
    """Releases every audio packet as soon as it arrives; drops late and duplicate packets.

    Implements the part of aiortc's `JitterBuffer` interface its RTP receiver uses (`add`).
    """

    capacity = 16

    def __init__(self) -> None:
        self._last: int | None = None
        self.dropped = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        # at or just before the newest released packet: late or duplicate (far behind = a restart)
        if self._last is not None and not uint16_gt(seq, self._last) and uint16_add(self._last, -seq) < 1000:
            self.dropped += 1
            return False, None
        self._last = seq
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]

    def remove(self, count: int) -> None:
        """Nothing is held."""


def install_jitter_buffer(pc: RTCPeerConnection, packets: int) -> None:
    """Give every audio receiver of `pc` a buffer holding `packets` packets (0 = pass-through).

    Call after `setRemoteDescription` and before the answer is sent (no media flows before).
    """
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "audio":
            continue
        receiver = transceiver.receiver
        attr = "_RTCRtpReceiver__jitter_buffer"
        if not hasattr(receiver, attr):  # aiortc changed its internals: keep its default
            log.warning("aiortc receiver has no %s; keeping its default jitter buffer", attr)
            continue
        buffer = PassThroughJitterBuffer() if packets == 0 else JitterBuffer(capacity=16, prefetch=packets)
        setattr(receiver, attr, buffer)


# -- outbound: the paced agent track -----------------------------------------------------------------
class AgentAudioTrack(MediaStreamTrack):
    """20 ms frames of agent audio, in real time, silence when nothing is queued."""

    kind = "audio"

    def __init__(self, sample_rate: int = WEBRTC_RATE) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * FRAME_MS // 1000
        self._buf = np.zeros(0, dtype=np.int16)
        self._space = asyncio.Event()
        self._space.set()
        self._start: float | None = None
        self._pts = 0
        self.on_frame_out: Callable[[float, np.ndarray], None] | None = None
        """Called with (time, pcm) as each frame, silence included, leaves (benchmarks, tests)."""

    @property
    def queued_samples(self) -> int:
        return len(self._buf)

    async def push(self, pcm: np.ndarray) -> None:
        """Queue samples; waits while a frame or more is already queued."""
        while len(self._buf) >= self.frame_samples:
            self._space.clear()
            await self._space.wait()
        self._buf = np.concatenate([self._buf, pcm]) if len(self._buf) else pcm.copy()

    async def wait_space(self) -> None:
        """Wait until a frame can be queued without blocking."""
        while len(self._buf) >= self.frame_samples:
            self._space.clear()
            await self._space.wait()

    def clear(self) -> None:
        self._buf = np.zeros(0, dtype=np.int16)
        self._space.set()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._pts += self.frame_samples
            due = self._start + self._pts / self.sample_rate
            if now - due > 0.2:  # the loop stalled: re-anchor instead of sending a burst
                self._start = now - self._pts / self.sample_rate
            elif due > now:
                await asyncio.sleep(due - now)
        n = self.frame_samples
        pcm = self._buf[:n]
        self._buf = self._buf[n:]
        self._space.set()
        if len(pcm) < n:
            pcm = np.concatenate([pcm, np.zeros(n - len(pcm), dtype=np.int16)])
        if self.on_frame_out is not None:
            self.on_frame_out(time.monotonic(), pcm)
        frame = av.AudioFrame(format="s16", layout="mono", samples=n)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        return frame


class Decimator:
    """Streaming 48 kHz -> 16 kHz mono int16 with a short linear-phase FIR.

    The runtime's general resampler (soxr HQ) releases its output in 40 ms bursts when fed 20 ms
    frames, which delays what the VAD sees by up to a frame; this filter releases every sample at once.
    Kaiser-windowed sinc, 145 taps (1.5 ms delay): flat to 6.3 kHz, -6 dB at 7 kHz, > 70 dB down from 7.8 kHz.
    """

    factor = 3
    out_rate = 16_000

    def __init__(self, taps: int = 145, cutoff_hz: float = 7_000.0, in_rate: int = WEBRTC_RATE) -> None:
        n = np.arange(taps) - (taps - 1) / 2
        h = np.sinc(2 * cutoff_hz / in_rate * n) * np.kaiser(taps, 7.0)
        self._h = (h / h.sum()).astype(np.float32)
        self._hist = np.zeros(taps - 1, dtype=np.float32)
        self._phase = 0  # index in the next block of the next sample to keep

    def process(self, pcm: np.ndarray) -> np.ndarray:
        x = np.concatenate([self._hist, pcm.astype(np.float32)])
        self._hist = x[len(x) - len(self._hist) :]
        y = np.convolve(x, self._h, mode="valid")[self._phase :: self.factor]
        self._phase = (self._phase - len(pcm)) % self.factor
        return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def av_to_frame(frame: av.AudioFrame, arrived: float) -> AudioFrame:
    """A decoded aiortc frame (s16, packed) -> AudioFrame stamped with when its first sample arrived."""
    pcm = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        pcm = pcm.T
    pcm = pcm.reshape(-1, channels) if channels > 1 else pcm.reshape(-1)
    pcm = np.ascontiguousarray(pcm, dtype=np.int16)
    duration = pcm.shape[0] / frame.sample_rate
    return AudioFrame(pcm, frame.sample_rate, arrived - duration)


# -- the transport ----------------------------------------------------------------------------------
class WebRTCTransport(Transport):
    """Agent side of a WebRTC call on an aiortc peer connection.

    Usage: create it with the peer connection, then `accept(offer_sdp)`; it adds the outbound track
    and picks up the caller's audio track when it arrives. Inbound audio is delivered as 16 kHz mono
    (`Decimator`), the rate the VAD and ASR use; `decimate=False` delivers the decoded 48 kHz stereo.
    """

    def __init__(
        self,
        pc: RTCPeerConnection,
        *,
        jitter_buffer_packets: int = 0,
        decimate: bool = True,
        media_timeout_s: float | None = None,
    ) -> None:
        self.pc = pc
        self.media_timeout_s = media_timeout_s
        self.hang_up: HangUp | None = None
        """Set when the transport ended the call on its own (no caller audio for `media_timeout_s`)."""
        self._connected = asyncio.Event()
        self.decimate = decimate
        self.output_sample_rate = WEBRTC_RATE
        self.jitter_buffer_packets = jitter_buffer_packets
        self.track = AgentAudioTrack(WEBRTC_RATE)
        self._inbound: asyncio.Queue[AudioFrame | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self.on_frame_in: Callable[[AudioFrame], None] | None = None
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)

    async def accept(self, offer_sdp: str) -> str:
        """Apply the caller's offer; returns the answer SDP (ICE gathering complete, no trickle)."""
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        if not any(t.kind == "audio" for t in self.pc.getTransceivers()):
            raise ValueError("the offer has no audio media section")
        install_jitter_buffer(self.pc, self.jitter_buffer_packets)
        self.pc.addTrack(self.track)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return self.pc.localDescription.sdp

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None and not self._closed:
            self._reader = asyncio.create_task(self._read(track), name="webrtc-inbound")

    async def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self._connected.set()
        if self.pc.connectionState in ("failed", "closed"):
            self._inbound.put_nowait(None)

    async def wait_connected(self) -> None:
        """Return once the peer connection is up (ICE and DTLS done)."""
        await self._connected.wait()

    async def _read(self, track: MediaStreamTrack) -> None:
        decimator = Decimator()
        try:
            while True:
                frame = await track.recv()
                f = av_to_frame(frame, time.monotonic()).mono()
                if self.decimate and f.sample_rate == WEBRTC_RATE:
                    f = AudioFrame(decimator.process(f.pcm), Decimator.out_rate, f.timestamp)
                if self.on_frame_in is not None:
                    self.on_frame_in(f)
                self._inbound.put_nowait(f)
        except (MediaStreamError, asyncio.CancelledError):
            pass
        finally:
            self._inbound.put_nowait(None)

    async def recv(self) -> AudioFrame | None:
        """The caller's next frame (16 kHz mono); None at hang-up, or when no caller audio arrived for
        `media_timeout_s`, from the first call on (a browser that vanished without closing the
        connection, or a peer that connected and never sent audio): then `hang_up` is MEDIA_TIMEOUT."""
        if self._closed and self._inbound.empty():
            return None
        try:
            return await asyncio.wait_for(self._inbound.get(), self.media_timeout_s)
        except TimeoutError:
            self.hang_up = HangUp.MEDIA_TIMEOUT
            log.warning("no caller audio for %g s: hanging up", self.media_timeout_s)
            return None

    async def send(self, frame: AudioFrame) -> None:
        if frame.sample_rate != self.output_sample_rate:
            raise ValueError(f"WebRTC transport plays {self.output_sample_rate} Hz, got {frame.sample_rate}")
        if self._closed:
            return
        await self.track.push(frame.mono().pcm)

    async def wait_writable(self) -> None:
        if not self._closed:
            await self.track.wait_space()

    async def clear(self) -> None:
        self.track.clear()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.track.clear()
        self.track.stop()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.pc.close()
        self._inbound.put_nowait(None)
