"""agent-runtime's faster-whisper recognizer as a LiveKit (non-streaming) STT.

Whisper transcribes a whole turn at once, so this STT declares `streaming=False`: `AgentSession`
(given a VAD) wraps it in LiveKit's `stt.StreamAdapter`, which cuts the caller's audio at the VAD's
end of speech and calls `recognize()` once per turn. Audio arrives at whatever rate the room or
input gives; it is mixed to mono and resampled to Whisper's 16 kHz here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import APIConnectionError, stt, utils
from livekit.agents.types import NOT_GIVEN, APIConnectOptions, NotGivenOr
from livekit.agents.utils import AudioBuffer

from agent_runtime.asr.base import Recognizer

from ._warm import WarmOnce

__all__ = ["STT"]


class STT(stt.STT):
    def __init__(
        self,
        *,
        model: str = "tiny.en",
        recognizer: Recognizer | None = None,
        language: str = "en",
        device: str = "cpu",
        cpu_threads: int = 0,
        **whisper_options: Any,
    ) -> None:
        """`model`: a packaged Whisper name (`tiny.en`, embedded) or a CTranslate2 directory;
        `whisper_options`: any `agent_runtime.asr.whisper.WhisperOptions` field. Or pass a loaded
        `recognizer` (any agent-runtime `Recognizer`) to share it between sessions."""
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        if recognizer is None:
            from agent_runtime.asr.whisper import WhisperRecognizer

            recognizer = WhisperRecognizer(
                model, device=device, cpu_threads=cpu_threads, language=language, **whisper_options
            )
        self._recognizer = recognizer
        self._model_name = str(model)
        self._language = language
        self._warm = WarmOnce(recognizer.warmup, "whisper STT")

    @property
    def recognizer(self) -> Recognizer:
        return self._recognizer

    @property
    def model(self) -> str:
        return self._model_name

    @property
    def provider(self) -> str:
        return "agent-runtime"

    def prewarm(self) -> None:
        """Run the model once so the first turn is not slowed by lazy initialisation: once per
        `STT`, in a worker thread when called on a running loop (LiveKit calls it at every activity
        start), inline otherwise."""
        self._warm()

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        if (warming := self._warm.future) is not None and not warming.done():
            await asyncio.shield(warming)  # the recognizer runs one call at a time
        frame = rtc.combine_audio_frames(buffer) if isinstance(buffer, list) else buffer
        audio = frame_to_mono_float(frame, self._recognizer.sample_rate)
        try:
            transcript = await self._recognizer.atranscribe(audio)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise APIConnectionError(f"agent-runtime whisper failed: {exc}", retryable=False) from exc
        lang = transcript.language or (language if isinstance(language, str) else self._language)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=utils.shortuuid(),
            alternatives=[
                stt.SpeechData(
                    language=lang,
                    text=transcript.text,
                    end_time=transcript.audio_seconds,
                    confidence=max(0.0, 1.0 - float(transcript.no_speech_prob)),
                )
            ],
            recognition_usage=stt.RecognitionUsage(audio_duration=transcript.audio_seconds),
        )


def frame_to_mono_float(frame: rtc.AudioFrame, rate: int) -> np.ndarray:
    """An int16 LiveKit frame (any rate, any channels) as float32 mono at `rate`."""
    from agent_runtime.audio.resample import resample

    pcm = np.frombuffer(frame.data, dtype=np.int16).reshape(-1, frame.num_channels)
    mono = pcm.astype(np.float32).mean(axis=1) / 32768.0
    return resample(mono, frame.sample_rate, rate).astype(np.float32, copy=False)
