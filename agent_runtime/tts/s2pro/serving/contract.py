"""The contract between the pooled decoder (device side) and the pooled engine (host side).

    decoder = PooledDecoder(model, PoolConfig(max_streams=64, max_len=4096), im_end_id=tok.im_end_id)
    slot = decoder.join(SlotSampling(SamplingParams(0.8, 0.8, 30), seed=1))   # PoolFull when none free
    decoder.load_prefix(slot, prefix_kv, prefix_len)           # a cached voice prefix: a KV copy
    decoder.prefill(slot, values[:, a:b], start=a, last=False)  # chunked prefill of the new text
    decoder.prefill(slot, values[:, b:], start=b, last=True)
    decoder.begin_segment(slot, max_frames=200)
    while decoder.active():
        for f in decoder.step():          # one frame for every slot with a live segment
            ...                           # f.codes (num_codebooks,) or None: the segment ended
    decoder.leave(slot)

Everything here is called from one thread (the engine's scheduler thread); the decoder never
blocks on another thread and keeps no Python state per frame beyond what `SlotFrame` returns.
Semantics per slot equal the single-stream `S2ProEngine` (engine.py): the first frame of a segment
comes from the last prefill position, the next ones from decoding the previous frame; a segment
ends after `max_frames` frames or on <|im_end|> (not as its first frame), and the frame that ends
it is not kept (returned as `codes=None`), exactly as `_Segment._advance`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from agent_runtime.errors import AgentRuntimeError
from agent_runtime.tts.s2pro.sampling import SamplingParams

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
NOISE_MODES = ("auto", "generator", "counter")


class PoolFull(AgentRuntimeError):
    """Every slot of the pool is taken: the stream is refused (the server answers busy)."""


class SlotPhase(enum.Enum):
    """A slot's life: FREE -> IDLE (joined) -> PREFILLING -> DECODING -> IDLE ... -> FREE (left)."""

    FREE = "free"
    IDLE = "idle"  # joined, no segment running (between segments of a reply)
    PREFILLING = "prefilling"  # prompt chunks being written; no frames yet
    DECODING = "decoding"  # a segment generating one frame per step


@dataclass(frozen=True)
class PoolConfig:
    """Sizes and switches of the pool (`tts.options` keys of the pooled engine, documented there).

    max_streams: slots (concurrent calls); max_len: slow-AR KV positions per slot (the longest
    context a call may reach, prefix included); prefill_chunk: most prompt positions one prefill
    call writes (the scheduler interleaves chunks with steps); buckets: batch sizes the step is
    captured for (a batch is padded up to the next bucket; max_streams is always one); graphs:
    capture the step as CUDA graphs (CUDA only; False or CPU: the same step runs eagerly);
    noise: where sampling randomness comes from: "generator" draws each slot's noise from its own
    torch.Generator in the single-stream engine's order (codes equal the single-stream engine's;
    a host loop, so not capturable), "counter" derives it on the device from (seed, draw counter)
    (capturable; independent of the other slots), "auto": generator on CPU, counter on CUDA.
    """

    max_streams: int = 64
    max_len: int = 4096
    prefill_chunk: int = 512
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    graphs: bool = True
    noise: str = "auto"

    def __post_init__(self) -> None:
        if self.max_streams < 1 or self.max_len < 16 or self.prefill_chunk < 16:
            raise ValueError("max_streams >= 1, max_len >= 16 and prefill_chunk >= 16 are required")
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {', '.join(NOISE_MODES)}; got {self.noise!r}")
        if any(b < 1 for b in self.buckets):
            raise ValueError("buckets must be positive batch sizes")

    def step_buckets(self) -> tuple[int, ...]:
        """The capture buckets actually used: those below max_streams, then max_streams."""
        return tuple(sorted({b for b in self.buckets if b < self.max_streams} | {self.max_streams}))


@dataclass(frozen=True)
class SlotSampling:
    """A stream's sampling: parameters as the single-stream engine takes them and its seed.
    `generator` (noise "generator" only) is used as is when given (else one seeded with `seed`)."""

    params: SamplingParams
    seed: int = 0
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class SlotFrame:
    """One slot's result of one step."""

    slot: int
    token: int  # the slow AR's token (semantic id or <|im_end|>)
    codes: np.ndarray | None  # int64 (num_codebooks,) kept frame; None: this frame ended the segment
    frame: Tensor  # int64 (num_codebooks + 1,) the whole frame column (token, codes), kept or not


@dataclass
class StepTimes:
    """Where the time of steps went (seconds, summed since the last `reset`); on CUDA measured
    with events around each part when profiling is on, else only `total_s` and `host_s`."""

    steps: int = 0
    frames: int = 0
    total_s: float = 0.0
    attention_s: float = 0.0
    gemm_s: float = 0.0
    sampling_s: float = 0.0
    host_s: float = 0.0  # Python/launch time outside the device work (eager) or replay overhead
    extra: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        self.steps = self.frames = 0
        self.total_s = self.attention_s = self.gemm_s = self.sampling_s = self.host_s = 0.0
        self.extra.clear()


@dataclass(frozen=True)
class PrefillChunk:
    """One slot's prefill chunk: positions [start, start + S) from values (N+1, S) (as `prefill`)."""

    slot: int
    values: Tensor
    start: int
    last: bool


class PooledDecoderAPI(Protocol):
    """What the engine needs from the decoder (implemented by `decoder.PooledDecoder`)."""

    config: PoolConfig
    times: StepTimes

    @property
    def capacity(self) -> int: ...

    def free_slots(self) -> int: ...

    def phase(self, slot: int) -> SlotPhase: ...

    def join(self, sampling: SlotSampling) -> int:
        """Take a free slot (IDLE, empty context); PoolFull when none is free."""
        ...

    def load_prefix(self, slot: int, kv: list[tuple[Tensor, Tensor]], length: int) -> None:
        """Copy a cached prefix's K/V (per slow layer, (1, KV, >= length, hd)) into positions
        [0, length) of `slot` (IDLE). No forward pass."""
        ...

    def prefill(self, slot: int, values: Tensor, start: int, *, last: bool) -> None:
        """Write positions [start, start + S) of `slot` from values (N+1, S) (IDLE or PREFILLING;
        the slot becomes PREFILLING). `last`: this chunk ends the prompt; its final position's
        output is kept for the segment's first frame. Positions >= start + S become invalid."""
        ...

    def prefill_many(self, chunks: Sequence[PrefillChunk]) -> None:
        """`prefill` for chunks of different slots (one each) at once: the same effect as one
        `prefill` per chunk in order (up to rounding: the decoder may run them as one forward)."""
        ...

    def begin_segment(self, slot: int, max_frames: int) -> None:
        """Start generating after the last prefill chunk (PREFILLING -> DECODING). `max_frames`:
        frames this segment may generate, the frame that ends it included (as `_frame_budget`)."""
        ...

    def active(self) -> int:
        """Slots DECODING."""
        ...

    def step(self) -> list[SlotFrame]:
        """One frame for every DECODING slot; a slot whose segment ends becomes IDLE."""
        ...

    def stop_segment(self, slot: int) -> None:
        """Stop the slot's segment now (cancel): DECODING/PREFILLING -> IDLE; the context keeps
        the positions written so far (the engine re-prefills what it needs, as today)."""
        ...

    def context_length(self, slot: int) -> int:
        """Valid positions of `slot`'s slow-AR context."""
        ...

    def leave(self, slot: int) -> None:
        """Free the slot (any phase); its memory is reused by the next join."""
        ...
