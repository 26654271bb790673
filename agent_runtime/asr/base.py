"""Speech recognition contract."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Transcript:
    """The text of one stretch of speech."""

    text: str
    audio_seconds: float
    processing_seconds: float = 0.0
    language: str = "en"
    no_speech_prob: float = 0.0

    @property
    def is_empty(self) -> bool:
        return not self.text.strip()


class Recognizer(ABC):
    """Turns mono float32 audio at `sample_rate` into text.

    `transcribe` is blocking (it runs the model); the runtime calls `atranscribe`, which runs it in
    a worker thread so the event loop never blocks. Implementations must be safe to call from one
    thread at a time; `atranscribe` serialises calls.
    """

    sample_rate: int = 16_000

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None

    @abstractmethod
    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Transcribe float32 mono samples at `self.sample_rate`."""

    def warmup(self) -> None:
        """Run the model once so the first real call is not slowed by lazy initialisation."""
        self.transcribe(np.zeros(self.sample_rate // 2, dtype=np.float32))

    async def atranscribe(self, audio: np.ndarray) -> Transcript:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await asyncio.to_thread(self.transcribe, audio)
