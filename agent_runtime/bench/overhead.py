"""Runtime overhead: end-of-turn decision -> first agent audio frame, with instant engines.

N sessions run concurrently in this process, each with a simulated caller speaking real (piper)
speech in real time over the loopback transport. The engines answer instantly, so what is measured
is the runtime: VAD, resampling, the turn state machine, queues, chunking, playout pacing and the
event loop under load.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from agent_runtime.bench.instant import InstantLLM, InstantRecognizer, InstantSynthesizer
from agent_runtime.config import CallerTurn, load_config
from agent_runtime.demo.run import CallerLine, run_call
from agent_runtime.metrics.turns import percentiles
from agent_runtime.turn.session import Engines


async def _one_level(sessions: int, turns: int, speech: np.ndarray) -> dict[str, dict[str, float]]:
    config = load_config(None, {"demo": {"wait_after_reply_ms": 400, "max_reply_wait_s": 10}})
    engines = Engines(InstantRecognizer(), InstantLLM(), InstantSynthesizer())
    lines = [CallerLine(CallerTurn(text="speech"), [speech]) for _ in range(turns)]
    results = await asyncio.gather(*(run_call(config, engines, lines) for _ in range(sessions)))
    decision, v2v = [], []
    for r in results:
        for t in r.metrics.turns:
            if t.decision_to_audio is not None:
                decision.append(t.decision_to_audio * 1000)
            if t.voice_to_voice is not None:
                v2v.append(t.voice_to_voice * 1000)
    return {"decision_to_audio_ms": percentiles(decision), "voice_to_voice_ms": percentiles(v2v)}


async def run_overhead(levels: list[int], turns: int, speech: np.ndarray) -> dict[int, dict[str, dict[str, float]]]:
    out = {}
    for n in levels:
        t = time.perf_counter()
        out[n] = await _one_level(n, turns, speech)
        out[n]["wall_s"] = {"value": round(time.perf_counter() - t, 1)}
    return out
