"""Speech recognition contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import numpy as np

from agent_runtime.asr.lanes import LanePool
from agent_runtime.cores import ENGINE_LOAD


@dataclass(frozen=True, slots=True)
class Transcript:
    """The text of one stretch of speech."""

    text: str
    audio_seconds: float
    processing_seconds: float = 0.0
    language: str = "en"
    no_speech_prob: float = 0.0
    wait_seconds: float = 0.0
    """Time the request queued for a free recognizer lane before decoding started."""

    @property
    def is_empty(self) -> bool:
        return not self.text.strip()


class Recognizer(ABC):
    """Turns mono float32 audio at `sample_rate` into text.

    `transcribe` is blocking (it runs the model); the runtime calls `atranscribe`, which runs it in
    a worker thread so the event loop never blocks. An implementation declares in `concurrency` how
    many `transcribe` calls it can run at once from different threads (1: one at a time);
    `atranscribe` queues every caller of the process for one of that many lanes (`lanes`), in
    arrival order, and reports the wait in `Transcript.wait_seconds`.
    """

    sample_rate: int = 16_000
    concurrency: int = 1

    def __init__(self) -> None:
        self._lanes: LanePool | None = None

    @property
    def lanes(self) -> LanePool:
        """The process-wide queue in front of this recognizer (`concurrency` lanes)."""
        lanes = getattr(self, "_lanes", None)  # a subclass may not call __init__
        if lanes is None:
            lanes = self._lanes = LanePool(self.concurrency)
        return lanes

    @abstractmethod
    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Transcribe float32 mono samples at `self.sample_rate`."""

    def warmup(self) -> None:
        """Run the model once so the first real call is not slowed by lazy initialisation."""
        self.transcribe(np.zeros(self.sample_rate // 2, dtype=np.float32))

    def _transcribe_busy(self, audio: np.ndarray) -> Transcript:
        with ENGINE_LOAD.busy():
            return self.transcribe(audio)

    async def atranscribe(self, audio: np.ndarray) -> Transcript:
        """`transcribe` in a worker thread once a lane is free; the wait is in `wait_seconds`."""
        transcript, wait = await self.lanes.run(self._transcribe_busy, audio)
        return replace(transcript, wait_seconds=wait)
