"""Warming the engines from the server's loader thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent_runtime.bench.instant import InstantLLM, InstantRecognizer, InstantSynthesizer
from agent_runtime.engines import warm_up_blocking
from agent_runtime.turn.session import Engines


class _Recognizer(InstantRecognizer):
    def __init__(self) -> None:
        super().__init__()
        self.warm_threads: list[int] = []

    def warmup(self) -> None:
        self.warm_threads.append(threading.get_ident())
        super().warmup()


class _LLM(InstantLLM):
    def __init__(self) -> None:
        super().__init__()
        self.warm_loops: list[asyncio.AbstractEventLoop] = []

    async def warmup(self) -> None:
        self.warm_loops.append(asyncio.get_running_loop())


class _Synth(InstantSynthesizer):
    def __init__(self) -> None:
        super().__init__()
        self.warmed = 0

    def warmup(self) -> None:
        self.warmed += 1


async def test_warm_up_from_a_worker_thread_runs_the_llm_on_the_serving_loop() -> None:
    engines = Engines(_Recognizer(), _LLM(), _Synth())
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(warm_up_blocking, engines, loop)
    assert engines.llm.warm_loops == [loop]  # where the calls will use it
    assert len(engines.recognizer.warm_threads) == 1 and engines.recognizer.warm_threads[0] != threading.get_ident()
    assert engines.synthesizer.warmed == 1


async def test_warm_up_on_the_loop_itself_is_refused_not_a_deadlock() -> None:
    engines = Engines(_Recognizer(), _LLM(), _Synth())
    with pytest.raises(RuntimeError, match="worker thread"):
        warm_up_blocking(engines, asyncio.get_running_loop())
