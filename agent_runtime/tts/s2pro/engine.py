"""Streaming S2-Pro Dual-AR engine (model math lives in model.py, sampling in sampling.py).

    engine = S2ProEngine.load("checkpoints/s2-pro", device="cpu", dtype=torch.bfloat16)
    voice = VoiceReference.create("reference transcript", codes, voice_id="alice")
    stream = engine.open_stream(voice=voice, params=SamplingParams(0.8, 0.8, 30), seed=1)
    for frame in stream.add_text("Hello there."):      # np.ndarray int64 (num_codebooks,)
        ...
    async for frame in stream.add_text_async("And a second sentence."):
        ...

* Prefill once per prompt, then one frame per step; KV caches sized to need (kv_cache.py).
* Prefix cache: the system turn (voice reference text + codes) is prefilled once per voice
  (keyed by content hash) and its KV copied into every stream that uses the voice.
* Continuation: `add_text` on the same stream appends the previous segment's codes as an
  assistant turn and the new user turn, exactly as the reference's generate_long does between
  batches, prefilling only those new positions. A long reply's context is bounded: when the next
  segment would take it past `max_context` positions (at most max_seq_len - 2048, the reference's
  limit, where generate_long gives up), the context restarts from the voice prefix plus the last
  segment (its text and codes, so the voice carries on), whose KV is prefilled again.
* Outputs are bit-identical to the reference on CPU (see `naive_generate`, the faithful baseline):
  every shortcut taken here is one that provably or measurably keeps the bits.
* Slow-AR attention: SDPA, or on CUDA flash-attn's KV-cache kernel when it is installed
  (`attention="auto" | "sdpa" | "flash"`, see flash_decode.py; numerically equivalent, not exact).
* Cancellation: `stream.cancel()` (any thread) stops generation before the next frame.
* Async: steps run on the engine's single model worker thread (`_StepScheduler`), in rounds.
* Batched decode (`batch_decode="auto" | "on" | "off"`, auto = on for CUDA only): the decode steps
  of concurrent streams in one round run as one forward of up to `max_batch` rows (batched.py).
  A B-row GEMM need not give a row the bits of the one-row GEMV: fp32 on CPU differs in the last
  bits (the codes matched in every run measured), bf16 on CPU is exact only where the CPU's bf16
  kernels are row-count invariant, CUDA is never bit-exact; hence off on CPU by default
  (docs/perf_dual_ar.md, "When batching is exact").
* Threads: the model thread sets torch's intra-op thread count (`threads`, default the loading
  thread's count) when it starts: OpenMP counts are per calling thread.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from agent_runtime.errors import AgentRuntimeError, ConfigError, ModelLoadError
from agent_runtime.tts.s2pro.batched import BatchedFastAR, BatchStats, decode_slow_batch, first_code
from agent_runtime.tts.s2pro.flash_decode import DEFAULT_KERNEL, FlashKernel, select_flash
from agent_runtime.tts.s2pro.kv_cache import SlowKVCache, decode_kv_len, prefill_kv_len
from agent_runtime.tts.s2pro.model import DualARTransformer, FastARStepper, LayerKV
from agent_runtime.tts.s2pro.prompt import (
    PromptBuilder,
    PromptError,
    S2ProTokenizer,
    TokenizerLike,
    VoiceReference,
    split_batches,
)
from agent_runtime.tts.s2pro.sampling import (
    RAS_WINDOW,
    SamplerStats,
    SamplerTensors,
    SamplingParams,
    aligned_window,
    reference_sample,
    sample_window,
)
from agent_runtime.tts.s2pro.stream_context import (
    CONTEXT_RESERVE,
    MIN_PREFILL_ROWS,
    PrefixCache,
    SegmentPlan,
    StreamContext,
    prefill_rows,
)

if TYPE_CHECKING:
    from agent_runtime.tts.s2pro.streaming import CodecStreamDecoder

__all__ = ["CONTEXT_RESERVE", "MIN_PREFILL_ROWS", "S2ProEngine", "S2ProStream", "StreamCancelled", "naive_generate"]

BATCH_MODES = ("auto", "on", "off")
# With batching, a round waits this long for the next steps of streams still generating (an async
# consumer resubmits a moment after receiving its frame) so that they join the batch.
GATHER_S = 0.002


class StreamCancelled(AgentRuntimeError):
    """The stream was cancelled."""


def _frame_budget(prompt_len: int, max_seq_len: int, max_new_tokens: int) -> int:
    """Frames the reference may generate (prefill frame included) for a prompt of prompt_len."""
    if max_new_tokens:
        return min(max_new_tokens, max_seq_len - prompt_len)
    return max_seq_len - prompt_len


# ---- the faithful naive baseline -------------------------------------------------------------


@torch.inference_mode()
def naive_generate(
    model: DualARTransformer,
    prompt: Tensor,
    im_end_id: int,
    params: SamplingParams,
    max_new_tokens: int = 0,
    generator: torch.Generator | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> Tensor:
    """The reference `generate()`: full-length static cache, masked attention over every slot,
    full-vocabulary logits and sorts. Returns (N+1, T + frames) incl. the last (dropped) frame."""
    cfg = model.cfg
    n_cb = cfg.num_codebooks
    prompt_len = prompt.shape[1]
    if prompt_len >= cfg.max_seq_len:
        raise PromptError(f"prompt of {prompt_len} positions exceeds max_seq_len {cfg.max_seq_len}")
    budget = _frame_budget(prompt_len, cfg.max_seq_len, max_new_tokens)
    caches = [LayerKV.zeros(cfg.slow, cfg.cache_len, model.dtype, model.device) for _ in model.layers]
    fast_caches = model.new_fast_caches()
    st = SamplerTensors.create(params, model.dtype, model.device)
    bias = torch.full((cfg.vocab_size,), float("-inf"), dtype=model.dtype, device=model.device)
    bias[cfg.semantic_begin_id : cfg.semantic_end_id + 1] = 0.0
    bias[im_end_id] = 0.0

    def slow_token(normed: Tensor, previous: collections.deque[int] | None) -> int:
        logits = (model.slow_logits(normed) + bias)[0, -1]
        tok = reference_sample(logits, st.temperature, st.top_p, st.top_k, generator)
        tok_hi = reference_sample(logits, st.high_temperature, st.high_top_p, st.top_k, generator)
        if previous is not None and cfg.semantic_begin_id <= tok <= cfg.semantic_end_id and tok in previous:
            tok = tok_hi
        return tok

    def fast_sample(logits: Tensor) -> int:
        return reference_sample(logits, st.temperature, st.top_p, st.top_k, generator)

    frames: list[Tensor] = []
    normed, fast_in = model.forward_slow(prompt[None].to(model.device), caches, 0, cfg.cache_len)
    tok = slow_token(normed, None)
    frame = _frame_column(tok, _fast_codes(model, fast_in, tok, fast_caches, fast_sample))
    frames.append(frame)
    if on_frame is not None:
        on_frame(0)
    previous: collections.deque[int] = collections.deque([0] * RAS_WINDOW, maxlen=RAS_WINDOW)
    for i in range(budget - 1):
        pos = prompt_len + i
        normed, fast_in = model.forward_slow(
            frame.view(1, n_cb + 1, 1).to(model.device), caches, pos, cfg.cache_len, math_sdpa=True
        )
        tok = slow_token(normed, previous)
        frame = _frame_column(tok, _fast_codes(model, fast_in, tok, fast_caches, fast_sample))
        frames.append(frame)
        if on_frame is not None:
            on_frame(i + 1)
        previous.append(tok)
        if tok == im_end_id:
            break
    return torch.cat([prompt, torch.stack(frames, dim=1)], dim=1)


def _frame_column(token: int, codes: list[int]) -> Tensor:
    return torch.tensor([token, *codes], dtype=torch.long)


def _fast_codes(
    model: DualARTransformer,
    fast_in: Tensor,
    token: int,
    caches: list[LayerKV],
    sample: Callable[[Tensor], int],
    stepper: FastARStepper | None = None,
) -> list[int]:
    """Run the fast AR for one frame: position 0 = slow hidden, then codes 1..N-1 sampled.

    Without `stepper` this is the reference's module path (`forward_fast`)."""
    cfg = model.cfg
    if stepper is None:
        model.forward_fast(fast_in.view(1, 1, -1), 0, caches)
    else:
        stepper.step(fast_in.view(1, 1, -1), 0, caches, want_logits=False)
    code = first_code(cfg, token)
    codes = [code]
    emb = model.fast_embeddings.weight
    for k in range(1, cfg.num_codebooks):
        x = F.embedding(torch.tensor([code], device=fast_in.device), emb).view(1, 1, -1)
        logits = model.forward_fast(x, k, caches) if stepper is None else stepper.step(x, k, caches)
        assert logits is not None
        code = sample(logits[0, -1])
        codes.append(code)
    return codes


# ---- engine ------------------------------------------------------------------------------------


StepBatch = Callable[[list["_Segment"]], list[np.ndarray | None]]


class _StepScheduler:
    """The engine's single model thread.

    Jobs are either plain callables (prefills, voice preparation) or frame steps of segments.
    The worker drains the queue in rounds: the calls first, then all pending frame steps together
    (`_run_steps`). Prefills run one by one; with `step_batch` (batching on) the decode steps run
    as batched forwards of up to `max_batch` segments, else one after another (which keeps every
    stream bit-exact on CPU). With batching, a round first waits up to GATHER_S for the segments
    of the previous round that are still generating, so that they are in the batch.
    """

    def __init__(self, step_batch: StepBatch | None = None, max_batch: int = 1, threads: int = 0) -> None:
        """`threads` (> 0): torch intra-op threads of the model thread, set when it starts (OpenMP
        thread counts are per calling thread: the loading thread's setting does not carry over)."""
        self.threads = threads
        self._queue: collections.deque[tuple[str, Any, Future[Any]]] = collections.deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._step_batch = step_batch
        self.max_batch = max_batch if step_batch is not None else 1
        self._expected: list[_Segment] = []  # segments of the last round that go on (batching only)

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn()` on the model thread."""
        return self._put("call", fn)

    def submit_step(self, segment: _Segment) -> Future[np.ndarray | None]:
        """Generate the next frame of `segment` on the model thread."""
        return self._put("step", segment)

    def submit_codec(self, decoder: CodecStreamDecoder, codes: np.ndarray) -> Future[list[np.ndarray]]:
        """`decoder.push(codes)` on the model thread (each stream decodes alone here; the pooled
        engine's scheduler batches them)."""
        return self._put("call", lambda: decoder.push(codes))

    def _put(self, kind: str, item: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("engine is closed")
            self._queue.append((kind, item, fut))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="s2pro-engine", daemon=True)
                self._thread.start()
            self._cv.notify()
        return fut

    def _run(self) -> None:
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        while (jobs := self._drain()) is not None:
            live = [(kind, item, fut) for kind, item, fut in jobs if fut.set_running_or_notify_cancel()]
            for kind, item, fut in live:
                if kind == "call":
                    _resolve(fut, item)
            steps = [(item, fut) for kind, item, fut in live if kind == "step"]
            if steps:
                self._run_steps(steps)

    def _drain(self) -> list[tuple[str, Any, Future[Any]]] | None:
        """The next round's jobs (None once closed and empty)."""
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if not self._queue:
                return None
            self._gather()
            jobs = list(self._queue)
            self._queue.clear()
        return jobs

    def _gather(self) -> None:
        """Wait up to GATHER_S for the next steps of the last round's ongoing segments (lock held)."""
        deadline = time.monotonic() + GATHER_S
        while self._expected and not self._closed:
            queued = {id(item) for kind, item, _ in self._queue if kind == "step"}
            left = deadline - time.monotonic()
            if left <= 0 or all(seg.done or id(seg) in queued for seg in self._expected):
                return
            self._cv.wait(left)

    def _run_steps(self, steps: list[tuple[_Segment, Future[Any]]]) -> None:
        single: list[tuple[_Segment, Future[Any]]] = []
        batchable: list[tuple[_Segment, Future[Any]]] = []
        repeated: list[tuple[_Segment, Future[Any]]] = []  # a second step of a segment in the round
        seen: set[int] = set()
        for segment, fut in steps:
            if id(segment) in seen:
                repeated.append((segment, fut))
            elif self.max_batch > 1 and segment.index > 0 and not segment.done:
                batchable.append((segment, fut))
            else:
                single.append((segment, fut))
            seen.add(id(segment))
        for segment, fut in single:  # prefills (and finished segments) first, one by one
            _resolve(fut, segment.step)
        for group in _even_groups(batchable, self.max_batch):
            self._run_batch(group)
        for segment, fut in repeated:
            _resolve(fut, segment.step)
        if self.max_batch > 1:
            self._expected = [segment for segment, _ in steps if not segment.done]

    def _run_batch(self, group: list[tuple[_Segment, Future[Any]]]) -> None:
        """One decode frame for each segment of `group` (those still live) in one forward."""
        live = []
        for segment, fut in group:
            if segment._live():
                live.append((segment, fut))
            else:
                fut.set_result(None)
        if len(live) < 2 or self._step_batch is None:
            for segment, fut in live:
                _resolve(fut, segment.step)
            return
        try:
            frames = self._step_batch([segment for segment, _ in live])
        except BaseException as exc:
            for _, fut in live:
                fut.set_exception(exc)
            return
        for (_, fut), frame in zip(live, frames, strict=True):
            fut.set_result(frame)

    def close(self, wait: bool = False) -> None:
        """Refuse new jobs; the worker ends once the queue is empty (`wait`: join it, unless this
        is the worker itself)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()


def _even_groups(items: list[Any], size: int) -> list[list[Any]]:
    """`items` cut into the fewest groups of at most `size`, of (almost) equal sizes, in order."""
    if not items:
        return []
    per = math.ceil(len(items) / math.ceil(len(items) / size))
    return [items[i : i + per] for i in range(0, len(items), per)]


def _resolve(fut: Future[Any], fn: Callable[[], Any]) -> None:
    try:
        fut.set_result(fn())
    except BaseException as exc:
        fut.set_exception(exc)


class S2ProEngine:
    """Owns the model, tokenizer, prefix cache and worker thread; streams do the generating."""

    def __init__(
        self,
        model: DualARTransformer,
        tokenizer: TokenizerLike,
        *,
        prefix_cache_size: int = 16,
        compile_fast: bool = False,
        compile_slow: bool = False,
        attention: str = "auto",
        flash_kernel: FlashKernel = DEFAULT_KERNEL,
        batch_decode: str = "auto",
        max_batch: int = 16,
        threads: int = 0,
    ) -> None:
        """`threads`: torch intra-op threads of the model thread (0: `torch.get_num_threads()` of
        the constructing thread, i.e. what the loading code configured); `self.threads` is the count.

        `compile_fast` (CUDA only) runs the fast AR's per-frame positions as compiled CUDA graphs;
        `compile_slow` (CUDA, SDPA attention; experimental) compiles the slow AR's one-frame decode
        with dynamic shapes, which recompiles (seconds) the first time a new context-length class
        is seen. Both are numerically equivalent, not bit-identical, so CPU (the exact path) refuses
        them; batched steps run eagerly.

        `batch_decode`: "on" runs the decode steps of concurrent streams (one round of the model
        thread) as batched forwards of up to `max_batch` streams, "off" one after another, "auto"
        on for CUDA and off for CPU. Batched steps are exact only where the GEMMs are row-count
        invariant (fp32 on x86 CPUs; bf16 depends on the CPU's kernels; not on CUDA): see
        `load_local` and docs/perf_dual_ar.md.
        `self.batch_decode` is the resolved choice, `self.batch_stats` counts the batched forwards.

        `attention` (slow AR): "sdpa" (torch SDPA, the exact path on CPU), "flash" (`flash_kernel`,
        by default flash-attn's KV-cache kernel: CUDA, bf16/fp16; ConfigError saying why where it
        cannot run) or "auto" (flash where it can run, else sdpa). `self.attention` is the one used."""
        cfg = model.cfg
        if (tokenizer.semantic_begin_id, tokenizer.semantic_end_id) != (cfg.semantic_begin_id, cfg.semantic_end_id):
            raise ModelLoadError("model and tokenizer disagree on the semantic token ids")
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.builder = PromptBuilder(tokenizer, cfg.num_codebooks, cfg.codebook_size)
        self.im_end_id = tokenizer.im_end_id
        lo = min(cfg.semantic_begin_id, self.im_end_id)
        hi = max(cfg.semantic_end_id, self.im_end_id)
        self._win_off, win_end = aligned_window(lo, hi, cfg.vocab_size)
        self._head_w = model.output_weight()[self._win_off : win_end]
        bias = torch.full((win_end - self._win_off,), float("-inf"), dtype=model.dtype, device=model.device)
        bias[cfg.semantic_begin_id - self._win_off : cfg.semantic_end_id + 1 - self._win_off] = 0.0
        bias[self.im_end_id - self._win_off] = 0.0
        self._bias_w = bias
        self.prefix_cache = PrefixCache(self.builder, prefix_cache_size, self._fill_prefix)
        self._fast_stepper = FastARStepper(model)
        self.batch_decode = _batching(batch_decode, max_batch, model.device)
        self.batch_stats = BatchStats()
        self._batched_fast = BatchedFastAR(model, self._fast_stepper, max_batch) if self.batch_decode else None
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ConfigError(f"threads must be an integer >= 0 (0: torch's default); got {threads!r}")
        self.threads = threads or torch.get_num_threads()
        self.scheduler = _StepScheduler(self._step_batch if self.batch_decode else None, max_batch, self.threads)
        use_flash = select_flash(attention, flash_kernel, model.device, model.dtype, cfg.slow)
        self._flash = flash_kernel if use_flash else None
        self.attention = "flash" if use_flash else "sdpa"
        # With compile_fast the one-stream fast AR runs on this engine-owned cache (every frame
        # rewrites it before reading it, and a frame's fast AR runs in one go on the model thread),
        # so its tensors keep their addresses and the compiled steps can replay as CUDA graphs.
        self._shared_fast_caches: list[LayerKV] | None = None
        self._forward_decode: Callable[..., tuple[Tensor, Tensor]] = model.forward_slow
        if compile_fast:
            if model.device.type != "cuda":
                raise ConfigError("compile_fast needs a CUDA device (on CPU it would break bit-exactness)")
            self._shared_fast_caches = model.new_fast_caches()
            _compile_per_position(self._fast_stepper, self._shared_fast_caches)
        if compile_slow:
            if model.device.type != "cuda" or use_flash:
                raise ConfigError("compile_slow needs a CUDA device and SDPA attention (attention: sdpa)")
            self._forward_decode = torch.compile(model.forward_slow, dynamic=True)

    @classmethod
    def load(
        cls,
        checkpoint_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        **kwargs: Any,
    ) -> S2ProEngine:
        """Load tokenizer + weights (strict) from a checkpoint directory."""
        from agent_runtime.tts.s2pro.checkpoint import load_model, read_config_json

        if not Path(checkpoint_dir).is_dir():
            raise ModelLoadError(f"{checkpoint_dir}: checkpoint directory not found")
        read_config_json(Path(checkpoint_dir))  # model-type check before anything else
        tokenizer = S2ProTokenizer(Path(checkpoint_dir))
        model = load_model(checkpoint_dir, tokenizer.semantic_begin_id, tokenizer.semantic_end_id, device, dtype)
        return cls(model, tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def close(self, wait: bool = False) -> None:
        """Stop the model thread after the jobs already queued (`wait`: until it has ended)."""
        self.scheduler.close(wait)

    def open_stream(
        self,
        voice: VoiceReference | None = None,
        *,
        params: SamplingParams | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        max_frames: int = 0,
        use_prefix_cache: bool = True,
        max_context: int | None = None,
    ) -> S2ProStream:
        """A new conversation with `voice` (None = no reference).

        Randomness: `generator` if given, else a private generator seeded with `seed`, else torch's
        global generator (what the reference uses; seed it right before generating).
        `max_frames` is the reference's max_new_tokens per segment (0 = up to the context end).
        `max_context`: positions the context may reach before it restarts from the voice prefix
        (None or more than max_seq_len - 2048: that limit).
        """
        if generator is None and seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
        if max_context is not None and max_context < 1:
            raise ConfigError(f"max_context must be positive, got {max_context}")
        return S2ProStream(
            self, voice, params or SamplingParams(), generator, max_frames, use_prefix_cache, max_context
        )

    async def open_stream_async(self, voice: VoiceReference | None = None, **kwargs: Any) -> S2ProStream:
        """`open_stream` on the model thread (a cold voice prefix is prefilled there)."""
        return await asyncio.wrap_future(self.scheduler.submit(lambda: self.open_stream(voice, **kwargs)))

    def prepare_voice(self, voice: VoiceReference | None) -> None:
        """Prefill and cache the system turn of `voice` now, so the first request is fast."""
        self._prefix(voice, use_cache=True)

    # -- prefix cache --

    def _prefix(self, voice: VoiceReference | None, use_cache: bool) -> tuple[Tensor, list[tuple[Tensor, Tensor]] | None]:
        """(values, kv) of the system turn for `voice`; kv None when it must be prefilled inline."""
        return self.prefix_cache.get(voice, use_cache)

    def _fill_prefix(self, values: Tensor) -> list[tuple[Tensor, Tensor]]:
        cache = self._new_cache(values.shape[1])
        self._prefill(cache, values, 0, want_output=False)
        return cache.snapshot(values.shape[1])

    @property
    def prefix_hits(self) -> int:
        return self.prefix_cache.hits

    @property
    def prefix_misses(self) -> int:
        return self.prefix_cache.misses

    def clear_prefix_cache(self) -> None:
        self.prefix_cache.clear()

    def _new_cache(self, capacity: int) -> SlowKVCache:
        """An empty slow-AR cache (in the layout of the engine's attention path)."""
        return SlowKVCache(self.cfg.slow, self.cfg.cache_len, self.model.dtype, self.device, capacity, self._flash)

    # -- model steps (inference mode is set by the callers) --

    def _prefill(
        self, cache: SlowKVCache, values: Tensor, start: int, want_output: bool = True
    ) -> tuple[Tensor, Tensor] | None:
        """Prefill positions [start, start + S) of `values` (N+1, S); returns (normed, fast_in)."""
        end = start + values.shape[1]
        cache.ensure(end)
        kv_len = prefill_kv_len(end, self.cfg.cache_len)
        cache.ensure(kv_len)
        normed, fast_in = self.model.forward_slow(values[None].to(self.device), cache.layers, start, kv_len)
        return (normed, fast_in) if want_output else None

    def _decode_slots(self, cache: SlowKVCache, pos: int) -> int:
        """Make `cache` ready to decode `pos`; the number of slots to attend over."""
        kv_len = decode_kv_len(pos, self.cfg.cache_len)
        cache.ensure(kv_len)
        return kv_len

    @property
    def _math_sdpa(self) -> bool:
        # CPU: the reference's math backend (bit-exact). CUDA: the default (fused) kernels; GPU
        # results are numerically equivalent only, whatever the backend (spec 8.10).
        return self.device.type == "cpu"

    def _decode(self, cache: SlowKVCache, frame: Tensor, pos: int) -> tuple[Tensor, Tensor]:
        kv_len = self._decode_slots(cache, pos)
        n = self.cfg.num_codebooks + 1
        values = frame.view(1, n, 1).to(self.device)
        return self._forward_decode(values, cache.layers, pos, kv_len, math_sdpa=self._math_sdpa)

    def _step_batch(self, segments: list[_Segment]) -> list[np.ndarray | None]:
        """One decode frame for each of B >= 2 live segments past their prefill, in one forward;
        each segment's result as its `step()` would give it."""
        assert self._batched_fast is not None
        batch = len(segments)
        positions = [seg.decode_position for seg in segments]
        caches = [seg.stream.cache for seg in segments]
        with torch.inference_mode():
            kv_lens = [self._decode_slots(cache, pos) for cache, pos in zip(caches, positions, strict=True)]
            values = torch.stack([seg.last_frame for seg in segments]).view(batch, -1, 1).to(self.device)
            layers = [cache.layers for cache in caches]
            normed, fast_in = decode_slow_batch(self.model, values, layers, positions, kv_lens, self._math_sdpa)
            logits = F.linear(normed, self._head_w)
            tokens = []
            for b, seg in enumerate(segments):  # each stream's own generator, RAS window, sampler
                s = seg.stream
                tokens.append(self._pick_token(logits[b, -1] + self._bias_w, seg.previous, s.sampler, s.generator, s.stats))
            codes = self._batched_fast.codes(fast_in, tokens, [seg.stream._fast_sample for seg in segments])
        self.batch_stats.record(batch)
        return [seg._advance(tok, c) for seg, tok, c in zip(segments, tokens, codes, strict=True)]

    def _slow_token(
        self,
        normed: Tensor,
        previous: collections.deque[int] | None,
        st: SamplerTensors,
        generator: torch.Generator | None,
        stats: SamplerStats,
    ) -> int:
        logits = F.linear(normed, self._head_w)[0, -1] + self._bias_w
        return self._pick_token(logits, previous, st, generator, stats)

    def _pick_token(
        self,
        logits: Tensor,
        previous: collections.deque[int] | None,
        st: SamplerTensors,
        generator: torch.Generator | None,
        stats: SamplerStats,
    ) -> int:
        """The slow token from the window's biased logits: normal draw, RAS draw, RAS rule."""
        cfg = self.cfg
        args = (self._win_off, cfg.vocab_size)
        tok = sample_window(logits, *args, st.temperature, st.top_p, st.top_k, generator, stats)
        tok_hi = sample_window(logits, *args, st.high_temperature, st.high_top_p, st.top_k, generator, stats)
        if previous is not None and cfg.semantic_begin_id <= tok <= cfg.semantic_end_id and tok in previous:
            tok = tok_hi
        return tok


def _batching(mode: str, max_batch: int, device: torch.device) -> bool:
    """Whether `batch_decode: mode` batches on `device` (ConfigError for bad settings)."""
    if mode not in BATCH_MODES:
        raise ConfigError(f"batch_decode must be one of {', '.join(BATCH_MODES)}; got {mode!r}")
    if max_batch < 1:
        raise ConfigError(f"max_batch must be >= 1; got {max_batch}")
    return max_batch > 1 and (mode == "on" or (mode == "auto" and device.type == "cuda"))


def _compile_per_position(stepper: FastARStepper, caches: list[LayerKV]) -> None:
    """torch.compile the fast-AR step over `caches` once per codebook position (no recompiles on
    `pos`), in "reduce-overhead" mode: each position replays as one CUDA graph. The caches are marked
    as static addresses so that writing them inside the graph needs no copies. Calls with other
    caches (none in the engine) run eagerly."""
    eager = stepper.step
    for layer in caches:
        torch._dynamo.mark_static_address(layer.k)
        torch._dynamo.mark_static_address(layer.v)
    # The positions' functions share one code object, so dynamo counts them as recompiles of it:
    # allow one per position (the default limit, 8, would leave the last positions eager).
    dynamo_config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 2 * stepper.n_cb))

    def at(pos: int) -> Callable[..., Tensor | None]:
        def run(x: Tensor, want_logits: bool) -> Tensor | None:
            return eager(x, pos, caches, want_logits)

        return torch.compile(run, dynamic=False, mode="reduce-overhead")

    compiled = [at(p) for p in range(stepper.n_cb)]

    def step(x: Tensor, pos: int, step_caches: list[LayerKV], want_logits: bool = True) -> Tensor | None:
        if step_caches is not caches:
            return eager(x, pos, step_caches, want_logits)
        out = compiled[pos](x, want_logits)
        # the graph's output buffer is reused by its next replay: hand out a copy
        return None if out is None else out.clone()

    stepper.step = step  # type: ignore[method-assign]


class _Segment:
    """Generation of one text segment: prefill, then `step()` -> next kept frame or None."""

    def __init__(self, stream: S2ProStream, plan: SegmentPlan, max_frames: int) -> None:
        self.stream = stream
        self.plan = plan
        self.start = plan.start
        self.prompt_len = plan.prompt_len
        cfg = stream.engine.cfg
        self.budget = _frame_budget(self.prompt_len, cfg.max_seq_len, max_frames)
        self.index = 0  # frames generated so far
        self.frame: Tensor | None = None
        self.previous: collections.deque[int] = collections.deque([0] * RAS_WINDOW, maxlen=RAS_WINDOW)
        self.done = False
        self.kept: list[Tensor] = []

    @property
    def decode_position(self) -> int:
        """The position the next decode step writes (its input is the last frame)."""
        return self.prompt_len + self.index - 1

    @property
    def last_frame(self) -> Tensor:
        assert self.frame is not None, "no frame generated yet"
        return self.frame

    def _live(self) -> bool:
        """Whether a next frame is wanted (a cancelled stream ends the segment here)."""
        if self.done:
            return False
        if self.stream.cancelled.is_set():
            self.done = True
            return False
        return True

    def step(self) -> np.ndarray | None:
        """Generate the next frame; return its codes if kept, None when the segment is over."""
        s = self.stream
        eng = s.engine
        if not self._live():
            return None
        with torch.inference_mode():
            if self.index == 0:
                # Never prefill fewer than MIN_PREFILL_ROWS rows: re-run some context rows instead.
                values, start = prefill_rows(s.ctx.values, self.plan)
                normed, fast_in = eng._prefill(s.cache, values, start)  # type: ignore[misc]
                previous = None
            else:
                normed, fast_in = eng._decode(s.cache, self.last_frame, self.decode_position)
                previous = self.previous
            tok = eng._slow_token(normed, previous, s.sampler, s.generator, s.stats)
            fast_caches = eng._shared_fast_caches or s.fast_caches
            codes = _fast_codes(eng.model, fast_in, tok, fast_caches, s._fast_sample, eng._fast_stepper)
        return self._advance(tok, codes)

    def _advance(self, tok: int, codes: list[int]) -> np.ndarray | None:
        """Take the frame (tok, codes) just generated: its codes if kept, None when it ends the segment."""
        eng = self.stream.engine
        frame = _frame_column(tok, codes)
        if self.index > 0:
            self.previous.append(tok)
        self.index += 1
        self.frame = frame
        is_last = self.index >= self.budget or (self.index > 1 and tok == eng.im_end_id)
        if is_last:
            self.done = True
            return None
        self.kept.append(frame)
        return frame[1:].numpy()


class S2ProStream:
    """One conversation (one voice); `add_text` per text segment, continuing the context."""

    def __init__(
        self,
        engine: S2ProEngine,
        voice: VoiceReference | None,
        params: SamplingParams,
        generator: torch.Generator | None,
        max_frames: int,
        use_prefix_cache: bool,
        max_context: int | None = None,
    ) -> None:
        self.engine = engine
        self.voice = voice
        self.params = params
        self.generator = generator
        self.max_frames = max_frames
        self.cancelled = threading.Event()
        self.stats = SamplerStats()
        model = engine.model
        self.sampler = SamplerTensors.create(params, model.dtype, model.device)
        self.fast_caches = model.new_fast_caches()
        prefix_values, prefix_kv = engine._prefix(voice, use_prefix_cache)
        self.cache = engine._new_cache(prefix_values.shape[1])
        prefilled = 0  # positions whose KV came from a prefill (bit-exact context)
        if prefix_kv is not None:
            self.cache.restore(prefix_kv)
            prefilled = prefix_values.shape[1]
        hard_limit = engine.cfg.max_seq_len - CONTEXT_RESERVE
        self.max_context = hard_limit if max_context is None else min(max_context, hard_limit)
        self.ctx = StreamContext(engine.builder, prefix_values, prefilled, self.max_context)
        self._segment: _Segment | None = None
        self._lock = threading.Lock()

    @property
    def restarts(self) -> int:
        """Times the context restarted from the voice prefix."""
        return self.ctx.restarts

    @property
    def _values(self) -> Tensor:
        """(N+1, T) everything in the context so far (`ctx.values`)."""
        return self.ctx.values

    @property
    def _prefilled(self) -> int:
        return self.ctx.prefilled

    def _fast_sample(self, logits: Tensor) -> int:
        n = logits.numel()
        st = self.sampler
        return sample_window(logits, 0, n, st.temperature, st.top_p, st.top_k, self.generator, self.stats)

    @property
    def context_length(self) -> int:
        return self.ctx.values.shape[1]

    def cancel(self) -> None:
        """Stop the running segment before its next frame (thread-safe)."""
        self.cancelled.set()

    def _begin(self, text: str, max_frames: int | None, raw: bool = False) -> _Segment:
        with self._lock:
            if self._segment is not None and not self._segment.done:
                raise RuntimeError("a segment of this stream is still being generated")
            self._finish_segment()
            self.cancelled.clear()
            plan = self.ctx.plan(text, raw)
            segment = _Segment(self, plan, self.max_frames if max_frames is None else max_frames)
            self._segment = segment
            return segment

    def _finish_segment(self) -> None:
        """Close the current segment; its kept frames become the pending assistant turn.
        (No tensor work here: this also runs when an abandoned iterator is finalised.)"""
        seg = self._segment
        if seg is None:
            return
        seg.done = True
        self.ctx.finish(seg.kept)
        self._segment = None

    @property
    def segments_codes(self) -> list[Tensor]:
        """Kept codes (num_codebooks, frames) of every finished segment still in the context
        (all of them unless the context restarted), in order."""
        return self.ctx.segments_codes

    def start_segment(self, text: str, *, max_frames: int | None = None, raw: bool = False) -> _Segment:
        """Begin a segment without generating (the step-by-step form of `add_text`, for callers
        that drive the engine's queue themselves): submit `engine.scheduler.submit_step(segment)`
        until it yields None, then call `end_segment(segment)`. Call on the model thread."""
        return self._begin(text, max_frames, raw)

    def end_segment(self, segment: _Segment) -> None:
        """Close `segment` (finished or abandoned); its kept frames become the context."""
        with self._lock:
            if self._segment is segment:
                self._finish_segment()

    def add_text(self, text: str, *, max_frames: int | None = None, raw: bool = False) -> Iterator[np.ndarray]:
        """Generate the speech of one text segment as frames (int64 (num_codebooks,)) in the
        calling thread. The segment becomes one user turn, normalised as generate_long does for a
        batch (speaker turns stripped and joined by newlines; `raw=True` keeps the text as is).
        Frames come out as soon as they are known to be kept (the reference drops the last one)."""
        segment = self._begin(text, max_frames, raw)
        try:
            while (frame := segment.step()) is not None:
                yield frame
        finally:
            with self._lock:
                if self._segment is segment:
                    self._finish_segment()

    async def add_text_async(
        self, text: str, *, max_frames: int | None = None, raw: bool = False
    ) -> AsyncIterator[np.ndarray]:
        """Async version of `add_text`: steps run on the engine's worker thread; cancel with
        `cancel()` or by leaving the loop (the frame in flight is finished, then it stops)."""
        segment = self._begin(text, max_frames, raw)
        try:
            while True:
                frame = await asyncio.wrap_future(self.engine.scheduler.submit_step(segment))
                if frame is None:
                    break
                yield frame
        finally:
            with self._lock:
                if self._segment is segment:
                    self._finish_segment()

    def generate_long(self, text: str, *, chunk_length: int = 300, max_frames: int | None = None) -> list[np.ndarray]:
        """The reference's generate_long: split `text` into speaker-turn batches (<= 5 speakers,
        <= chunk_length UTF-8 bytes), one segment each, every batch seeing the earlier audio."""
        return [self.generate(batch, max_frames=max_frames) for batch in split_batches(text, chunk_length)]

    def generate(self, text: str, *, max_frames: int | None = None) -> np.ndarray:
        """All kept codes of one segment: int64 (num_codebooks, frames)."""
        frames = list(self.add_text(text, max_frames=max_frames))
        n_cb = self.engine.cfg.num_codebooks
        return np.stack(frames, axis=1) if frames else np.zeros((n_cb, 0), dtype=np.int64)
