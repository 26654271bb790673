"""Voice activity detection with endpointing (webrtcvad).

The endpointer consumes 16 kHz mono frames of 10, 20 or 30 ms and emits two kinds of events:

* `SPEECH_START` once `min_speech_ms` of voiced audio has accumulated in a short window (so clicks
  and coughs shorter than that never start speech). Its timestamp is the start of the first voiced
  frame of the run.
* `SPEECH_STOP` once `stop_silence_ms` of silence follows speech. Its timestamp is the end of the
  caller's speech.

Where speech ends (`end_of_speech`):

* `"energy"` (default): webrtcvad calls the quiet tail of speech voiced for 100-200 ms after the last
  audible sound. A frame therefore counts as speech only when webrtcvad calls it voiced *and* its
  energy is above a gate: `tail_drop_db` below the loudest frame of the current run of speech, and at
  least `tail_noise_margin_db` above the noise floor (a low percentile of recent unvoiced frames). The
  stop's silence counts from the end of the last such frame, refined to 5 ms, so both the stop event
  and the turn manager's end-of-turn timer start within a few tens of ms of the last audible sound.
  Right after a stop, speech resumes on the first gated speech frame (`resume_window_ms`), not after
  `min_speech_ms`: a mid-sentence pause must not look longer than it was.
* `"webrtcvad"`: the end of the last frame webrtcvad calls voiced (the behaviour before the gate).

Only the timing changes: every frame is still recorded, so ASR gets the whole utterance.

Deciding whether a stop ends the *turn* is the turn manager's job (it also looks at the words).
Audio is kept from `pre_roll_ms` before the first voiced frame onwards (so the first syllable is never
lost) until `take_audio()` hands it over.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

import numpy as np
import webrtcvad

from agent_runtime.audio.frame import AudioFrame
from agent_runtime.audio.level import dbfs


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
    end_of_speech: Literal["energy", "webrtcvad"] = "energy"
    """How the end of speech is dated (see the module docstring)."""
    tail_drop_db: float = 40.0
    """Energy gate: frames this far below the run's loudest frame are not speech."""
    tail_noise_margin_db: float = 3.0
    """Energy gate: frames less than this above the noise floor are not speech."""
    tail_min_snr_db: float = 25.0
    """Energy gate off (webrtcvad alone) while the run's loudest frame is less than this above the
    noise floor: in that much noise the quiet parts of speech sink below the gate."""
    resume_window_ms: int = 500
    """After a stop, one gated speech frame within this long of the end of speech resumes speech."""

    @classmethod
    def from_config(cls, vad: Any, start_window_ms: int = 200) -> EndpointerConfig:
        """From the `vad:` section of the app config (`agent_runtime.config.VADConfig`)."""
        return cls(
            vad.aggressiveness,
            vad.frame_ms,
            vad.min_speech_ms,
            start_window_ms,
            vad.stop_silence_ms,
            vad.pre_roll_ms,
            vad.end_of_speech,
            vad.tail_drop_db,
            vad.tail_noise_margin_db,
            vad.tail_min_snr_db,
            vad.resume_window_ms,
        )


_NOISE_FRAMES = 100  # unvoiced frames whose energy sets the noise floor (2 s of 20 ms frames)
_NOISE_PERCENTILE = 20
_NO_FLOOR_DB = -90.0
_SUB_MS = 5  # resolution of the end of speech inside a frame


class Endpointer:
    """Frame-by-frame speech start/stop detection. Not thread-safe; one per session."""

    sample_rate = 16_000

    def __init__(self, config: EndpointerConfig | None = None) -> None:
        self.config = cfg = config or EndpointerConfig()
        if cfg.frame_ms not in (10, 20, 30):
            raise ValueError("webrtcvad frames must be 10, 20 or 30 ms")
        if not 0 <= cfg.aggressiveness <= 3:
            raise ValueError("aggressiveness must be 0..3")
        if cfg.end_of_speech not in ("energy", "webrtcvad"):
            raise ValueError("end_of_speech must be 'energy' or 'webrtcvad'")
        self._vad = webrtcvad.Vad(cfg.aggressiveness)
        self.frame_samples = self.sample_rate * cfg.frame_ms // 1000
        self._window: deque[tuple[AudioFrame, bool]] = deque(
            maxlen=max(1, cfg.start_window_ms // cfg.frame_ms)
        )
        self._pre_roll: deque[AudioFrame] = deque(maxlen=max(1, cfg.pre_roll_ms // cfg.frame_ms))
        self._recorded: list[np.ndarray] = []
        self._recording_start: float | None = None
        self.in_speech = False
        self._silence_ms = 0
        self._voiced_ms_in_run = 0
        self._gate = cfg.end_of_speech == "energy"
        self._noise: deque[float] = deque(maxlen=_NOISE_FRAMES)
        self._floor_db = _NO_FLOOR_DB
        self._level_db = -120.0  # loudest frame of the current run of speech
        self._last_speech: AudioFrame | None = None  # the last frame that counted as speech
        self._stopped_at: float | None = None  # end of speech of the last stop (for a quick resume)

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
        if self._gate:
            db = dbfs(frame.pcm)
            if not voiced:
                self._noise.append(db)
                if len(self._noise) >= 5:
                    self._floor_db = float(np.percentile(self._noise, _NOISE_PERCENTILE))
            if voiced and (self.in_speech or self._resuming(frame)):
                self._level_db = max(self._level_db, db)
            voiced = voiced and db >= self._threshold()
        self._window.append((frame, voiced))
        events: list[VADEvent] = []
        fm = self.config.frame_ms
        if voiced:
            self._silence_ms = 0
            self._last_speech = frame
        else:
            self._silence_ms += fm
        if not self.in_speech:
            voiced_ms = sum(fm for _, v in self._window if v)
            resume = voiced and self._resuming(frame)
            if voiced and (voiced_ms >= self.config.min_speech_ms or resume):
                first_voiced = frame if resume else next(f for f, v in self._window if v)
                self.in_speech = True
                self._voiced_ms_in_run = voiced_ms
                self._stopped_at = None
                self._start_recording()
                events.append(VADEvent(VADEventType.SPEECH_START, first_voiced.timestamp))
            elif self._stopped_at is None and not self._window_has_voice():
                self._level_db = -120.0  # a new run of speech sets its own level
        else:
            if voiced:
                self._voiced_ms_in_run += fm
            elif self._silence_ms >= self.config.stop_silence_ms:
                self.in_speech = False
                self._window.clear()
                end = self._speech_end()
                self._stopped_at = end
                events.append(VADEvent(VADEventType.SPEECH_STOP, end, self._voiced_ms_in_run / 1000))
        return events

    def _threshold(self) -> float:
        """Energy a frame needs to count as speech (the gate; -inf before any speech level)."""
        if self._level_db <= -120.0 or self._level_db - self._floor_db < self.config.tail_min_snr_db:
            return -np.inf  # no level yet, or speech too close to the noise for energy to tell
        return max(
            self._level_db - self.config.tail_drop_db, self._floor_db + self.config.tail_noise_margin_db
        )

    def _resuming(self, frame: AudioFrame) -> bool:
        """Whether `frame` falls within `resume_window_ms` of the last stop's end of speech."""
        if not self._gate or self._stopped_at is None:
            return False
        if frame.timestamp - self._stopped_at > self.config.resume_window_ms / 1000:
            self._stopped_at = None
            return False
        return True

    def _window_has_voice(self) -> bool:
        return any(v for _, v in self._window)

    def _speech_end(self) -> float:
        """End of speech: the last speech frame's end, refined to its last 5 ms above the gate."""
        last = self._last_speech
        if last is None:
            return 0.0
        if not self._gate:
            return last.end_time
        sub = self.sample_rate * _SUB_MS // 1000
        threshold = self._threshold()
        pcm = last.pcm
        for k in range(len(pcm) // sub, 0, -1):
            if dbfs(pcm[(k - 1) * sub : k * sub]) >= threshold:
                return last.timestamp + k * sub / self.sample_rate
        return last.end_time

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
