"""What `tts-serve`'s `/metrics` shows (Prometheus text format, see server/metrics.py)."""

from __future__ import annotations

from agent_runtime.server.metrics import LATENCY_BUCKETS, Counter, Gauge, Histogram

ENDPOINTS = ("speech", "stream", "session")  # POST, our WebSocket, sglang-omni's WebSocket
OUTCOMES = ("flushed", "cancelled", "error")
REJECT_REASONS = (
    "busy", "unauthorized", "bad_request", "unsupported", "too_long", "timeout", "shutting_down", "connections",
)
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


class TTSServiceMetrics:
    def __init__(self) -> None:
        self.active_streams = Gauge("tts_active_streams", "speech streams being synthesised")
        self.connections = Gauge("tts_open_connections", "open WebSocket connections")
        self.streams = Counter("tts_streams_total", "finished speech streams", ("endpoint", "outcome"))
        self.rejected = Counter("tts_rejected_total", "requests, streams and messages refused", ("reason",))
        self.first_audio = Histogram(
            "tts_time_to_first_audio_seconds", "first text received to first audio sent, per stream", ("endpoint",)
        )
        self.rtf = Histogram(
            "tts_real_time_factor", "synthesis wall time / audio seconds, per stream", ("endpoint",),
            buckets=RTF_BUCKETS,
        )
        self.cancel_latency = Histogram(
            "tts_cancel_latency_seconds", "cancel received to done sent", buckets=(0.001, 0.0025, *LATENCY_BUCKETS)
        )
        self.audio_seconds = Counter("tts_audio_seconds_total", "audio sent", ("endpoint",))
        for endpoint in ENDPOINTS:
            self.audio_seconds.values[(endpoint,)] = 0.0
            for outcome in OUTCOMES:
                self.streams.values[(endpoint, outcome)] = 0.0
        for reason in REJECT_REASONS:
            self.rejected.values[(reason,)] = 0.0

    def render(self) -> str:
        metrics = [
            self.active_streams, self.connections, self.streams, self.rejected, self.audio_seconds,
            self.first_audio, self.rtf, self.cancel_latency,
        ]
        return "\n".join(line for m in metrics for line in m.render()) + "\n"
