"""Transport contract: where caller audio comes from and agent audio goes to."""

from __future__ import annotations

from abc import ABC, abstractmethod

from agent_runtime.audio.frame import AudioFrame


class Transport(ABC):
    """A call leg (loopback simulation, WebRTC peer, phone media stream).

    Inbound: `recv()` returns the caller's next frame (any rate/channels; the runtime resamples) or
    None when the caller hung up. Outbound: `send()` queues agent audio and returns once the frame is
    accepted; the transport paces playout in real time and keeps at most a frame or so queued, so
    `clear()` silences the agent at once (barge-in): a frame whose `send()` has returned has been
    (or is being) played. Inbound frame timestamps are on the `time.monotonic()` clock.
    """

    output_sample_rate: int = 16_000

    @abstractmethod
    async def recv(self) -> AudioFrame | None:
        """Next inbound frame, or None at hang-up."""

    @abstractmethod
    async def send(self, frame: AudioFrame) -> None:
        """Queue one outbound frame (mono int16 at `output_sample_rate`)."""

    async def wait_writable(self) -> None:  # noqa: B027 - optional hook
        """Return once `send()` would accept a frame without waiting.

        The runtime awaits this before deciding to send the next frame, so that a barge-in that
        pauses playout meanwhile holds that frame back instead of queueing it.
        """

    @abstractmethod
    async def clear(self) -> None:
        """Drop all queued outbound audio immediately."""

    @abstractmethod
    async def close(self) -> None:
        """End the call leg."""
