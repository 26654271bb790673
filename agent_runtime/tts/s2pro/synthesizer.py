"""`S2ProSynthesizer`: Fish Audio S2-Pro behind the runtime's streaming TTS contract.

    tts:
      engine: s2pro
      options:
        backend: local                 # the only backend so far (see backend.py for the seam)
        checkpoint: checkpoints/s2-pro # Dual-AR directory (config.json, model.safetensors, tokenizer)
        codec: checkpoints/s2-pro/codec.pth
        voice: alice                   # a voice-library name; omitted: the model's own voice
        seed: 7                        # reproducible replies; omitted: random per reply

A reply's text is cut by `S2ProTextChunker` (first clause first, larger later segments, tags and
numbers kept whole, speaker turns respected); every segment continues the same Dual-AR stream, and
frames go to the streaming codec as they are generated (a small first chunk, larger later ones).
Audio comes out as float32 blocks of one codec frame at the codec's rate (44.1 kHz); the runtime
resamples to the transport's rate. Each `TTSChunk` carries its segment's text, so the session
knows which text was heard when a barge-in cuts the reply.
"""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Any

from agent_runtime.errors import ConfigError
from agent_runtime.tts.base import SpeechOptions, Synthesizer, UtteranceSynth
from agent_runtime.tts.chunker import ChunkerConfig
from agent_runtime.tts.s2pro.backend import BACKENDS, S2ProBackend
from agent_runtime.tts.s2pro.chunking import DEFAULT_CHUNKING, S2ProChunkerConfig, S2ProTextChunker
from agent_runtime.tts.stream import ChunkedSynthesizer

log = logging.getLogger(__name__)

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class S2ProSynthesizer(ChunkedSynthesizer):
    """Streaming S2-Pro TTS on a backend (shared by every session)."""

    name = "s2pro"
    chunker_class = S2ProTextChunker

    def __init__(self, backend: S2ProBackend, chunker_config: ChunkerConfig | dict[str, Any] | None = None) -> None:
        self.backend = backend
        self.sample_rate = backend.sample_rate
        if isinstance(chunker_config, dict):
            try:
                chunker_config = S2ProChunkerConfig(**chunker_config)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"s2pro: chunker_config: {exc}") from None
        self.chunker_config = chunker_config or DEFAULT_CHUNKING

    @classmethod
    def from_options(cls, **options: Any) -> Synthesizer:
        """Build from `tts.options` (see `load_local`'s arguments, plus `backend` and
        `chunker_config`). Unknown keys raise ConfigError. `backend: remote` speaks through speech
        servers (`tts-serve` or sglang-omni): the options are then the `remote` engine's (`urls`,
        `protocol`, ...; see docs/engines.md)."""
        backend_name = options.pop("backend", "local")
        if backend_name not in BACKENDS:
            raise ConfigError(f"s2pro: unknown backend {backend_name!r} (available: {', '.join(BACKENDS)})")
        if backend_name == "remote":
            from agent_runtime.tts.remote.synthesizer import RemoteSynthesizer

            return RemoteSynthesizer.from_options(**options)
        chunker_config = options.pop("chunker_config", None)
        known = [p for p in inspect.signature(load_local).parameters]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown s2pro option(s) {', '.join(unknown)} (known: backend, chunker_config, {', '.join(known)})"
            )
        if options.get("checkpoint") is None or options.get("codec") is None:
            raise ConfigError("s2pro: tts.options needs checkpoint (Dual-AR directory) and codec (codec.pth)")
        return cls(load_local(**options), chunker_config)

    def open_utterance(self) -> UtteranceSynth:
        return self.backend.open_utterance()

    def open_utterance_for(self, options: SpeechOptions) -> UtteranceSynth:
        """Per-stream options, honoured by the backend (the local one: voice, references,
        temperature, top_p, top_k, seed, max_new_tokens; see `LocalBackend.open_utterance_for`);
        a backend without options support refuses every set field."""
        if not options.set_fields():
            return self.backend.open_utterance()
        open_for = getattr(self.backend, "open_utterance_for", None)
        if open_for is None:
            options.refuse_unsupported(frozenset(), f"{self.name} ({self.backend.name} backend)")
        return open_for(options)

    def warmup(self) -> None:
        self.backend.warmup()

    def close(self) -> None:
        self.backend.close()

    def describe(self) -> dict[str, Any]:
        return self.backend.describe()


def load_local(
    checkpoint: str | Path,
    codec: str | Path,
    codec_config: str | Path | None = None,
    voice: str | None = None,
    voice_library: str | Path | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    codec_dtype: str = "fp32",
    temperature: float = 0.8,
    top_p: float = 0.8,
    top_k: int = 30,
    seed: int | None = None,
    first_chunk_frames: int = 2,
    chunk_frames: int = 8,
    max_frames_per_segment: int | None = None,
    max_context: int | None = 8192,
    prefix_cache_size: int = 16,
    compile_fast: bool | str = "auto",
    compile_slow: bool = False,
    attention: str = "auto",
    batch_decode: str = "auto",
    max_batch: int = 16,
    threads: int = 0,
    engine: str = "single",
    max_streams: int = 64,
    max_len: int = 4096,
    prefill_chunk: int = 512,
    graphs: bool = True,
    noise: str = "auto",
) -> S2ProBackend:
    """Load the local backend (blocking: seconds on the real 9 GB checkpoint).

    `checkpoint`: Dual-AR directory, or `random:s2pro[:SEED]` / `random:tiny[:SEED]` for random
    weights of those shapes (benchmarks without the real weights: the speech is noise, the compute is
    the real model's); `codec`: codec.pth (`codec_config`: its architecture JSON, default the S2-Pro
    codec), or `random:full` / `random:mid` / `random:<codec-config.json>` (random weights); `voice`: a voice-library name (`voice_library`: the library root,
    default `$AGENT_RUNTIME_VOICES` or ~/.local/share/agent-runtime/voices), none = no reference;
    `device`: cpu or cuda[:N]; `dtype`: Dual-AR weights, auto = bf16 on CUDA, fp32 on CPU (where
    it is the faster and the bit-exact choice); `codec_dtype`: fp32 or bf16; sampling
    `temperature`/`top_p`/`top_k`; `seed` (None: random per reply); `first_chunk_frames` /
    `chunk_frames`: codec chunk sizes; `max_frames_per_segment` (None: from the text length, at
    most 2048; 0: up to the context end); `max_context`: positions a reply's context may reach
    before it restarts from the voice prefix (None: max_seq_len - 2048); `prefix_cache_size`: voice prefixes kept prefilled; `compile_fast`: the fast AR's
    positions as compiled CUDA graphs, auto = on for CUDA (eager decode is slower than real time
    there; the ~40 s of compiling happen in `warmup`), true (CUDA only) or false;
    `compile_slow`: also compile the slow AR's decode step (CUDA, experimental: recompiles, seconds
    each, the first time a new context-length class is seen); `attention`: slow-AR attention, auto (flash-attn's KV-cache kernel
    where it can run: CUDA, bf16/fp16, flash-attn installed; else sdpa), sdpa or flash;
    `batch_decode`: concurrent replies' decode steps as one batched forward of up to `max_batch`
    streams, auto (on for CUDA, off for CPU), on or off. Only unbatched decode is bit-exact on every
    CPU. Batched, a stream's row goes through a B-row GEMM instead of the one-row GEMV: in fp32 on
    CPU that changes the last bits of the states, and the codes equalled the codes alone in every
    run measured (asserted on the fixture checkpoint by tests/s2pro/test_batch_exactness.py; a near
    tie could still flip one); in bf16 on CPU the codes are exact only where the CPU's bf16 GEMMs are
    row-count invariant (an AMX Xeon: yes; an AMD EPYC with AVX512_BF16: no, 0/4 and 1/8 streams
    identical), so not guaranteed; on CUDA batched bf16 agrees with one stream at a time only on the
    first frames (docs/perf_dual_ar.md, "When batching is exact").
    `threads`: torch intra-op threads of the model thread, where every model and codec operation
    runs (0: torch's count in the loading thread at load time).
    `engine`: single (`S2ProEngine`, the exact reference) or pooled (`serving.PooledEngine`: a slot
    pool of `max_streams` calls of up to `max_len` context positions each, prompts prefilled
    `prefill_chunk` positions at a time, the step captured as CUDA `graphs`, sampling `noise`
    auto/generator/counter; the single engine's compile_*, attention, batch_decode and max_batch
    do not apply to it). See docs/engines.md.
    """
    import torch

    from agent_runtime.tts.s2pro.codec_loader import load_codec
    from agent_runtime.tts.s2pro.engine import S2ProEngine
    from agent_runtime.tts.s2pro.local_backend import LocalBackend, LocalSettings, load_voice
    from agent_runtime.tts.s2pro.sampling import SamplingParams

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"s2pro: device {device!r} but CUDA is not available (use device: cpu)")
    if engine not in ("single", "pooled"):
        raise ConfigError(f"s2pro: engine must be single or pooled; got {engine!r}")
    pool = None
    if engine == "pooled":
        from agent_runtime.tts.s2pro.serving.engine import pool_config

        pool = pool_config(max_streams, max_len, prefill_chunk, graphs, noise)
    if dtype == "auto":
        dtype = "bf16" if device.startswith("cuda") else "fp32"
    if compile_fast not in ("auto", True, False):
        raise ConfigError(f"s2pro: compile_fast must be auto, true or false; got {compile_fast!r}")
    if compile_fast == "auto":
        compile_fast = device.startswith("cuda") and engine != "pooled"
        if compile_fast:
            log.info("s2pro: the fast AR runs as CUDA graphs; the warm-up compiles them (about 40 s)")
    if dtype not in DTYPE_NAMES:
        raise ConfigError(f"s2pro: dtype must be auto, {', '.join(DTYPE_NAMES)}; got {dtype!r}")
    try:
        params = SamplingParams(float(temperature), float(top_p), int(top_k))
    except ValueError as exc:
        raise ConfigError(f"s2pro: {exc}") from None
    settings = LocalSettings(
        params, seed, int(first_chunk_frames), int(chunk_frames), max_frames_per_segment, max_context
    )
    reference = load_voice(voice, voice_library)
    started = time.perf_counter()
    torch_dtype = getattr(torch, DTYPE_NAMES[dtype])
    random_spec = _random_spec(checkpoint)
    engine_obj: Any
    if pool is not None:
        from agent_runtime.tts.s2pro.serving.engine import PooledEngine

        if random_spec is not None:
            model, tokenizer = _random_dual_ar(*random_spec, device, torch_dtype)
            engine_obj = PooledEngine(model, tokenizer, pool, prefix_cache_size=prefix_cache_size, threads=int(threads))
        else:
            engine_obj = PooledEngine.load(
                checkpoint, device=device, dtype=torch_dtype, pool=pool,
                prefix_cache_size=prefix_cache_size, threads=int(threads),
            )  # fmt: skip
    else:
        single = {
            "prefix_cache_size": prefix_cache_size, "compile_fast": compile_fast, "compile_slow": compile_slow,
            "attention": attention, "batch_decode": batch_decode, "max_batch": int(max_batch), "threads": int(threads),
        }  # fmt: skip
        if random_spec is not None:
            engine_obj = S2ProEngine(*_random_dual_ar(*random_spec, device, torch_dtype), **single)
        else:
            engine_obj = S2ProEngine.load(checkpoint, device=device, dtype=torch_dtype, **single)
    try:
        if str(codec).startswith("random:"):
            from agent_runtime.tts.s2pro.bench_synth import codec_config as random_codec_config
            from agent_runtime.tts.s2pro.codec_bench import random_decode_codec
            from agent_runtime.tts.s2pro.codec_loader import parse_dtype

            spec = str(codec).removeprefix("random:")
            if spec not in ("full", "mid") and not Path(spec).is_file():
                raise ConfigError(f"s2pro: codec {codec!r}: random:full, random:mid or random:<codec-config.json>")
            codec_model = random_decode_codec(random_codec_config(spec), device, parse_dtype(codec_dtype))
        else:
            codec_model = load_codec(codec, codec_config, dtype=codec_dtype, device=device)
        backend = LocalBackend(engine_obj, codec_model, reference, settings, voice_library)
    except BaseException:
        engine_obj.close()
        raise
    log.info(
        "S2-Pro local backend: %s on %s (%s), codec %s, voice %s, loaded in %.1f s",
        Path(checkpoint).name, device, dtype, Path(codec).name, voice or "(model's own)", time.perf_counter() - started,
    )  # fmt: skip
    return backend


def _random_spec(checkpoint: str | Path) -> tuple[str, int] | None:
    """("s2pro", seed) for `random:s2pro[:SEED]` (random weights of a `random_model.PRESETS` shape),
    None for a checkpoint directory."""
    text = str(checkpoint)
    if not text.startswith("random:"):
        return None
    from agent_runtime.tts.s2pro.random_model import PRESETS

    preset, _, seed = text.removeprefix("random:").partition(":")
    if preset not in PRESETS or (seed and not seed.isdigit()):
        raise ConfigError(f"s2pro: checkpoint {text!r}: random:<{'|'.join(PRESETS)}>[:SEED] or a checkpoint directory")
    return preset, int(seed or 0)


def _random_dual_ar(preset: str, seed: int, device: str, dtype: Any) -> tuple[Any, Any]:
    """A random-weight Dual-AR of `preset`'s shapes and its stand-in tokenizer (benchmarks without
    the real weights: the speech is noise, the cost per frame is the real model's)."""
    from types import SimpleNamespace

    from agent_runtime.tts.s2pro.random_model import PRESETS, SyntheticTokenizer, random_model

    shapes = PRESETS[preset]
    log.warning("s2pro: random weights of the %s shapes (checkpoint random:%s): the speech is noise", preset, preset)
    model = random_model(SimpleNamespace(**shapes, seed=seed, device=device), dtype)
    return model, SyntheticTokenizer(model.cfg.semantic_begin_id, shapes["codebook_size"])
