"""`agent-runtime s2pro generate` and `agent-runtime s2pro bench-dual-ar`.

Heavy imports (torch, the model) happen inside the handlers so `--help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent_runtime.errors import AgentRuntimeError, ConfigError
from agent_runtime.tts.s2pro.random_model import S2PRO_SHAPES, SyntheticTokenizer, random_model

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def register(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser(
        "generate",
        help="text (+ optional voice reference codes) -> semantic codes with the Dual-AR model",
        description=(
            "Generate S2-Pro codes for TEXT exactly as the reference fish-speech generate_long does for one "
            "batch: the prompt is the system turn (with the reference transcript and codes when given), the "
            "user turn and the assistant header; torch.manual_seed(SEED) is called right before generating; "
            "the last generated frame is dropped (reference trim rule). Writes int64 (num_codebooks, frames)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory (config.json, weights, tokenizer.json)")
    gen.add_argument("--text", required=True, help="text to speak; <|speaker:N|> tags and inline [tags] are kept as text")
    gen.add_argument("--reference-text", default=None, help="transcript of the voice reference")
    gen.add_argument("--reference-codes", default=None, type=Path, help="codes of the voice reference (.npy, (num_codebooks, frames))")
    gen.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="model precision")
    gen.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    gen.add_argument("--seed", type=int, default=42, help="torch.manual_seed right before generation")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, in (0, 2)")
    gen.add_argument("--top-p", type=float, default=0.9, help="nucleus mass on un-tempered logits, in (0, 1]")
    gen.add_argument("--top-k", type=int, default=30, help="keep at most this many candidates")
    gen.add_argument(
        "--max-frames", type=int, default=0, help="frames to generate at most, prefill frame included (0 = to the context end)"
    )
    gen.add_argument(
        "--compile", action="store_true", help="CUDA only: torch.compile the per-frame fast-AR step (not bit-exact)"
    )
    _add_attention_flag(gen)
    gen.add_argument("--out", required=True, type=Path, help="output .npy file")
    gen.set_defaults(func=_generate)

    bench = sub.add_parser(
        "bench-dual-ar",
        help="benchmark the streaming engine against the naive reference on a random model",
        description=(
            "Builds a random Dual-AR model (default ~140M params: dim 512, 8 slow + 4 fast layers, the real "
            "155,776-token vocabulary, 10 codebooks of 4096) and measures, in one run: time to first frame and "
            "steady frames/s of the engine with no voice, with a cold and with a cached voice prefix, and of the "
            "naive reference (full re-prefill, full-length attention over max_seq_len slots, full-vocabulary "
            "logits and sorts); checks that engine and baseline produce identical codes; prints ratios and "
            "peak memory. With --streams N > 1 it then runs N concurrent streams twice, with batched decode "
            "off (one stream after another in each round) and on (one forward per round), and compares."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument(
        "--preset",
        choices=["mid", "s2pro"],
        default="mid",
        help="mid: the ~140M CPU config below; s2pro: the full S2-Pro shapes (4.56B params, for a GPU)",
    )
    bench.add_argument("--dim", type=int, default=512, help="model dim (slow and fast)")
    bench.add_argument("--heads", type=int, default=8, help="attention heads")
    bench.add_argument("--kv-heads", type=int, default=2, help="key/value heads (GQA)")
    bench.add_argument("--head-dim", type=int, default=None, help="per-head dim (default: dim / heads; S2-Pro: 128)")
    bench.add_argument("--intermediate", type=int, default=1536, help="SwiGLU hidden size")
    bench.add_argument("--slow-layers", type=int, default=8, help="slow-AR layers")
    bench.add_argument("--fast-layers", type=int, default=4, help="fast-AR layers")
    bench.add_argument("--vocab", type=int, default=155_776, help="text vocabulary (semantic tokens at its end)")
    bench.add_argument("--codebooks", type=int, default=10, help="codebooks per frame")
    bench.add_argument("--codebook-size", type=int, default=4096, help="entries per codebook")
    bench.add_argument("--max-seq-len", type=int, default=32_768, help="context (the baseline's static cache)")
    bench.add_argument("--prefix-frames", type=int, default=300, help="frames of the voice reference")
    bench.add_argument("--frames", type=int, default=16, help="frames generated per engine measurement")
    bench.add_argument("--naive-frames", type=int, default=4, help="frames generated per (slow) baseline measurement")
    bench.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="model precision")
    bench.add_argument("--device", default="cpu", help="torch device")
    bench.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    bench.add_argument("--seed", type=int, default=0, help="weights and sampling seed")
    bench.add_argument(
        "--streams", type=int, default=1, help="> 1: also run this many concurrent streams, batched decode off and on"
    )
    bench.add_argument("--max-batch", type=int, default=16, help="streams per batched forward (with --streams)")
    bench.add_argument(
        "--compile", action="store_true", help="CUDA only: the fast-AR step as compiled CUDA graphs (compile_fast)"
    )
    bench.add_argument(
        "--compile-slow", action="store_true",
        help="CUDA only, experimental: also compile the slow-AR decode step (compile_slow; recompiles at new lengths)",
    )  # fmt: skip
    _add_attention_flag(bench)
    bench.set_defaults(func=_bench)


def _add_attention_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--attention",
        choices=["auto", "sdpa", "flash"],  # flash_decode.ATTENTION_MODES (not imported: --help stays fast)
        default="auto",
        help="slow-AR attention: flash = flash-attn's KV-cache kernel (CUDA, bf16/fp16, not bit-exact), "
        "sdpa = torch SDPA (the exact CPU path), auto = flash where it can run, else sdpa",
    )


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, DTYPES[name])


def _generate(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from agent_runtime.tts.s2pro.engine import S2ProEngine
    from agent_runtime.tts.s2pro.prompt import VoiceReference, one_batch_text
    from agent_runtime.tts.s2pro.sampling import SamplingParams

    if (args.reference_text is None) != (args.reference_codes is None):
        raise ConfigError("--reference-text and --reference-codes go together")
    if args.max_frames < 0:
        raise ConfigError("--max-frames must be >= 0")
    try:
        params = SamplingParams(args.temperature, args.top_p, args.top_k)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    voice = None
    if args.reference_codes is not None:
        try:
            codes = np.load(args.reference_codes, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{args.reference_codes}: cannot read codes ({exc})") from exc
        voice = VoiceReference.create(args.reference_text, codes)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available")
    engine = S2ProEngine.load(
        args.checkpoint,
        device=args.device,
        dtype=_torch_dtype(args.dtype),
        compile_fast=args.compile,
        attention=args.attention,
    )
    try:
        stream = engine.open_stream(voice=voice, params=params, max_frames=args.max_frames)
        text = one_batch_text(args.text)
        torch.manual_seed(args.seed)
        out = stream.generate(text)
    finally:
        engine.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, out.astype(np.int64))
    print(f"wrote {args.out}: codes {out.shape[0]} x {out.shape[1]} frames")
    return 0




def _bench(args: argparse.Namespace) -> int:
    if args.preset == "s2pro":
        for key, value in S2PRO_SHAPES.items():
            setattr(args, key, value)
    if args.frames < 2 or args.naive_frames < 2:
        raise AgentRuntimeError("--frames and --naive-frames must be >= 2")
    if args.streams < 1 or args.max_batch < 1:
        raise AgentRuntimeError("--streams and --max-batch must be >= 1")
    if args.vocab < args.codebook_size + 200:
        raise AgentRuntimeError("--vocab must leave room for the semantic tokens and the specials")
    _run_benchmark(args, _torch_dtype(args.dtype))
    return 0


# ---- benchmark -------------------------------------------------------------------------------


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_benchmark(args: argparse.Namespace, dtype: Any) -> None:
    import time

    import numpy as np
    import torch

    from agent_runtime.tts.s2pro.engine import S2ProEngine, naive_generate
    from agent_runtime.tts.s2pro.prompt import VoiceReference
    from agent_runtime.tts.s2pro.sampling import SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise AgentRuntimeError(f"--device {args.device}: CUDA is not available")
    model = random_model(args, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    tok = SyntheticTokenizer(model.cfg.semantic_begin_id, args.codebook_size)
    engine = S2ProEngine(
        model, tok, attention=args.attention, compile_fast=args.compile, compile_slow=args.compile_slow
    )
    rng = np.random.default_rng(args.seed)
    ref_codes = rng.integers(0, 1024, size=(args.codebooks, args.prefix_frames), dtype=np.int64)
    ref_codes[0] = rng.integers(0, args.codebook_size, size=args.prefix_frames)
    voice = VoiceReference.create("<|speaker:0|>This is the reference transcript of the voice prompt.", ref_codes)
    text = "<|speaker:0|>Hello! This is a benchmark sentence for the streaming engine, with [laugh] a tag."
    params = SamplingParams(temperature=0.8, top_p=0.8, top_k=30)
    print(
        f"random Dual-AR: {n_params / 1e6:.1f}M params, dim {args.dim}, {args.slow_layers}+{args.fast_layers} layers, "
        f"vocab {args.vocab}, {args.codebooks}x{args.codebook_size} codebooks, max_seq_len {args.max_seq_len}, "
        f"{str(dtype).removeprefix('torch.')} on {args.device}, {torch.get_num_threads()} threads, "
        f"slow-AR attention {engine.attention}"
        + (", fast-AR step compiled (CUDA graphs)" if args.compile else "")
        + (", slow-AR decode compiled" if args.compile_slow else "")
    )

    def clock() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def since(t: tuple[float, float]) -> tuple[float, float]:
        now = clock()
        return now[0] - t[0], now[1] - t[1]

    def show(kind: str, label: str, prompt_len: int, ttff: tuple[float, float], per_frame: tuple[float, float], extra: str) -> None:
        print(
            f"  {kind:<6} {label:<22} prompt {prompt_len:5d}  first frame {ttff[0] * 1e3:8.1f} ms "
            f"(cpu {ttff[1] * 1e3:8.1f})  per frame {per_frame[0] * 1e3:7.1f} ms (cpu {per_frame[1] * 1e3:7.1f}) "
            f"= {1 / per_frame[0]:5.2f} frames/s  {extra}"
        )

    Result = tuple[tuple[float, float], tuple[float, float], np.ndarray]

    def run_engine(label: str, voice_ref: VoiceReference | None, frames: int) -> Result:
        t0 = clock()
        stream = engine.open_stream(voice=voice_ref, params=params, seed=args.seed, max_frames=frames + 1)
        it = stream.add_text(text)
        next(it)
        ttff = since(t0)
        t1 = clock()
        n = sum(1 for _ in it)
        spent = since(t1)
        per_frame = (spent[0] / n, spent[1] / n)
        codes = stream.segments_codes[-1].numpy()
        extra = (
            f"KV {stream.cache.nbytes() / 2**20:6.1f} MiB  exact-sort fallbacks {stream.stats.fallbacks}/{stream.stats.draws}"
        )
        show("engine", label, stream.context_length, ttff, per_frame, extra)
        return ttff, per_frame, codes

    def breakdown(voice_ref: VoiceReference | None, reps: int = 5) -> None:
        """CPU ms of the parts of one decode frame (slow AR, head + 2 draws, fast AR + 9 draws)."""
        from agent_runtime.tts.s2pro.engine import _fast_codes

        stream = engine.open_stream(voice=voice_ref, params=params, seed=args.seed, max_frames=4)
        it = stream.add_text(text)
        next(it)
        seg = stream._segment
        assert seg is not None and seg.frame is not None
        pos = seg.prompt_len

        def cpu(fn: Any) -> float:
            best = float("inf")
            for _ in range(reps):
                t = time.process_time()
                fn()
                best = min(best, time.process_time() - t)
            return best * 1e3

        with torch.inference_mode():
            normed, fast_in = engine._decode(stream.cache, seg.frame, pos)
            slow = cpu(lambda: engine._decode(stream.cache, seg.frame, pos))
            head = cpu(lambda: engine._slow_token(normed, None, stream.sampler, stream.generator, stream.stats))
            fast = cpu(
                lambda: _fast_codes(
                    model, fast_in, tok.semantic_begin_id, engine._shared_fast_caches or stream.fast_caches,
                    stream._fast_sample, engine._fast_stepper,
                )
            )
        it.close()
        print(f"  per-frame breakdown (best of {reps}, cpu ms): slow AR {slow:.1f}, head + 2 draws {head:.1f}, fast AR + 9 draws {fast:.1f}")

    def run_naive(label: str, voice_ref: VoiceReference | None, frames: int) -> Result:
        prompt = engine.builder.build(text, voice_ref)
        gen = torch.Generator(device=args.device)
        gen.manual_seed(args.seed)
        stamps: list[tuple[float, float]] = []
        t0 = clock()
        full = naive_generate(model, prompt, tok.im_end_id, params, frames + 1, gen, on_frame=lambda i: stamps.append(clock()))
        ttff = (stamps[0][0] - t0[0], stamps[0][1] - t0[1])
        n = len(stamps) - 1
        per_frame = ((stamps[-1][0] - stamps[0][0]) / n, (stamps[-1][1] - stamps[0][1]) / n)
        codes = full[1:, prompt.shape[1] : -1].numpy()
        cfg = model.cfg
        kv = cfg.slow.n_layer * 2 * cfg.cache_len * cfg.slow.n_local_heads * cfg.slow.head_dim
        show("naive", label, prompt.shape[1], ttff, per_frame, f"KV {kv * model.embeddings.weight.element_size() / 2**20:6.1f} MiB")
        return ttff, per_frame, codes

    print("engine (prefill once, KV sized to need, windowed head + sampling, prefix cache):")
    run_engine("warm-up", None, 2)
    e_none = run_engine("no voice", None, args.frames)
    e_cold = run_engine(f"voice {args.prefix_frames}f, cold", voice, args.frames)
    e_hot = run_engine(f"voice {args.prefix_frames}f, cached", voice, args.frames)
    breakdown(voice)
    rss_engine = _peak_rss_mib()
    print(f"  prefix cache: {engine.prefix_hits} hits, {engine.prefix_misses} misses; peak RSS so far {rss_engine:.0f} MiB")
    print("naive reference (full re-prefill, full-length attention, full-vocabulary logits + sorts):")
    n_none = run_naive("no voice", None, args.naive_frames)
    n_voice = run_naive(f"voice {args.prefix_frames}f", voice, args.naive_frames)
    rss_all = _peak_rss_mib()
    k = min(n_voice[2].shape[1], e_hot[2].shape[1])
    exact = np.array_equal(n_voice[2][:, :k], e_hot[2][:, :k]) and np.array_equal(n_voice[2][:, :k], e_cold[2][:, :k])
    k0 = min(n_none[2].shape[1], e_none[2].shape[1])
    exact = exact and np.array_equal(n_none[2][:, :k0], e_none[2][:, :k0])
    print("ratios (naive / engine; wall clock, CPU time in brackets):")

    def ratio(a: tuple[float, float], b: tuple[float, float]) -> str:
        return f"{a[0] / b[0]:6.2f}x ({a[1] / b[1]:6.2f}x)"

    print(f"  decode frames/s, voice         {ratio(n_voice[1], e_hot[1])}")
    print(f"  decode frames/s, no voice      {ratio(n_none[1], e_none[1])}")
    print(f"  first frame, voice cached      {ratio(n_voice[0], e_hot[0])}")
    print(f"  first frame, voice cold        {ratio(n_voice[0], e_cold[0])}")
    print(f"  first frame, no voice          {ratio(n_none[0], e_none[0])}")
    print(
        f"  cached {args.prefix_frames}-frame voice prefix: first frame {1e3 * (e_hot[0][0] - e_none[0][0]):+.1f} ms "
        f"(cpu {1e3 * (e_hot[0][1] - e_none[0][1]):+.1f} ms) vs no voice"
    )
    print(f"bit-exact engine vs naive (first {k} frames, same seed): {'yes' if exact else 'NO'}")
    print(f"peak RSS: {rss_engine:.0f} MiB after engine runs, {rss_all:.0f} MiB after naive runs")
    if args.streams > 1:
        _bench_streams(args, model, tok, voice, text, params)


def _bench_streams(args: argparse.Namespace, model: Any, tok: Any, voice: Any, text: str, params: Any) -> None:
    """`--streams N`: N concurrent async streams (cached voice, seeds seed..seed+N-1, `--frames`
    decode frames each) on an engine with batched decode off, then on; aggregate and per-stream rates."""
    import asyncio
    import time

    import numpy as np

    from agent_runtime.tts.s2pro.batched import BatchStats
    from agent_runtime.tts.s2pro.engine import S2ProEngine

    n = args.streams

    async def one(engine: S2ProEngine, i: int, frames: int) -> tuple[list[float], np.ndarray]:
        stream = engine.open_stream(voice=voice, params=params, seed=args.seed + i, max_frames=frames + 2)
        stamps = [time.perf_counter() async for _ in stream.add_text_async(text)]
        return stamps, stream.segments_codes[-1].numpy()

    async def run_all(engine: S2ProEngine, frames: int) -> list[tuple[list[float], np.ndarray]]:
        return await asyncio.gather(*(one(engine, i, frames) for i in range(n)))

    print(f"{n} concurrent streams (cached voice, {args.frames} decode frames each after the first):")
    codes: dict[str, list[np.ndarray]] = {}
    rates: dict[str, tuple[float, float]] = {}
    for mode in ("off", "on"):
        engine = S2ProEngine(model, tok, attention=args.attention, batch_decode=mode, max_batch=args.max_batch)
        engine.prepare_voice(voice)
        asyncio.run(run_all(engine, 2))  # warm-up
        engine.batch_stats = BatchStats()
        cpu0 = time.process_time()
        results = asyncio.run(run_all(engine, args.frames))
        cpu = time.process_time() - cpu0
        engine.close(wait=True)
        timed = [stamps for stamps, _ in results if len(stamps) > 1]  # (<|im_end|> may end one early)
        decoded = sum(len(stamps) - 1 for stamps in timed)
        span = max(s[-1] for s in timed) - min(s[0] for s in timed)
        per_stream = sum((s[-1] - s[0]) / (len(s) - 1) for s in timed) / len(timed)
        rates[mode] = (decoded / span, per_stream)
        codes[mode] = [c for _, c in results]
        sizes = ", ".join(f"{size}x{count}" for size, count in sorted(engine.batch_stats.sizes.items()))
        print(
            f"  batched decode {mode:<3}  aggregate {decoded / span:6.2f} frames/s  per stream {per_stream * 1e3:7.1f} ms/frame"
            f"  (cpu {cpu / decoded * 1e3:6.1f} ms per frame)  batches: {sizes or 'none'}"
        )
    same = sum(np.array_equal(a, b) for a, b in zip(codes["off"], codes["on"], strict=True))
    print(
        f"  batched / unbatched: aggregate frames/s {rates['on'][0] / rates['off'][0]:5.2f}x, "
        f"per-stream time per frame {rates['on'][1] / rates['off'][1]:5.2f}x; "
        f"codes identical in {same}/{n} streams (batched GEMMs round differently, so a near-tie may flip)"
    )
