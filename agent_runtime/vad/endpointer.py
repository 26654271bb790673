"""Voice activity detection with endpointing (webrtcvad).

The endpointer consumes 16 kHz mono frames of 10, 20 or 30 ms and emits two kinds of events:

* `SPEECH_START` once `min_speech_ms` of voiced audio has accumulated in a short window (so clicks
  and coughs shorter than that never start speech). Its timestamp is the start of the first voiced
  frame of the run.
* `SPEECH_STOP` once `stop_silence_ms` of silence follows speech. Its timestamp is the end of the
  last voiced frame: the end of the caller's speech.

Deciding whether a stop ends the *turn* is the turn manager's job (it also looks at the words).
Audio is kept from `pre_roll_ms` before the first voiced frame onwards (so the first syllable is never
lost) until `take_audio()` hands it over.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

import numpy as np
import webrtcvad

from agent_runtime.audio.frame import AudioFrame


class VADEventType(Enum):
    SPEECH_START = "speech_start"
    SPEECH_STOP = "speech_stop"


@dataclass(frozen=True, slots=True)
class VADEvent:
    type: VADEventType
    timestamp: float
    """Start of speech (SPEECH_START) or end of the last voiced frame (SPEECH_STOP), runtime clock."""
    speech_seconds: float = 0.0
    """Voiced audio in the run that just stopped (SPEECH_STOP only)."""


@dataclass(frozen=True, slots=True)
class EndpointerConfig:
    aggressiveness: int = 2
    """webrtcvad mode 0 (least aggressive about filtering out non-speech) .. 3 (most)."""
    frame_ms: int = 20
    min_speech_ms: int = 120
    """Voiced audio within `start_window_ms` needed to declare speech."""
    start_window_ms: int = 200
    stop_silence_ms: int = 100
    """Unvoiced audio after speech that counts as a stop (a pause; the turn manager decides the end)."""
    pre_roll_ms: int = 300
    """Audio kept before the first voiced frame."""


class Endpointer:
    """Frame-by-frame speech start/stop detection. Not thread-safe; one per session."""

    sample_rate = 16_000

    def __init__(self, config: EndpointerConfig | None = None) -> None:
        self.config = cfg = config or EndpointerConfig()
        if cfg.frame_ms not in (10, 20, 30):
            raise ValueError("webrtcvad frames must be 10, 20 or 30 ms")
        if not 0 <= cfg.aggressiveness <= 3:
            raise ValueError("aggressiveness must be 0..3")
        self._vad = webrtcvad.Vad(cfg.aggressiveness)
        self.frame_samples = self.sample_rate * cfg.frame_ms // 1000
        self._window: deque[tuple[AudioFrame, bool]] = deque(maxlen=max(1, cfg.start_window_ms // cfg.frame_ms))
        self._pre_roll: deque[AudioFrame] = deque(maxlen=max(1, cfg.pre_roll_ms // cfg.frame_ms))
        self._recorded: list[np.ndarray] = []
        self._recording_start: float | None = None
        self.in_speech = False
        self._silence_ms = 0
        self._voiced_ms_in_run = 0
        self._last_voiced_end = 0.0

    @property
    def silence_ms(self) -> int:
        """Unvoiced milliseconds since the last voiced frame (0 while speaking)."""
        return self._silence_ms

    def process(self, frame: AudioFrame) -> list[VADEvent]:
        """Feed one 16 kHz mono frame of `frame_ms`; returns the events it caused."""
        if frame.sample_rate != self.sample_rate or frame.num_samples != self.frame_samples:
            raise ValueError(
                f"endpointer needs {self.config.frame_ms} ms frames at 16 kHz "
                f"({self.frame_samples} samples), got {frame.num_samples} at {frame.sample_rate} Hz"
            )
        voiced = self._vad.is_speech(frame.pcm.tobytes(), self.sample_rate)
        if self._recording_start is not None:
            self._recorded.append(frame.pcm)
        else:
            self._pre_roll.append(frame)
        self._window.append((frame, voiced))
        events: list[VADEvent] = []
        fm = self.config.frame_ms
        if voiced:
            self._silence_ms = 0
            self._last_voiced_end = frame.end_time
        else:
            self._silence_ms += fm
        if not self.in_speech:
            voiced_ms = sum(fm for _, v in self._window if v)
            if voiced and voiced_ms >= self.config.min_speech_ms:
                first_voiced = next(f for f, v in self._window if v)
                self.in_speech = True
                self._voiced_ms_in_run = voiced_ms
                self._start_recording()
                events.append(VADEvent(VADEventType.SPEECH_START, first_voiced.timestamp))
        else:
            if voiced:
                self._voiced_ms_in_run += fm
            elif self._silence_ms >= self.config.stop_silence_ms:
                self.in_speech = False
                self._window.clear()
                events.append(
                    VADEvent(VADEventType.SPEECH_STOP, self._last_voiced_end, self._voiced_ms_in_run / 1000)
                )
        return events

    def _start_recording(self) -> None:
        if self._recording_start is None:
            frames = list(self._pre_roll)
            self._pre_roll.clear()
            self._recording_start = frames[0].timestamp if frames else 0.0
            self._recorded = [f.pcm for f in frames]

    @property
    def recording(self) -> bool:
        return self._recording_start is not None

    def audio(self) -> np.ndarray:
        """Recorded audio so far (int16, from the pre-roll before the first speech onwards)."""
        return np.concatenate(self._recorded) if self._recorded else np.zeros(0, dtype=np.int16)

    def take_audio(self) -> np.ndarray:
        """Hand over the recorded audio and stop recording until the next speech start."""
        audio = self.audio()
        self._recorded = []
        self._recording_start = None
        return audio

    def discard_audio(self) -> None:
        self.take_audio()
