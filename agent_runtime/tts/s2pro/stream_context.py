"""Pieces shared by the single-stream engine (engine.py) and the pooled one (serving/engine.py).

* `PrefixCache`: the voice prefixes (system turns) prefilled once per voice (keyed by content
  hash), as prompt values and per-layer K/V; an LRU of `size` entries.
* `StreamContext`: a reply's prompt context across segments: which values are in the context,
  which of them have KV already, and what the next segment must prefill (continuation with the
  previous segment's codes; the restart from the voice prefix past `max_context`).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from agent_runtime.tts.s2pro.prompt import PromptBuilder, PromptError, VoiceReference, one_batch_text

# fp32 CPU GEMMs give other bits for 1-3 rows than for >= 4 (measured): never prefill fewer rows.
MIN_PREFILL_ROWS = 16
# generate_long refuses prompts longer than max_seq_len - 2048.
CONTEXT_RESERVE = 2048

KV = list[tuple[Tensor, Tensor]]


@dataclass
class PrefixEntry:
    values: Tensor  # (N+1, P) prompt values of the prefix
    kv: KV | None  # per-layer K/V of the P positions (None if too short to prefill alone)


class PrefixCache:
    """Voice prefix values and KV, prefilled once per voice by `fill(values) -> kv` (thread-safe
    lookups; `fill` runs in the calling thread, the engine's model thread)."""

    def __init__(self, builder: PromptBuilder, size: int, fill: Callable[[Tensor], KV]) -> None:
        self.builder = builder
        self.size = size
        self._fill = fill
        self._entries: collections.OrderedDict[str, PrefixEntry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, voice: VoiceReference | None, use_cache: bool = True) -> tuple[Tensor, KV | None]:
        """(values, kv) of the system turn for `voice`; kv None when it must be prefilled inline."""
        key = voice.content_hash() if voice is not None else "<no-voice>"
        if use_cache:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return entry.values, entry.kv
        values = self.builder.system_turn(voice)
        if not use_cache:
            return values, None
        kv = None
        if values.shape[1] >= MIN_PREFILL_ROWS:
            with torch.inference_mode():
                kv = self._fill(values)
        with self._lock:
            self.misses += 1
            self._entries[key] = PrefixEntry(values, kv)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return values, kv

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass(frozen=True)
class SegmentPlan:
    """What a new segment prefills: `chunk` (N+1, S) at positions [start, start + S)."""

    chunk: Tensor
    start: int

    @property
    def prompt_len(self) -> int:
        return self.start + self.chunk.shape[1]


class StreamContext:
    """The context of one conversation (one voice), segment after segment.

    `values` (N+1, T) is everything in the context; positions below `prefilled` have valid KV.
    `plan()` appends the previous segment (its codes as an assistant turn) and the new user turn,
    restarting from the voice prefix (+ the last segment) when `limit` would be passed;
    `finish(kept)` records a segment's kept frame columns (N+1,) as the next one's context.
    """

    def __init__(self, builder: PromptBuilder, prefix_values: Tensor, prefix_kv_len: int, max_context: int) -> None:
        self.builder = builder
        self.prefix_values = prefix_values
        self.values = prefix_values
        self.prefilled = prefix_kv_len
        # KV slots that stay valid whatever happens later: a restored prefix is never overwritten.
        self.prefix_kv_len = prefix_kv_len
        self.max_context = max_context
        self.restarts = 0  # times the context restarted from the voice prefix
        self.pending: list[Tensor] | None = None  # frames of the previous segment, not yet in context
        self.last_turn: Tensor | None = None  # the previous segment's user turn (for a restart)
        self.finished: list[list[Tensor]] = []

    def plan(self, text: str, raw: bool = False, limit: int | None = None) -> SegmentPlan:
        """The next segment's prefill for `text` (normalised as one generate_long batch unless
        `raw`); `limit`: positions the prompt may reach (default `max_context`)."""
        if not raw:
            text = one_batch_text(text)
        builder = self.builder
        turn = builder.user_turn(text)
        previous = None  # the previous segment as context: its user turn and its codes
        if self.pending is not None:
            previous = builder.assistant_codes_end(self.codes_of(self.pending))
        appended = torch.cat([self.values, *([previous] if previous is not None else []), turn], dim=1)
        limit = self.max_context if limit is None else limit
        if appended.shape[1] > limit and self.values.shape[1] > self.prefix_values.shape[1]:
            appended = self._restart(turn, previous, limit)
        if appended.shape[1] > limit:
            raise PromptError(
                f"prompt is too long: {appended.shape[1]} positions > {limit} (max_seq_len - {CONTEXT_RESERVE}"
                " or max_context); split the text or open a new stream"
            )
        plan = SegmentPlan(appended[:, self.prefilled :], self.prefilled)
        self.values = appended
        self.prefilled = appended.shape[1]
        self.pending = None
        self.last_turn = turn
        return plan

    def _restart(self, turn: Tensor, previous: Tensor | None, limit: int) -> Tensor:
        """The context from the voice prefix again: prefix + the previous segment (user turn and
        codes, when it fits) + `turn`. Positions past the prefix's cached KV are prefilled anew."""
        parts = [self.prefix_values]
        if self.last_turn is not None and previous is not None:
            kept = [self.prefix_values, self.last_turn, previous, turn]
            if sum(p.shape[1] for p in kept) <= limit:
                parts = kept[:-1]
        self.restarts += 1
        self.prefilled = self.prefix_kv_len
        self.finished = self.finished[-1:] if len(parts) > 1 else []
        return torch.cat([*parts, turn], dim=1)

    def finish(self, kept: list[Tensor]) -> None:
        """A segment ended with `kept` frame columns: they become the pending assistant turn."""
        self.finished.append(kept)
        self.pending = kept

    def codes_of(self, kept: list[Tensor]) -> Tensor:
        if not kept:
            return torch.zeros((self.builder.num_codebooks, 0), dtype=torch.long)
        return torch.stack(kept, dim=1)[1:]

    @property
    def segments_codes(self) -> list[Tensor]:
        """Kept codes (num_codebooks, frames) of every finished segment still in the context."""
        return [self.codes_of(kept) for kept in self.finished]


def prefill_rows(values: Tensor, plan: SegmentPlan) -> tuple[Tensor, int]:
    """(values, start) to prefill for `plan`: at least MIN_PREFILL_ROWS rows, re-running context
    rows before `plan.start` when the new part is shorter (`values`: the whole context)."""
    start = max(0, min(plan.start, plan.prompt_len - MIN_PREFILL_ROWS))
    return torch.cat([values[:, start : plan.start], plan.chunk], dim=1), start
