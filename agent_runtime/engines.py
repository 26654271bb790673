"""Building the shared engines (ASR, LLM, TTS) from a config, with progress logging."""

from __future__ import annotations

import asyncio
import logging
import time

from agent_runtime.config import AppConfig
from agent_runtime.cores import usable_cores
from agent_runtime.engine_set import Engines

log = logging.getLogger("agent_runtime.engines")


def build_engines(config: AppConfig, *, warm_loop: asyncio.AbstractEventLoop | None = None) -> Engines:
    """Load the configured engines (blocking: seconds for real models). Call off the event loop.

    With `warm_loop` (the loop the engines will serve calls on, running in another thread) they are
    also warmed up before this returns: ASR and TTS here, the LLM's async `warmup()` on that loop (a
    backend may open connections there). A server that loads this way is ready only once warm, and
    its memory after load is what a call will find."""
    from agent_runtime.asr.whisper import WhisperRecognizer
    from agent_runtime.llm.registry import create_backend
    from agent_runtime.plugins import check_plugins
    from agent_runtime.tts.registry import create_synthesizer

    check_plugins(config)  # an unknown plugin name fails now, not after the ASR model has loaded
    t = time.perf_counter()
    a = config.asr
    recognizer = WhisperRecognizer(
        model=a.model, compute_type=a.compute_type, cpu_threads=a.cpu_threads, num_workers=a.workers,
        language=a.language, beam_size=a.beam_size,
    )
    log.info("ASR ready: whisper %s, %d worker(s) (%.1f s)", a.model, a.workers, time.perf_counter() - t)
    cores = usable_cores()
    if a.workers * max(a.cpu_threads, 1) > cores:
        log.warning(
            "asr.workers x asr.cpu_threads = %d threads on %d CPU cores: decodes will slow each other down",
            a.workers * max(a.cpu_threads, 1), cores,
        )
    t = time.perf_counter()
    llm = create_backend(config.llm.backend, dict(config.llm.options))
    log.info("LLM backend ready: %s (%.1f s)", config.llm.backend, time.perf_counter() - t)
    t = time.perf_counter()
    log.info("%s", tts_choice_message(config))
    synthesizer = create_synthesizer(config.tts.engine, dict(config.tts.options))
    log.info("TTS ready: %s at %d Hz (%.1f s)", config.tts.engine, synthesizer.sample_rate, time.perf_counter() - t)
    engines = Engines(recognizer=recognizer, llm=llm, synthesizer=synthesizer)
    if warm_loop is not None:
        warm_up_blocking(engines, warm_loop)
    return engines


def build_instant_engines(config: AppConfig, *, reply: str, llm_from_config: bool = False) -> Engines:
    """Stand-in engines that answer at once (agent_runtime/bench/instant.py), replying `reply`.

    With `llm_from_config` the LLM is the one `config.llm` names (loaded, not warmed), so a real LLM
    client path runs while ASR and TTS answer instantly (the chaos campaign's fault-injecting LLM)."""
    from agent_runtime.bench.instant import InstantLLM, InstantRecognizer, InstantSynthesizer

    if llm_from_config:
        from agent_runtime.llm.registry import create_backend

        llm = create_backend(config.llm.backend, dict(config.llm.options))
    else:
        llm = InstantLLM(reply)
    return Engines(recognizer=InstantRecognizer(), llm=llm, synthesizer=InstantSynthesizer())


def tts_choice_message(config: AppConfig) -> str:
    """One line saying which TTS speaks, and how to get S2-Pro when it is not configured."""
    tts = config.tts
    if tts.engine == "s2pro":
        opts = tts.options
        voice = opts.get("voice") or "(the model's own voice)"
        return (
            f"TTS: S2-Pro ({opts.get('backend', 'local')} backend), checkpoint {opts.get('checkpoint')}, "
            f"codec {opts.get('codec')}, voice {voice}"
        )
    if tts.engine == "piper":
        return (
            "TTS: piper, the embedded default - no S2-Pro checkpoint is configured (S2-Pro needs its 9 GB "
            "weights and a GPU: set tts.engine: s2pro with tts.options checkpoint and codec, or pass "
            "--checkpoint DIR --codec CODEC.pth)"
        )
    return f"TTS: {tts.engine} (plugin)"


async def warm_up(engines: Engines) -> None:
    """Run every engine once so the first turn is not slowed by lazy initialisation."""
    t = time.perf_counter()
    await asyncio.to_thread(engines.recognizer.warmup)
    await engines.llm.warmup()
    await asyncio.to_thread(engines.synthesizer.warmup)
    log.info("engines warmed up (%.1f s)", time.perf_counter() - t)


def warm_up_blocking(engines: Engines, loop: asyncio.AbstractEventLoop) -> None:
    """`warm_up` from a worker thread: ASR and TTS in this thread, the LLM's warm-up on `loop`."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise RuntimeError("warm_up_blocking must run in a worker thread, not on the loop it warms for")
    t = time.perf_counter()
    engines.recognizer.warmup()
    asyncio.run_coroutine_threadsafe(engines.llm.warmup(), loop).result()
    engines.synthesizer.warmup()
    log.info("engines warmed up (%.1f s)", time.perf_counter() - t)
