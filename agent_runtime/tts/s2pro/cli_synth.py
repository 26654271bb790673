"""`agent-runtime s2pro bench-synth`: time to first audio of the incremental S2-Pro synthesizer.

A simulated LLM streams a reply at a fixed token rate into `S2ProSynthesizer` (random mid-size
Dual-AR + random codec of the full S2-Pro shapes, CPU by default). Measured in one run, interleaved, medians of `--repeats`
(`--baseline-repeats` for the slow baseline):

* floor: the engine's own cost for the first chunk once its text is there: prefill of the first
  segment (voice prefix cached), the first chunk's frames, and that chunk's codec decode;
* incremental: the synthesizer in the loop's path (chunker -> stream continuation -> streaming
  codec); TTFA is from the first LLM token to the first audio chunk;
* sentence-buffered baseline (what published S2-Pro servers do): wait for the whole first
  sentence, generate all its frames, then decode them in one piece.

TTFA also contains the wait for the first clause's text, which depends on the LLM only; it is
printed as "clause text at", and `TTFA - text` is the synthesizer's share, compared with the floor.
"""

from __future__ import annotations

import argparse
import asyncio

from agent_runtime.errors import AgentRuntimeError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-synth",
        help="time to first audio of the incremental synthesizer vs a sentence-buffered baseline (random model)",
        description=(
            "Random mid-size Dual-AR and codec; a simulated LLM streams a reply at each --rates token rate. "
            "Prints TTFA (first LLM token -> first audio) of the incremental synthesizer and of a "
            "sentence-buffered baseline, and the engine's floor (prefill + first chunk + its decode), same run."
        ),
    )
    p.add_argument("--rates", default="30,80", help="simulated LLM tokens/s, comma-separated (default 30,80)")
    p.add_argument("--replies", default="opener,plain",
                   help="simulated replies, comma-separated: opener ('Sure, we are open tomorrow, ...') and/or plain "
                   "('We are open tomorrow from nine until six, ...', a first clause of eight words)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=5, help="floor + incremental runs per rate; medians are printed")
    p.add_argument("--baseline-repeats", type=int, default=2, help="sentence-buffered runs per rate (slow)")
    p.add_argument("--dim", type=int, default=512, help="Dual-AR model dim (slow and fast)")
    p.add_argument("--heads", type=int, default=8, help="attention heads")
    p.add_argument("--kv-heads", type=int, default=2, help="key/value heads")
    p.add_argument("--head-dim", type=int, default=None, help="per-head dim (default: dim / heads; S2-Pro: 128)")
    p.add_argument("--intermediate", type=int, default=1536, help="SwiGLU hidden size")
    p.add_argument("--slow-layers", type=int, default=4, help="slow-AR layers")
    p.add_argument("--fast-layers", type=int, default=2, help="fast-AR layers")
    p.add_argument("--vocab", type=int, default=155_776, help="text vocabulary (the real one by default)")
    p.add_argument("--codebooks", type=int, default=10, help="codebooks per frame")
    p.add_argument("--codebook-size", type=int, default=4096, help="entries per codebook")
    p.add_argument("--prefix-frames", type=int, default=300, help="frames of the (cached) voice reference")
    p.add_argument("--codec", default="full", help="codec shapes: full (S2-Pro's, the default), mid (S2-Pro's "
                   "layout with the decoder convs at 1/4 width) or a codec-config JSON path")  # fmt: skip
    p.add_argument("--first-chunk-frames", type=int, default=2, help="frames in the first codec chunk")
    p.add_argument("--chunk-frames", type=int, default=8, help="frames per later codec chunk")
    p.add_argument("--frames-per-char", type=float, default=1.4,
                   help="speech length the baseline generates per character of its sentence (real speech ~1.4)")
    p.add_argument("--device", default="cpu", help="torch device (cuda needs a GPU)")
    p.add_argument("--compile", action="store_true", help="CUDA only: the fast-AR step as compiled CUDA graphs")
    p.add_argument("--compile-slow", action="store_true",
                   help="CUDA only, experimental: also compile the slow-AR decode step (recompiles at new lengths)")  # fmt: skip
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="Dual-AR precision (the codec stays fp32, as in the reference)")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0, help="weights and sampling seed")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    import torch

    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if not rates or min(rates) <= 0 or min(args.repeats, args.baseline_repeats, args.first_chunk_frames) < 1:
        raise AgentRuntimeError("--rates must be positive, --repeats, --baseline-repeats and --first-chunk-frames >= 1")
    if args.vocab < args.codebook_size + 200:
        raise AgentRuntimeError("--vocab must leave room for the semantic tokens and the specials")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise AgentRuntimeError(f"--device {args.device}: CUDA is not available")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from agent_runtime.tts.s2pro.bench_synth import Bench

    try:
        bench = Bench(args)
    except ValueError as exc:
        raise AgentRuntimeError(str(exc)) from exc
    try:
        print(bench.describe(), flush=True)
        print(bench.report(asyncio.run(bench.run(rates, args.repeats))))
    finally:
        bench.close()
    return 0
