"""The process's engine load: ASR and TTS mark their compute busy; the local LLM takes the idle cores."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from agent_runtime.asr.base import Recognizer, Transcript
from agent_runtime.cores import ENGINE_LOAD, EngineLoad
from agent_runtime.llm.base import ChatMessage, GenerationOptions
from agent_runtime.llm.local import LocalLLMBackend
from agent_runtime.tts.base import UtteranceSynth
from agent_runtime.tts.stream import ChunkedSynthesizer


def test_busy_counts_nested_and_failed_work() -> None:
    load = EngineLoad()
    with load.busy():
        with load.busy():
            assert load.active == 2
        assert load.active == 1
    with pytest.raises(RuntimeError), load.busy():
        raise RuntimeError("engine failed")
    assert load.active == 0


class _RecordingRecognizer(Recognizer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def transcribe(self, audio: np.ndarray) -> Transcript:
        self.seen.append(ENGINE_LOAD.active)
        return Transcript("hello", len(audio) / self.sample_rate, 0.0)


async def test_transcription_is_busy_while_it_computes() -> None:
    asr = _RecordingRecognizer()
    assert (await asr.atranscribe(np.zeros(1600, dtype=np.float32))).text == "hello"
    assert asr.seen == [1] and ENGINE_LOAD.active == 0


class _RecordingUtterance(UtteranceSynth):
    def __init__(self, seen: list[int]) -> None:
        self.seen = seen

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        for _ in range(3):
            self.seen.append(ENGINE_LOAD.active)
            yield np.full(160, 0.1, dtype=np.float32)

    def cancel(self) -> None:
        pass


class _RecordingSynth(ChunkedSynthesizer):
    name = "recording"
    sample_rate = 16_000

    def __init__(self) -> None:
        self.seen: list[int] = []

    def open_utterance(self) -> UtteranceSynth:
        return _RecordingUtterance(self.seen)


async def test_speech_blocks_are_busy_while_they_compute_not_while_they_wait() -> None:
    synth = _RecordingSynth()
    stream = synth.open_stream()
    stream.push_text("Hello there, how are you today?")
    stream.flush()
    chunks = [c async for c in stream]
    assert sum(len(c.audio) for c in chunks) == 3 * 160
    assert synth.seen == [1, 1, 1] and ENGINE_LOAD.active == 0


class _ThreadRecordingLM:
    """Stands in for `LocalLM`: records the worker's torch threads at each step, with a TTS on
    another thread computing during step 2 only."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.start, self.entered, self.release, self.done = (threading.Event() for _ in range(4))

    def tts(self) -> None:
        self.start.wait(5)
        with ENGINE_LOAD.busy():
            self.entered.set()
            self.release.wait(5)
        self.done.set()

    def generate_text(self, messages: Sequence[ChatMessage], **_: object) -> Iterator[str]:
        import torch

        for i in range(4):
            self.threads.append(torch.get_num_threads())
            if i == 1:
                self.start.set()
                self.entered.wait(5)
            elif i == 2:
                self.release.set()
                self.done.wait(5)
            yield f"word{i} "


async def test_local_llm_uses_idle_cores_until_speech_computes() -> None:
    lm = _ThreadRecordingLM()
    backend = LocalLLMBackend(lm=lm, threads=1, idle_threads=2)  # type: ignore[arg-type]
    worker = threading.Thread(target=lm.tts)
    worker.start()
    try:
        deltas = [d async for d in backend.stream_chat([ChatMessage("user", "hi")], GenerationOptions(max_tokens=8))]
    finally:
        lm.start.set()
        lm.release.set()
        worker.join(5)
        await backend.aclose()
    assert deltas == ["word0 ", "word1 ", "word2 ", "word3 "]
    # steps 0-1: nothing else computes -> 2 threads; step 2: the TTS is busy -> 1; step 3: idle again.
    assert lm.threads == [2, 2, 1, 2]


def test_idle_threads_is_off_by_default_and_never_below_threads() -> None:
    backend = LocalLLMBackend(lm=object(), threads=1)  # type: ignore[arg-type]
    assert (backend.threads, backend.idle_threads) == (1, 1)
    backend = LocalLLMBackend(lm=object(), threads=2, idle_threads=1)  # type: ignore[arg-type]
    assert (backend.threads, backend.idle_threads) == (2, 2)
    assert LocalLLMBackend.from_options(threads=1, idle_threads=3).idle_threads == 3
