# API complete: contract.PooledDecoderAPI + memory_bytes, slots_for_memory, prefix_kv, last_logits.
"""The device side of the pooled S2-Pro engine: a slot pool and one step = one frame per slot.

    decoder = PooledDecoder(model, PoolConfig(max_streams=64, max_len=4096), im_end_id=tok.im_end_id)

Pool (preallocated at construction; `P = max_streams + 1` slots, the last a scratch slot that the
padding rows of a bucketed batch read and write): slow-AR K/V per layer (KV, P, capacity, hd) in
the model dtype (capacity = max_len rounded up to 128; per KV head the pool is one paged
sequence), fast-AR K/V (max_streams, KV, N, hd) rewritten every frame, and per-slot device state:
valid length, frames generated, frame budget, the last frame, the last prefill position's
outputs, sampling parameters, the RAS window of previous tokens, the noise seed and step counter.
The host keeps mirrors of the phases, lengths and frame indices (known without reading back).

One step (`_device_step`, a function of the batch's slot ids only, so it can be captured):
gather the rows' last frames, decode them through the slow AR (K/V written at each slot's length,
attention over each slot's valid prefix only: attention.py), take the prefill outputs instead for
rows whose segment's first frame is due, windowed head + bias, the normal and RAS draws and the
RAS rule, the fast AR over the N codebooks for all rows (sampling each position), then update
lengths, frame indices, RAS windows and decide the ends (budget, or <|im_end|> not as first
frame). The host reads (frames, ended) once at the end of `step()`. On CUDA the batch is padded
to its bucket (`PoolConfig.step_buckets()`) and replayed as a CUDA graph (graphs.py), or run
eagerly on the same padded shapes.

Exactness: prefill runs `model.forward_slow` on the slot's KV with the single-stream engine's
attend length, so it gives the engine's bits. The decode step runs B-row GEMMs (not the engine's
one-row GEMVs) and another attention kernel, so logits match within rounding (fp32 ~1e-5);
with noise "generator" the draws are the engine's, so codes match unless a rounding difference
flips a draw (not seen in the tests).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from agent_runtime.errors import ConfigError
from agent_runtime.tts.s2pro.kv_cache import prefill_kv_len
from agent_runtime.tts.s2pro.model import DualARConfig, DualARTransformer, FastARStepper, LayerKV, causal_mask
from agent_runtime.tts.s2pro.sampling import (
    RAS_HIGH_TEMPERATURE,
    RAS_HIGH_TOP_P,
    RAS_WINDOW,
    SamplerTensors,
    aligned_window,
)
from agent_runtime.tts.s2pro.serving.attention import FLEX_BLOCK, FlexDecodeAttention, MaskedDecodeAttention
from agent_runtime.tts.s2pro.serving.contract import (
    PoolConfig,
    PoolFull,
    PrefillChunk,
    SlotFrame,
    SlotPhase,
    SlotSampling,
    StepTimes,
)
from agent_runtime.tts.s2pro.serving.graphs import StepGraphs, bucket_for
from agent_runtime.tts.s2pro.serving.sampler import counter_noise, fold_seed, generator_noise, sample_rows

ATTENTION_MODES = ("auto", "flex", "masked")
T = TypeVar("T")

log = logging.getLogger(__name__)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def parameter_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the modules' parameters."""
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def flex_by_default(device: torch.device) -> bool:
    """Whether attention "auto" picks flex attention (compiled) on `device`: on CUDA."""
    return device.type == "cuda"


def resolve_noise(noise: str, device: torch.device) -> str:
    """`PoolConfig.noise` with "auto" resolved: generator on CPU, counter on CUDA."""
    if noise == "auto":
        return "counter" if device.type == "cuda" else "generator"
    return noise


@dataclass
class SlotState:
    """Per-slot device tensors of the pool (first axis: slot)."""

    length: Tensor  # (P,) int64 valid slow-AR positions
    index: Tensor  # (P,) int64 frames generated in the current segment
    budget: Tensor  # (P,) int64 frames the segment may generate (the ending one included)
    last_frame: Tensor  # (P, N+1) int64 the last frame (the next decode's input)
    pending_normed: Tensor  # (P, D) the last prefill position's final-normed state
    pending_fast: Tensor  # (P, fast D) and its fast-AR input
    prev: Tensor  # (P, RAS_WINDOW) int64 previous slow tokens (RAS)
    temperature: Tensor  # (P,) model dtype
    top_p: Tensor  # (P,) model dtype
    top_k: Tensor  # (P,) int64
    seed: Tensor  # (P,) int64, 32-bit (counter noise)
    counter: Tensor  # (P,) int64 steps taken (counter noise)

    @classmethod
    def zeros(cls, cfg: DualARConfig, slots: int, dtype: torch.dtype, device: torch.device) -> SlotState:
        def ints(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=torch.int64, device=device)

        def floats(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        n = cfg.num_codebooks + 1
        return cls(
            ints(slots),
            ints(slots),
            ints(slots),
            ints(slots, n),
            floats(slots, cfg.slow.dim),
            floats(slots, cfg.fast.dim),
            ints(slots, RAS_WINDOW),
            floats(slots),
            floats(slots),
            ints(slots),
            ints(slots),
            ints(slots),
        )

    def tensors(self) -> list[Tensor]:
        return list(vars(self).values())

    def reset(self, slot: int) -> None:
        for t in self.tensors():
            t[slot] = 0


def embed_rows(model: DualARTransformer, values: Tensor) -> Tensor:
    """`model.embed` without boolean indexing (no host sync, capturable); the same bits."""
    cfg = model.cfg
    embeds = [
        model.codebook_embeddings(values[:, i + 1] + i * cfg.codebook_size) for i in range(cfg.num_codebooks)
    ]
    vq_sum = torch.stack(embeds, dim=1).sum(dim=1)
    tokens = values[:, 0]
    is_semantic = ((tokens >= cfg.semantic_begin_id) & (tokens <= cfg.semantic_end_id)).unsqueeze(-1)
    x = model.embeddings(tokens) + torch.where(is_semantic, vq_sum, torch.zeros_like(vq_sum))
    if cfg.scale_codebook_embeddings:
        x = torch.where(is_semantic, x / math.sqrt(cfg.num_codebooks + 1), x)
    return x


class PooledDecoder:
    """The slot pool and its step (contract.PooledDecoderAPI). See the module docstring.

    `attention`: "masked" (gather + mask, the simple path), "flex" (FlexAttention with a block
    mask from the lengths; compiled on CUDA) or "auto" (flex on CUDA, masked on CPU; if flex fails
    to compile or capture, masked with a warning, so a serving start or a benchmark never dies of it).
    `profile` (eager steps only; on CUDA with events): split `times` into attention, GEMMs (the
    rest of the slow and fast AR) and sampling; with CUDA graphs on it runs the steps eagerly.
    """

    def __init__(
        self,
        model: DualARTransformer,
        config: PoolConfig,
        *,
        im_end_id: int,
        attention: str = "auto",
        profile: bool = False,
    ) -> None:
        cfg = model.cfg
        if config.max_len > cfg.cache_len:
            raise ConfigError(
                f"max_len {config.max_len} exceeds the model's context of {cfg.cache_len} positions"
            )
        if attention not in ATTENTION_MODES:
            raise ConfigError(f"attention must be one of {', '.join(ATTENTION_MODES)}; got {attention!r}")
        self.model = model
        self.cfg = cfg
        self.config = config
        self.im_end_id = im_end_id
        self.device = model.device
        self.dtype = model.dtype
        self.times = StepTimes()
        self.profile = False  # on after the capture (events cannot be timed inside a graph)
        self.noise = resolve_noise(config.noise, self.device)
        use_graphs = config.graphs and self.device.type == "cuda"
        if use_graphs and self.noise == "generator":
            raise ConfigError('CUDA graphs need noise "counter" (a torch.Generator draw is not capturable)')
        self.scratch = config.max_streams  # the pool's extra slot
        self.pad_eager = self.device.type == "cuda"  # eager steps padded to the buckets too
        self.kv_capacity = _round_up(config.max_len, FLEX_BLOCK)
        with torch.inference_mode():
            self._allocate()
        self.attention = self._attention(attention)
        self._may_fall_back = attention == "auto" and isinstance(self.attention, FlexDecodeAttention)
        self._phase = [SlotPhase.FREE] * config.max_streams
        self._length = [0] * config.max_streams  # host mirrors (exact without reading the device)
        self._index = [0] * config.max_streams
        self._ready = [False] * config.max_streams  # the prompt's last chunk is prefilled
        self._generators: list[torch.Generator | None] = [None] * config.max_streams
        self.last_logits: Tensor | None = None  # debug: the last step's windowed slow logits (B, W)
        self.last_slots: list[int] = []  # and the slots of its rows
        self._graphs: StepGraphs | None = None
        if use_graphs:
            with torch.inference_mode():
                self._graphs = self._with_fallback(
                    lambda: StepGraphs(self._graph_step, config.step_buckets(), self.scratch, self.device)
                )
        self.profile = profile

    # ---- construction ------------------------------------------------------------------------

    def _allocate(self) -> None:
        cfg, model = self.cfg, self.model
        s, f = cfg.slow, cfg.fast
        slots = self.config.max_streams + 1
        kv_shape = (s.n_local_heads, slots, self.kv_capacity, s.head_dim)
        self.k = [torch.zeros(kv_shape, dtype=self.dtype, device=self.device) for _ in range(s.n_layer)]
        self.v = [torch.zeros(kv_shape, dtype=self.dtype, device=self.device) for _ in range(s.n_layer)]
        fast_shape = (self.config.max_streams, f.n_local_heads, cfg.num_codebooks, f.head_dim)
        self.fast_kv = [
            LayerKV(
                torch.zeros(fast_shape, dtype=self.dtype, device=self.device),
                torch.zeros(fast_shape, dtype=self.dtype, device=self.device),
            )
            for _ in range(f.n_layer)
        ]
        self.state = SlotState.zeros(cfg, slots, self.dtype, self.device)
        self.stepper = FastARStepper(model)
        lo = min(cfg.semantic_begin_id, self.im_end_id)
        hi = max(cfg.semantic_end_id, self.im_end_id)
        self.win_off, win_end = aligned_window(lo, hi, cfg.vocab_size)
        self.head_w = model.output_weight()[self.win_off : win_end]
        bias = torch.full((win_end - self.win_off,), float("-inf"), dtype=self.dtype, device=self.device)
        bias[cfg.semantic_begin_id - self.win_off : cfg.semantic_end_id + 1 - self.win_off] = 0.0
        bias[self.im_end_id - self.win_off] = 0.0
        self.bias_w = bias
        self.high_temperature = torch.tensor(RAS_HIGH_TEMPERATURE, dtype=self.dtype, device=self.device)
        self.high_top_p = torch.tensor(RAS_HIGH_TOP_P, dtype=self.dtype, device=self.device)
        self.logits_buf = torch.zeros(
            (self.config.max_streams, win_end - self.win_off), dtype=self.dtype, device=self.device
        )

    def _with_fallback(self, run: Callable[[], T]) -> T:
        """`run()`; with attention "auto", if flex attention fails in it (its compile on a torch or
        device it does not support, say), once more on masked attention, with a warning. The retry is
        safe: a step that failed in attention has written only the K/V it writes again."""
        try:
            return run()
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            if not self._may_fall_back:
                raise
            self._may_fall_back = False
            log.warning(
                "s2pro pooled step: flex attention failed (%s: %s); falling back to masked attention "
                "(reads each slot's whole capacity: slower, same results)",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            s = self.cfg.slow
            self.attention = MaskedDecodeAttention(s.n_head, s.n_local_heads, s.head_dim, self.kv_capacity, self.device)
            return run()

    def _attention(self, mode: str) -> MaskedDecodeAttention | FlexDecodeAttention:
        s = self.cfg.slow
        if mode == "flex" or (mode == "auto" and flex_by_default(self.device)):
            slots = self.config.max_streams
            compiled = self.device.type == "cuda"
            return FlexDecodeAttention(
                slots + 1, slots, s.n_head, s.n_local_heads, s.head_dim, self.kv_capacity, self.device, compiled
            )
        return MaskedDecodeAttention(s.n_head, s.n_local_heads, s.head_dim, self.kv_capacity, self.device)

    # ---- sizes -------------------------------------------------------------------------------

    @staticmethod
    def slot_bytes(cfg: DualARConfig, max_len: int, dtype: torch.dtype) -> int:
        """Device bytes one slot takes (slow + fast K/V and its state), `max_len` positions."""
        s, f = cfg.slow, cfg.fast
        item = torch.tensor([], dtype=dtype).element_size()
        slow = 2 * s.n_layer * s.n_local_heads * _round_up(max_len, FLEX_BLOCK) * s.head_dim * item
        fast = 2 * f.n_layer * f.n_local_heads * cfg.num_codebooks * f.head_dim * item
        state = (s.dim + f.dim + 2) * item + (cfg.num_codebooks + 1 + RAS_WINDOW + 7) * 8
        return slow + fast + state

    @classmethod
    def slots_for_memory(cls, cfg: DualARConfig, max_len: int, free_bytes: int, dtype: torch.dtype) -> int:
        """How many slots of `max_len` positions fit in `free_bytes` (the scratch slot counted)."""
        return max(0, free_bytes // cls.slot_bytes(cfg, max_len, dtype) - 1)

    def step_read_bytes(self) -> int:
        """Weight bytes one step reads at batch 1 (K/V and embedding rows not counted): the slow
        layers, final norm and head window once; the fast layers once per codebook position (N
        positions in sequence, each reading them again; position 0, whose logits are unused, stops
        after the last layer's K/V) and the fast norm and head N - 1 times. For S2-Pro that is 1.69x
        its weights: what one stream's frame costs at the memory bound (bench-serve's read floor)."""
        model, n, size = self.model, self.cfg.num_codebooks, parameter_bytes
        slow = size(*model.layers, model.norm, model.fast_project_in) + self.head_w.numel() * self.head_w.element_size()
        last = model.fast_layers[-1]
        position_0 = size(*model.fast_layers) - size(last.attention.wo, last.feed_forward, last.ffn_norm)
        later = (n - 1) * size(*model.fast_layers, model.fast_norm, model.fast_output)
        return slow + position_0 + later

    def memory_bytes(self) -> int:
        """Device bytes the pool holds (K/V, fast K/V, slot state, step buffers)."""
        tensors = [*self.k, *self.v, *(kv.k for kv in self.fast_kv), *(kv.v for kv in self.fast_kv)]
        tensors += [*self.state.tensors(), self.logits_buf]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ---- slots -------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.config.max_streams

    def free_slots(self) -> int:
        return self._phase.count(SlotPhase.FREE)

    def phase(self, slot: int) -> SlotPhase:
        return self._phase[slot]

    def active(self) -> int:
        return self._phase.count(SlotPhase.DECODING)

    def context_length(self, slot: int) -> int:
        return self._length[slot]

    def _expect(self, slot: int, *phases: SlotPhase) -> None:
        if not 0 <= slot < self.capacity:
            raise ValueError(f"slot {slot} is not in the pool (0..{self.capacity - 1})")
        if self._phase[slot] not in phases:
            want = " or ".join(p.name for p in phases)
            raise RuntimeError(f"slot {slot} is {self._phase[slot].name}; this needs {want}")

    @torch.inference_mode()
    def join(self, sampling: SlotSampling) -> int:
        """Take a free slot (IDLE, empty context); PoolFull when none is free."""
        try:
            slot = self._phase.index(SlotPhase.FREE)
        except ValueError:
            raise PoolFull(f"all {self.capacity} slots of the S2-Pro pool are taken") from None
        st = self.state
        st.reset(slot)
        params = SamplerTensors.create(sampling.params, self.dtype, self.device)
        st.temperature[slot] = params.temperature
        st.top_p[slot] = params.top_p
        st.top_k[slot] = params.top_k
        st.seed[slot] = fold_seed(sampling.seed)
        generator = sampling.generator
        if generator is None and self.noise == "generator":
            generator = torch.Generator(device=self.device)
            generator.manual_seed(sampling.seed)
        self._generators[slot] = generator
        self._phase[slot] = SlotPhase.IDLE
        self._length[slot] = self._index[slot] = 0
        self._ready[slot] = False
        return slot

    def leave(self, slot: int) -> None:
        """Free the slot (any phase)."""
        self._expect(slot, *SlotPhase)
        self._phase[slot] = SlotPhase.FREE
        self._generators[slot] = None
        self._ready[slot] = False

    @torch.inference_mode()
    def load_prefix(self, slot: int, kv: list[tuple[Tensor, Tensor]], length: int) -> None:
        """Copy a cached prefix's K/V (per slow layer, (1, KV, >= length, hd)) into [0, length)."""
        self._expect(slot, SlotPhase.IDLE)
        s = self.cfg.slow
        if not 0 < length <= self.config.max_len or len(kv) != s.n_layer:
            raise ValueError(f"a prefix of {length} positions and {len(kv)} layers does not fit the pool")
        k0 = kv[0][0]
        if (
            k0.dim() != 4
            or k0.shape[1] != s.n_local_heads
            or k0.shape[2] < length
            or k0.shape[3] != s.head_dim
        ):
            raise ValueError(
                f"prefix K/V must be (1, {s.n_local_heads}, >= {length}, {s.head_dim}) per layer "
                f"(the SDPA cache layout); got {tuple(k0.shape)}"
            )
        for k_pool, v_pool, (k, v) in zip(self.k, self.v, kv, strict=True):
            k_pool[:, slot, :length] = k[0, :, :length]
            v_pool[:, slot, :length] = v[0, :, :length]
        self.state.length[slot] = length
        self._length[slot] = length

    @torch.inference_mode()
    def prefix_kv(self, slot: int, length: int) -> list[tuple[Tensor, Tensor]]:
        """Copies of `slot`'s K/V at [0, length) per slow layer, (1, KV, length, hd) each: what
        `load_prefix` takes (e.g. to cache a voice prefix prefilled in a slot)."""
        if not 0 < length <= self._length[slot]:
            raise ValueError(f"slot {slot} holds {self._length[slot]} valid positions, not {length}")
        pairs = zip(self.k, self.v, strict=True)
        return [(k[None, :, slot, :length].clone(), v[None, :, slot, :length].clone()) for k, v in pairs]

    @torch.inference_mode()
    def prefill(self, slot: int, values: Tensor, start: int, *, last: bool) -> None:
        """Write positions [start, start + S) of `slot` from values (N+1, S) (see the contract)."""
        chunk = PrefillChunk(slot, values, start, last)
        self._check_chunk(chunk)
        end = start + values.shape[1]
        layers = [LayerKV(k[None, :, slot], v[None, :, slot]) for k, v in zip(self.k, self.v, strict=True)]
        normed, fast_in = self.model.forward_slow(values[None].to(self.device), layers, start, self._attend_len(end))
        self._prefilled(chunk, normed[0, -1], fast_in[0, -1])

    @torch.inference_mode()
    def prefill_many(self, chunks: Sequence[PrefillChunk]) -> None:
        """Several slots' chunks as one forward: the GEMMs (the weight reads, most of a short
        prefill's time on a GPU) run once over all the chunks' rows packed together; embedding,
        RoPE, the K/V writes and attention stay per chunk, each exactly as `prefill` does them. So
        a round with k short prompts reads the weights once instead of k times. The result equals k
        `prefill` calls up to rounding (other GEMM shapes; fp32 ~1e-6). One chunk: `prefill`."""
        if len(chunks) == 1:
            c = chunks[0]
            self.prefill(c.slot, c.values, c.start, last=c.last)
            return
        if len({c.slot for c in chunks}) != len(chunks):
            raise ValueError("prefill_many takes one chunk per slot")
        for c in chunks:
            self._check_chunk(c)
        model = self.model
        sizes = [c.values.shape[1] for c in chunks]
        x = torch.cat([model.embed(c.values[None].to(self.device)) for c in chunks], dim=1)  # (1, T, D)
        freqs = torch.cat([model.freqs_cis[c.start : c.start + n] for c, n in zip(chunks, sizes, strict=True)])
        plans = []
        for c, n in zip(chunks, sizes, strict=True):
            kv_len = self._attend_len(c.start + n)
            positions = torch.arange(c.start, c.start + n, device=self.device)
            plans.append((c, n, kv_len, causal_mask(positions, kv_len)))
        for layer, k_pool, v_pool in zip(model.layers, self.k, self.v, strict=True):
            attn = layer.attention
            q, k, v = attn.qkv(layer.attention_norm(x))
            q, k = attn.rotate(q, k, freqs)
            ys, at = [], 0
            for c, n, kv_len, mask in plans:
                rows = slice(at, at + n)
                cache = LayerKV(k_pool[None, :, c.slot], v_pool[None, :, c.slot])
                ys.append(attn.attend(q[:, rows], k[:, rows], v[:, rows], mask, cache, c.start, kv_len))
                at += n
            h = x + attn.wo(torch.cat(ys, dim=1))
            x = h + layer.feed_forward(layer.ffn_norm(h))
        last_rows = torch.tensor(np.cumsum(sizes) - 1, device=self.device)
        normed, fast_in = model.slow_outputs(x[:, last_rows])
        for i, c in enumerate(chunks):
            self._prefilled(c, normed[0, i], fast_in[0, i])

    def _check_chunk(self, c: PrefillChunk) -> None:
        self._expect(c.slot, SlotPhase.IDLE, SlotPhase.PREFILLING)
        end = c.start + c.values.shape[1]
        if not 0 <= c.start <= self._length[c.slot] or c.values.shape[1] < 1 or end > self.config.max_len:
            raise ValueError(
                f"prefill of [{c.start}, {end}) on slot {c.slot} with {self._length[c.slot]} valid positions "
                f"(chunks must start inside the context and end by max_len {self.config.max_len})"
            )

    def _attend_len(self, end: int) -> int:
        """The single-stream engine's attend length for a prefill ending at `end` (within the pool)."""
        return min(prefill_kv_len(end, self.cfg.cache_len), self.kv_capacity)

    def _prefilled(self, c: PrefillChunk, normed: Tensor, fast_in: Tensor) -> None:
        """State after chunk `c` (normed, fast_in: its final position's outputs)."""
        end = c.start + c.values.shape[1]
        st = self.state
        st.length[c.slot] = end
        if c.last:
            st.pending_normed[c.slot] = normed
            st.pending_fast[c.slot] = fast_in
        self._length[c.slot] = end
        self._ready[c.slot] = c.last
        self._phase[c.slot] = SlotPhase.PREFILLING

    @torch.inference_mode()
    def begin_segment(self, slot: int, max_frames: int) -> None:
        """PREFILLING -> DECODING after the last chunk; `max_frames` <= 0: up to max_len. The budget
        is also capped so that the segment's positions stay below max_len."""
        self._expect(slot, SlotPhase.PREFILLING)
        if not self._ready[slot]:
            raise RuntimeError(
                f"slot {slot}: begin_segment needs the prompt's last chunk (prefill last=True)"
            )
        room = self.config.max_len - self._length[slot]
        if room < 1:
            raise ValueError(f"slot {slot}: no room for a frame (context of {self._length[slot]} = max_len)")
        budget = room if max_frames <= 0 else min(max_frames, room)
        st = self.state
        st.budget[slot] = budget
        st.index[slot] = 0
        st.prev[slot] = 0
        self._index[slot] = 0
        self._ready[slot] = False
        self._phase[slot] = SlotPhase.DECODING

    def stop_segment(self, slot: int) -> None:
        """DECODING/PREFILLING -> IDLE; the context keeps what was written."""
        self._expect(slot, SlotPhase.IDLE, SlotPhase.PREFILLING, SlotPhase.DECODING)
        self._phase[slot] = SlotPhase.IDLE
        self._ready[slot] = False

    # ---- the step ----------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[SlotFrame]:
        """One frame for every DECODING slot; a slot whose segment ends becomes IDLE."""
        slots = [s for s, p in enumerate(self._phase) if p is SlotPhase.DECODING]
        if not slots:
            return []
        t0 = time.perf_counter()
        if self._graphs is not None and not self.profile:
            frames, ended = self._graphs.run(slots)
        else:
            frames, ended = self._eager_step(slots)
        launched = time.perf_counter()
        out = torch.cat([frames, ended[:, None].long()], dim=1).cpu()  # the step's one sync
        synced = time.perf_counter()
        self.last_logits = self.logits_buf[: len(slots)]
        self.last_slots = slots
        rows = out.numpy()  # per-row work on numpy views: a few µs less per slot than tensor indexing
        results = [self._take(slot, out[b, :-1], rows[b]) for b, slot in enumerate(slots)]
        t = self.times
        t.steps += 1
        t.frames += len(slots)
        t.total_s += time.perf_counter() - t0
        t.host_s += (launched - t0 if self.device.type == "cuda" else 0.0) + time.perf_counter() - synced
        return results

    def _take(self, slot: int, frame: Tensor, row: np.ndarray) -> SlotFrame:
        """Host mirrors after a slot's frame, and its SlotFrame. `frame` (N+1,) is a view of this
        step's host copy (fresh every step, never written), `row` the same with the ended flag."""
        if self._index[slot] > 0:
            self._length[slot] += 1
        self._index[slot] += 1
        ended = bool(row[-1])
        if ended:
            self._phase[slot] = SlotPhase.IDLE
        codes = None if ended else row[1:-1].copy()
        return SlotFrame(slot=slot, token=int(row[0]), codes=codes, frame=frame)

    def _eager_step(self, slots: list[int]) -> tuple[Tensor, Tensor]:
        """The step without graphs. On CUDA the batch is padded to its bucket (scratch rows) as in
        the captured step, so compiled parts see only the bucket shapes (no compile per size)."""
        n = len(slots)
        padded = list(slots)
        if self.pad_eager:
            padded += [self.scratch] * (bucket_for(self.config.step_buckets(), n) - n)
        rows = torch.tensor(padded, dtype=torch.int64, device=self.device)
        noise = None
        if self.noise == "generator":
            noise = [F.pad(t, (0, 0, 0, len(padded) - n), value=1.0) for t in self._generator_noise(slots)]
        frames, ended = self._with_fallback(lambda: self._device_step(rows, noise))
        return frames[:n], ended[:n]

    def _generator_noise(self, slots: list[int]) -> list[Tensor]:
        """-log(q) per draw stream (slow normal, slow RAS, fast 1..N-1), each (B, n), drawn from
        each slot's generator in the single-stream engine's order."""
        cfg = self.cfg
        win = self.head_w.shape[0]
        per_slot = []
        for slot in slots:
            gen = self._generators[slot]
            draws = [
                generator_noise(gen, self.win_off, win, cfg.vocab_size, self.dtype, self.device)
                for _ in range(2)
            ]
            draws += [
                generator_noise(gen, 0, cfg.codebook_size, cfg.codebook_size, self.dtype, self.device)
                for _ in range(cfg.num_codebooks - 1)
            ]
            per_slot.append(draws)
        return [torch.stack(column) for column in zip(*per_slot, strict=True)]

    def _graph_step(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        return self._device_step(rows, None)

    def _device_step(self, rows: Tensor, noise: list[Tensor] | None) -> tuple[Tensor, Tensor]:
        """The step on the device for slot ids `rows` (B,): (frames (B, N+1) int64, ended (B,) bool).
        `noise`: generator draws per stream, or None for counter noise."""
        st = self.state
        first = st.index[rows] == 0
        pos = st.length[rows]
        normed, fast_in = self._slow_decode(st.last_frame[rows], rows, pos)
        normed = torch.where(first[:, None], st.pending_normed[rows], normed)
        fast_in = torch.where(first[:, None], st.pending_fast[rows], fast_in)
        with self._section("gemm_s"):
            logits = F.linear(normed, self.head_w) + self.bias_w
        self.logits_buf[: rows.shape[0]] = logits
        tok = self._slow_token(logits, rows, first, noise)
        codes = self._fast_codes(fast_in, tok, rows, noise)
        frame = torch.cat([tok[:, None], codes], dim=1)
        return frame, self._advance(rows, first, pos, frame)

    def _slow_decode(self, frames: Tensor, rows: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Slow AR over the rows' last frames (B, N+1) at positions `pos`: (normed (B, D), fast_in)."""
        model = self.model
        with self._section("gemm_s"):
            x = embed_rows(model, frames[:, :, None])
            freqs = model.freqs_cis[pos].unsqueeze(1)
        with self._section("attention_s"):
            self.attention.prepare(rows, pos + 1)
        for layer, k_pool, v_pool in zip(model.layers, self.k, self.v, strict=True):
            attn = layer.attention
            with self._section("gemm_s"):
                q, k, v = attn.qkv(layer.attention_norm(x))
                q, k = attn.rotate(q, k, freqs)
            with self._section("attention_s"):
                k_pool[:, rows, pos] = k[:, 0].transpose(0, 1)
                v_pool[:, rows, pos] = v[:, 0].transpose(0, 1)
                y = self.attention(q[:, 0], k_pool, v_pool)
            with self._section("gemm_s"):
                h = x + attn.wo(y[:, None])
                x = h + layer.feed_forward(layer.ffn_norm(h))
        with self._section("gemm_s"):
            normed, fast_in = model.slow_outputs(x)
        return normed[:, 0], fast_in[:, 0]

    def _neg_log_q(
        self, rows: Tensor, noise: list[Tensor] | None, stream: int, offset: int, n: int
    ) -> Tensor:
        """-log(q) (B, n) of draw `stream` (0: slow normal, 1: slow RAS, 1 + k: fast position k):
        the generator draws given, or counter noise keyed by (seed, the slot's step count, stream)."""
        if noise is not None:
            return noise[stream]
        st = self.state
        return counter_noise(st.seed[rows], st.counter[rows], stream, offset, n)

    def _tie_rows(self, rows: Tensor, noise: list[Tensor] | None) -> bool | Tensor:
        """Rows whose ties at a top-k/top-p cut the reference's sort settles: the real rows with
        generator noise (exact path); none with counter noise (capturable: ties are all kept)."""
        return False if noise is None else rows != self.scratch

    def _slow_token(self, logits: Tensor, rows: Tensor, first: Tensor, noise: list[Tensor] | None) -> Tensor:
        """Normal draw, RAS draw and the RAS rule (no previous tokens for a segment's first frame)."""
        cfg, st = self.cfg, self.state
        with self._section("sampling_s"):
            bsz, win = logits.shape
            top_k = st.top_k[rows]
            tie = self._tie_rows(rows, noise)
            args = (self.win_off, cfg.vocab_size)
            tok = sample_rows(
                logits,
                *args,
                st.temperature[rows],
                st.top_p[rows],
                top_k,
                self._neg_log_q(rows, noise, 0, self.win_off, win),
                tie,
            )
            tok_hi = sample_rows(
                logits,
                *args,
                self.high_temperature.expand(bsz),
                self.high_top_p.expand(bsz),
                top_k,
                self._neg_log_q(rows, noise, 1, self.win_off, win),
                tie,
            )
            semantic = (tok >= cfg.semantic_begin_id) & (tok <= cfg.semantic_end_id)
            repeated = (st.prev[rows] == tok[:, None]).any(dim=-1)
            return torch.where(~first & semantic & repeated, tok_hi, tok)

    def _fast_codes(self, fast_in: Tensor, tok: Tensor, rows: Tensor, noise: list[Tensor] | None) -> Tensor:
        """The N codes (B, N) of the rows' frames: code 0 from the slow token, then the fast AR."""
        cfg, st = self.cfg, self.state
        bsz = rows.shape[0]
        caches = [LayerKV(kv.k[:bsz], kv.v[:bsz]) for kv in self.fast_kv]
        temperature, top_p, top_k = st.temperature[rows], st.top_p[rows], st.top_k[rows]
        emb = self.model.fast_embeddings.weight
        with self._section("gemm_s"):
            self.stepper.step(fast_in[:, None], 0, caches, want_logits=False)
        code = (tok - cfg.semantic_begin_id).clamp(0, cfg.codebook_size - 1)
        codes = [code]
        for k in range(1, cfg.num_codebooks):
            with self._section("gemm_s"):
                logits = self.stepper.step(F.embedding(code, emb)[:, None], k, caches)
            assert logits is not None
            with self._section("sampling_s"):
                nlq = self._neg_log_q(rows, noise, 1 + k, 0, cfg.codebook_size)
                code = sample_rows(
                    logits[:, -1],
                    0,
                    cfg.codebook_size,
                    temperature,
                    top_p,
                    top_k,
                    nlq,
                    self._tie_rows(rows, noise),
                )
            codes.append(code)
        return torch.stack(codes, dim=1)

    def _advance(self, rows: Tensor, first: Tensor, pos: Tensor, frame: Tensor) -> Tensor:
        """Update the rows' state after `frame`; whether each row's segment ended (as `_advance`)."""
        st = self.state
        tok = frame[:, 0]
        index = st.index[rows] + 1
        ended = (index >= st.budget[rows]) | ((index > 1) & (tok == self.im_end_id))
        prev = st.prev[rows]
        st.prev[rows] = torch.where(first[:, None], prev, torch.cat([prev[:, 1:], tok[:, None]], dim=1))
        st.length[rows] = pos + (~first).long()
        st.last_frame[rows] = frame
        st.index[rows] = index
        st.counter[rows] = st.counter[rows] + 1
        st.reset(self.scratch)  # padding rows of a captured batch leave nothing behind
        return ended

    # ---- profiling ---------------------------------------------------------------------------

    @contextmanager
    def _section(self, name: str) -> Iterator[None]:
        """Time a part of an eager step into `times` (CUDA: events, read after the step's sync)."""
        if not self.profile:
            yield
            return
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            end.synchronize()  # profiling only: serialises the step
            setattr(self.times, name, getattr(self.times, name) + start.elapsed_time(end) / 1000)
            return
        t0 = time.perf_counter()
        yield
        setattr(self.times, name, getattr(self.times, name) + time.perf_counter() - t0)
