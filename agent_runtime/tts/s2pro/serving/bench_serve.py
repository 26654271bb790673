"""`agent-runtime s2pro bench-serve`: the pooled engine under calls arriving at random.

A random-weight Dual-AR (full S2-Pro shapes by default; `--preset tiny` for a quick CPU run)
serves calls arriving as a Poisson process, at most N at once for each N of `--concurrency`.
Each call speaks a reply of 2-3 segments whose text arrives as an LLM writes it (`--words-per-s`);
a segment starts once its text is there and the previous one has ended. Per N it prints aggregate
and per-stream frames/s, RTF p50/p95 (generation time / audio time; a frame is 2048 samples at
44.1 kHz = 46.44 ms), time to first audio from a segment's start p50/p95 (and for first
segments, from the call's admission), the decoder's step time split, the batched codec's time,
peak device memory, and
once: the pool size that fits, and the floor (weight bytes / device copy bandwidth measured in
the same run) with the ratio of one stream's frame time to it.

Frames are consumed by future callbacks on the model thread (as the local backend does), so the
event loop only sees segment ends: the figures are the engine's, not asyncio's. With a codec
(`--codec`, random weights; the full S2-Pro codec by default for `--preset s2pro`) every frame is
pushed to its call's streaming codec decoder through the scheduler, which decodes the chunks of
all calls in batched forwards (codec_batch.py), and first audio is the first decoded chunk, as the
local backend speaks it; without one (`--codec none`), first audio is the first frame.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from agent_runtime.errors import AgentRuntimeError

FRAME_S = 2048 / 44_100  # one codec frame of S2-Pro audio (spec: 21.53 frames/s)
SENTENCES = [
    "Sure,", "Well,", "Okay, let me see.", "We are open tomorrow from nine until six.",
    "Your order shipped this morning and should arrive on Thursday.",
    "Is there anything else I can help you with today?", "I have moved your appointment to Monday at ten.",
    "The total comes to forty two dollars and fifty cents.", "Thanks for waiting, I found your booking.",
]  # fmt: skip
log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-serve",
        help="the pooled engine under Poisson call arrivals up to N concurrent (random model)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", choices=["tiny", "s2pro"], default="s2pro", help="model shapes (random weights)")
    p.add_argument("--device", default="cuda", help="torch device")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="model precision")
    p.add_argument("--concurrency", nargs="+", default=["1", "8", "32", "64", "128", "160", "max"],
                   help="concurrent-call caps to run, in order; 'max' = the pool size")  # fmt: skip
    p.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per N")
    p.add_argument("--calls", type=int, default=0, help="> 0: calls per N instead of --duration")
    p.add_argument("--max-streams", type=int, default=0,
                   help="pool slots (0: on CUDA what fits in free memory, at most 256; on CPU the largest N)")  # fmt: skip
    p.add_argument("--max-len", type=int, default=1024, help="context positions per slot")
    p.add_argument("--prefill-chunk", type=int, default=256, help="prompt positions per prefill chunk")
    p.add_argument("--no-graphs", action="store_true", help="run the step eagerly (no CUDA graphs)")
    p.add_argument("--noise", choices=["auto", "generator", "counter"], default="auto", help="sampling noise")
    p.add_argument("--profile", action="store_true", help="eager steps with the attention/GEMM/sampling split")
    p.add_argument("--prefix-frames", type=int, default=200, help="frames of the voice reference (cached prefix)")
    p.add_argument("--frames-per-word", type=float, default=6.0, help="frames a segment generates per word")
    p.add_argument("--words-per-s", type=float, default=30.0, help="how fast the simulated LLM writes")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the model thread (0: default)")
    p.add_argument("--seed", type=int, default=0, help="weights, arrivals and sampling seed")
    p.add_argument("--codec", default="auto",
                   help="codec with random weights: full (S2-Pro's), mid, none, or a codec-config JSON path; "
                   "auto: full for --preset s2pro, none for tiny")
    p.add_argument("--first-chunk-frames", type=int, default=2, help="frames in a reply's first codec chunk")
    p.add_argument("--chunk-frames", type=int, default=8, help="frames per later codec chunk")
    p.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    p.set_defaults(func=_main)


@dataclass
class CallRecord:
    admitted: float = 0.0
    wait_s: float = 0.0  # arrival -> admission (the concurrency cap)
    frames: int = 0
    gen_s: float = 0.0  # time generating (sum over segments)
    ttfa: list[float] = field(default_factory=list)  # per segment, from its start
    first_ttfa: float | None = None  # first segment: from admission (its text arriving)
    refused: bool = False


def _q(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))]


class _Segment:
    """One segment consumed by future callbacks on the model thread; with a codec `decoder`, each
    frame is pushed to it (batched with the other calls' by the scheduler) and the segment ends
    after its flush."""

    def __init__(self, engine: Any, stream: Any, seg: Any, loop: asyncio.AbstractEventLoop,
                 decoder: Any = None, limits: np.ndarray | None = None) -> None:  # fmt: skip
        self.engine, self.stream, self.seg = engine, stream, seg
        self.decoder, self.limits = decoder, limits
        self.started = time.perf_counter()
        self.first: float | None = None  # first audio: first decoded chunk (first frame without a codec)
        self.frames = 0
        self.done: asyncio.Future[float] = loop.create_future()
        self._loop = loop

    def start(self) -> None:
        self._chain(self.engine.scheduler.submit_step(self.seg))

    def _chain(self, fut: Future[Any]) -> None:
        fut.add_done_callback(self._after)

    def _after(self, fut: Future[Any]) -> None:
        exc = fut.exception()
        frame = None if exc is not None else fut.result()
        if frame is None:
            if exc is None and self.decoder is not None:
                self.engine.scheduler.submit(self.decoder.flush).add_done_callback(self._flushed)
                return
            self._loop.call_soon_threadsafe(self._finish, exc, time.perf_counter())
            return
        self.frames += 1
        if self.decoder is None:
            if self.first is None:
                self.first = time.perf_counter()
        else:
            codes = np.minimum(np.asarray(frame, dtype=np.int64), self.limits)[:, None]
            self.engine.scheduler.submit_codec(self.decoder, codes).add_done_callback(self._decoded)
        self._chain(self.engine.scheduler.submit_step(self.seg))

    def _decoded(self, fut: Future[Any]) -> None:
        if fut.exception() is None and fut.result() and self.first is None:
            self.first = time.perf_counter()

    def _flushed(self, fut: Future[Any]) -> None:
        exc = fut.exception()
        if exc is None and fut.result() and self.first is None:
            self.first = time.perf_counter()
        self._loop.call_soon_threadsafe(self._finish, exc, time.perf_counter())

    def _finish(self, exc: BaseException | None, end: float) -> None:
        if not self.done.done():
            self.done.set_exception(exc) if exc is not None else self.done.set_result(end)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from agent_runtime.tts.s2pro.cli_generate import _torch_dtype
        from agent_runtime.tts.s2pro.prompt import VoiceReference
        from agent_runtime.tts.s2pro.random_model import (
            S2PRO_SHAPES,
            TINY_SHAPES,
            SyntheticTokenizer,
            random_model,
        )
        from agent_runtime.tts.s2pro.sampling import SamplingParams
        from agent_runtime.tts.s2pro.serving.contract import PoolConfig
        from agent_runtime.tts.s2pro.serving.engine import PooledEngine

        self.args = args
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise AgentRuntimeError(f"--device {args.device}: CUDA is not available")
        if args.threads:
            torch.set_num_threads(args.threads)
        shapes = TINY_SHAPES if args.preset == "tiny" else S2PRO_SHAPES
        ns = SimpleNamespace(**shapes, seed=args.seed, device=args.device)
        self.dtype = _torch_dtype(args.dtype)
        started = time.perf_counter()
        print(f"[bench-serve] drawing random weights of the {args.preset} shapes on {args.device} ({args.dtype}) ...",
              flush=True)  # fmt: skip
        self.model = random_model(ns, self.dtype)
        from agent_runtime.tts.s2pro.serving.decoder import PooledDecoder, parameter_bytes

        self.shapes = shapes
        self.cuda = self.model.device.type == "cuda"
        self.weight_bytes = parameter_bytes(self.model)
        tok = SyntheticTokenizer(self.model.cfg.semantic_begin_id, shapes["codebook_size"])
        ladder = [c for c in args.concurrency if c != "max"]
        try:
            numeric = [int(c) for c in ladder]
        except ValueError:
            raise AgentRuntimeError(f"--concurrency takes integers and 'max'; got {args.concurrency}") from None
        if any(n < 1 for n in numeric):
            raise AgentRuntimeError("--concurrency values must be >= 1")
        self.fits = self._fits(PooledDecoder)
        max_streams = args.max_streams or (min(self.fits, 256) if self.cuda else max(numeric or [1]))
        if max_streams < 1:
            raise AgentRuntimeError("no slot fits in the free device memory: lower --max-len")
        self.ladder = [min(n, max_streams) for n in numeric] + ([max_streams] if "max" in args.concurrency else [])
        self.ladder = list(dict.fromkeys(self.ladder))
        pool = PoolConfig(max_streams=max_streams, max_len=args.max_len, prefill_chunk=args.prefill_chunk,
                          graphs=not args.no_graphs, noise=args.noise)  # fmt: skip
        profile = args.profile

        def factory(model: Any, cfg: Any, im_end: int) -> Any:
            return PooledDecoder(model, cfg, im_end_id=im_end, profile=profile)

        graphs = "capturing its CUDA graphs" if self.cuda and not args.no_graphs else "no graphs"
        print(f"[bench-serve] weights ready after {time.perf_counter() - started:.1f} s; pool of {max_streams} slots "
              f"x {args.max_len} positions, {graphs} ...", flush=True)  # fmt: skip
        self.engine = PooledEngine(self.model, tok, pool, threads=args.threads, decoder_factory=factory)
        self.codec, self.codec_name, self.limits = self._codec(shapes["codebooks"])
        self.setup_s = time.perf_counter() - started
        rng = np.random.default_rng(args.seed)
        n_cb, cb = shapes["codebooks"], shapes["codebook_size"]
        codes = rng.integers(0, cb, size=(n_cb, args.prefix_frames))
        self.voice = VoiceReference.create("<|speaker:0|>This is the reference transcript of the voice.", codes, "ref")
        self.params = SamplingParams(temperature=0.8, top_p=0.8, top_k=30)
        self.rng = random.Random(args.seed)
        self.results: list[dict[str, Any]] = []
        self._call_s = 20 / args.words_per_s  # a call's mean duration (updated as calls end): its text time

    def _codec(self, codebooks: int) -> tuple[Any, str, np.ndarray | None]:
        """The random-weight codec of --codec (None for none), its name and each codebook's size."""
        spec = self.args.codec
        if spec == "auto":
            spec = "full" if self.args.preset == "s2pro" else "none"
        if spec == "none":
            return None, "none", None
        from agent_runtime.tts.s2pro.bench_synth import codec_config
        from agent_runtime.tts.s2pro.codec_bench import random_decode_codec

        if spec not in ("full", "mid") and not Path(spec).is_file():
            raise AgentRuntimeError(f"--codec {spec}: not full, mid, none or a codec-config JSON file")
        config = codec_config(spec)
        codec = random_decode_codec(config, self.args.device, self.dtype, seed=self.args.seed)
        if codec.num_codebooks != codebooks:
            raise AgentRuntimeError(f"--codec {spec}: {codec.num_codebooks} codebooks, the model has {codebooks}")
        q = config.quantizer
        sizes = [q.semantic_codebook_size] + [q.residual_codebook_size] * (codebooks - 1)
        return codec, config.name, np.asarray(sizes, dtype=np.int64) - 1

    def _fits(self, decoder_cls: Any) -> int:
        """Slots of --max-len that fit in the free device memory (CPU: in the host's available memory)."""
        import torch

        if self.cuda:
            free, _ = torch.cuda.mem_get_info(self.model.device)
        else:
            try:
                import psutil

                free = psutil.virtual_memory().available
            except ImportError:
                free = 8 << 30
        return int(decoder_cls.slots_for_memory(self.model.cfg, self.args.max_len, int(free * 0.85), self.dtype))

    def describe(self) -> str:
        import torch

        a = self.args
        s = self.shapes
        device = torch.cuda.get_device_name(self.model.device) if self.cuda else f"CPU ({torch.get_num_threads()} threads)"
        return (
            f"random Dual-AR {a.preset}: {self.weight_bytes / 2**30:.2f} GiB of {a.dtype} weights (dim {s['dim']}, "
            f"{s['slow_layers']}+{s['fast_layers']} layers, {s['codebooks']}x{s['codebook_size']} codebooks) on {device}; "
            f"pool {self.engine.pool.max_streams} slots x {a.max_len} positions "
            f"({self.fits} would fit), prefill chunk {a.prefill_chunk}, graphs "
            f"{'off' if a.no_graphs or not self.cuda else 'on'}, noise {a.noise}; codec: {self.codec_name}"
            + (f" (chunks of {a.first_chunk_frames} then {a.chunk_frames} frames)" if self.codec is not None else "")
            + f"; set up in {self.setup_s:.1f} s"
        )

    def floor(self) -> dict[str, float]:
        """Device copy bandwidth (a big tensor copy, best of 5) and the weight-read floor per frame."""
        import torch

        n = max(64 << 20, min(self.weight_bytes, 2 << 30)) // 4
        src = torch.empty(n, dtype=torch.float32, device=self.model.device).uniform_()
        dst = torch.empty_like(src)
        best = float("inf")
        for _ in range(5):
            if self.cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            dst.copy_(src)
            if self.cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        del src, dst
        bw = 2 * n * 4 / best  # bytes read + written per second
        read = self.engine.decoder.step_read_bytes()
        return {"copy_gbps": bw / 1e9, "weight_gib": self.weight_bytes / 2**30, "floor_ms": self.weight_bytes / bw * 1e3,
                "step_read_gib": read / 2**30, "read_floor_ms": read / bw * 1e3}

    def _reply(self) -> list[tuple[str, int]]:
        """2-3 segments (text, words): a short opener, then sentences."""
        n = self.rng.choice((2, 3))
        segs = [self.rng.choice(SENTENCES[:3]), *self.rng.sample(SENTENCES[3:], n - 1)]
        return [(t, len(t.split())) for t in segs]

    async def _call(self, rec: CallRecord, seed: int) -> None:
        from agent_runtime.tts.s2pro.serving.contract import PoolFull

        loop = asyncio.get_running_loop()
        eng = self.engine
        try:
            stream = await eng.open_stream_async(self.voice, params=self.params, seed=seed)
        except PoolFull:
            rec.refused = True
            return
        rec.admitted = time.perf_counter()
        decoder = None
        if self.codec is not None:
            from agent_runtime.tts.s2pro.streaming import CodecStreamDecoder

            decoder = CodecStreamDecoder(self.codec, self.args.first_chunk_frames, self.args.chunk_frames)
        try:
            words_so_far = 0
            prev_end = rec.admitted
            for i, (text, words) in enumerate(self._reply()):
                words_so_far += words
                text_at = rec.admitted + words_so_far / self.args.words_per_s
                await asyncio.sleep(max(0.0, text_at - time.perf_counter()))
                frames = max(2, round(words * self.args.frames_per_word)) + 1
                seg = await asyncio.wrap_future(eng.scheduler.submit(lambda t=text, f=frames: stream.start_segment(t, max_frames=f)))
                run = _Segment(eng, stream, seg, loop, decoder, self.limits)
                run.start()
                end = await run.done
                stream.end_segment(seg)
                if run.first is not None:
                    rec.ttfa.append(run.first - run.started)
                    if i == 0:
                        rec.first_ttfa = run.first - max(text_at, prev_end)
                rec.frames += run.frames
                rec.gen_s += end - run.started
                prev_end = end
        finally:
            stream.close()

    async def run_level(self, n: int) -> dict[str, Any]:
        import torch

        a = self.args
        sem = asyncio.Semaphore(n)
        records: list[CallRecord] = []
        tasks: list[asyncio.Task[None]] = []
        eng = self.engine
        eng.decoder.times.reset()
        eng.scheduler.reset_stats()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.model.device)
        snap0 = eng.stats()
        t0 = time.perf_counter()

        async def one(i: int, arrived: float) -> None:
            async with sem:
                rec = CallRecord(wait_s=time.perf_counter() - arrived)
                records.append(rec)
                await self._call(rec, a.seed * 1_000_003 + n * 10_007 + i)
                if not rec.refused:
                    self._call_s = 0.8 * self._call_s + 0.2 * (time.perf_counter() - rec.admitted)

        i = 0
        deadline = t0 + a.duration
        while (a.calls and i < a.calls) or (not a.calls and time.perf_counter() < deadline):
            tasks.append(asyncio.create_task(one(i, time.perf_counter())))
            i += 1
            # Poisson arrivals at the rate that keeps n calls busy (calls last `_call_s` on average)
            delay = self.rng.expovariate(n / max(self._call_s, 0.01))
            if not a.calls:
                delay = min(delay, max(0.0, deadline - time.perf_counter()))
            await asyncio.sleep(delay)
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        snap = eng.stats()
        t = eng.decoder.times
        done = [r for r in records if not r.refused and r.frames]
        rtf = [r.gen_s / (r.frames * FRAME_S) for r in done]
        per_stream = [r.frames / r.gen_s for r in done if r.gen_s > 0]
        ttfa = [x for r in done for x in r.ttfa]
        first = [r.first_ttfa for r in done if r.first_ttfa is not None]
        steps = max(1, t.steps)
        frames = sum(r.frames for r in done)
        return {
            "n": n, "calls": len(done), "refused": sum(r.refused for r in records), "wall_s": wall,
            "frames": frames, "agg_fps": frames / wall, "stream_fps_p50": _q(per_stream, 0.5),
            "rtf_p50": _q(rtf, 0.5), "rtf_p95": _q(rtf, 0.95),
            "ttfa_ms_p50": _q(ttfa, 0.5) * 1e3, "ttfa_ms_p95": _q(ttfa, 0.95) * 1e3,
            "first_ttfa_ms_p50": _q(first, 0.5) * 1e3, "first_ttfa_ms_p95": _q(first, 0.95) * 1e3,
            "admission_wait_ms_p95": _q([r.wait_s for r in records], 0.95) * 1e3,
            "steps": t.steps, "rows_per_step": t.frames / steps, "step_ms": t.total_s / steps * 1e3,
            "attention_ms": t.attention_s / steps * 1e3, "gemm_ms": t.gemm_s / steps * 1e3,
            "sampling_ms": t.sampling_s / steps * 1e3, "host_ms": t.host_s / steps * 1e3,
            "extra_ms": {k: v / steps * 1e3 for k, v in t.extra.items()},
            "prefill_chunks": snap.prefill_chunks - snap0.prefill_chunks,
            "prefill_forwards": snap.prefill_forwards - snap0.prefill_forwards,
            "step_ms_p50": snap.step.p50 * 1e3, "active_p50": snap.active.p50,
            "prefill_wait_ms_p50": snap.prefill_wait.p50 * 1e3, "prefill_wait_ms_p95": snap.prefill_wait.p95 * 1e3,
            "call_wait_ms_p95": snap.call_wait.p95 * 1e3,
            "codec_ms_p50": snap.codec.p50 * 1e3 if self.codec is not None else None,
            "codec_ms_per_frame": snap.codec.mean * snap.codec.count / max(1, frames) * 1e3 if self.codec is not None else None,
            "codec_rows_per_forward": (snap.codec_rows - snap0.codec_rows) / max(1, snap.codec_forwards - snap0.codec_forwards),
            "gpu_mem_gib": torch.cuda.max_memory_allocated(self.model.device) / 2**30 if self.cuda else None,
        }  # fmt: skip

    async def run(self, floor: dict[str, float]) -> None:
        await self._warmup()
        for n in self.ladder:
            print(f"[bench-serve] N={n}: calls arriving ({self._span()}) ...", flush=True)
            r = await self.run_level(n)
            self.results.append(r)
            print(
                f"[bench-serve] N={n} done: {r['calls']} calls, {r['frames']} frames in {r['wall_s']:.1f} s, "
                f"{r['agg_fps']:.0f} frames/s, RTF p95 {r['rtf_p95']:.3f}, first audio p95 {r['first_ttfa_ms_p95']:.0f} ms, "
                f"prefill wait p50/p95 {r['prefill_wait_ms_p50']:.0f}/{r['prefill_wait_ms_p95']:.0f} ms, "
                f"{r['prefill_chunks']} chunks in {r['prefill_forwards']} prefill forwards, {r['steps']} steps",
                flush=True,
            )
            self.write_json(floor)  # after every level: a run cut short keeps the levels it finished

    def write_json(self, floor: dict[str, float]) -> None:
        a = self.args
        if a.json is None:
            return
        meta = {"describe": self.describe(), "floor": floor, "fits": self.fits, "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "func"}}  # fmt: skip
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"meta": meta, "levels": self.results}, indent=2, default=str) + "\n")

    def _span(self) -> str:
        a = self.args
        return f"{a.calls} calls" if a.calls else f"{a.duration:g} s"

    async def _warmup(self) -> None:
        """One short call (prefix cache, first-use costs) before measuring."""
        eng = self.engine
        eng.prepare_voice(self.voice)
        stream = await eng.open_stream_async(self.voice, params=self.params, seed=1)
        try:
            async for _ in stream.add_text_async("Hello there.", max_frames=4):
                pass
        finally:
            stream.close()

    def table(self, floor: dict[str, float]) -> str:
        head = (f"{'N':>5} {'calls':>6} {'agg f/s':>8} {'strm f/s':>8} {'RTF p50':>8} {'RTF p95':>8} "
                f"{'TTFA p50':>9} {'TTFA p95':>9} {'1st p50':>8} {'1st p95':>8} {'step ms':>8} {'rows':>6} "
                f"{'attn':>6} {'gemm':>6} {'samp':>6} {'host':>6} {'codec':>6} {'rows':>5} {'mem GiB':>8}")  # fmt: skip
        lines = [head]
        for r in self.results:
            mem = f"{r['gpu_mem_gib']:.1f}" if r["gpu_mem_gib"] is not None else "-"
            codec = "-" if r["codec_ms_per_frame"] is None else f"{r['codec_ms_per_frame']:.2f}"
            codec_rows = "-" if r["codec_ms_per_frame"] is None else f"{r['codec_rows_per_forward']:.1f}"
            lines.append(
                f"{r['n']:>5} {r['calls']:>6} {r['agg_fps']:>8.1f} {r['stream_fps_p50']:>8.1f} {r['rtf_p50']:>8.3f} "
                f"{r['rtf_p95']:>8.3f} {r['ttfa_ms_p50']:>7.1f}ms {r['ttfa_ms_p95']:>7.1f}ms {r['first_ttfa_ms_p50']:>6.1f}ms "
                f"{r['first_ttfa_ms_p95']:>6.1f}ms {r['step_ms']:>8.2f} {r['rows_per_step']:>6.1f} {r['attention_ms']:>6.2f} "
                f"{r['gemm_ms']:>6.2f} {r['sampling_ms']:>6.2f} {r['host_ms']:>6.2f} {codec:>6} {codec_rows:>5} {mem:>8}"
            )
        one = next((r for r in self.results if r["n"] == 1), None)
        ratio = (f"{one['step_ms']:.3f} ms per frame = {one['step_ms'] / floor['floor_ms']:.2f}x the floor, "
                 f"{one['step_ms'] / floor['read_floor_ms']:.2f}x the read floor") if one else "(no N=1 run)"
        lines.append(
            f"floor: {floor['weight_gib']:.2f} GiB of weights / {floor['copy_gbps']:.0f} GB/s copy bandwidth = "
            f"{floor['floor_ms']:.3f} ms per frame; read floor (what a batch-1 step reads: the fast AR's weights once per "
            f"codebook) {floor['step_read_gib']:.2f} GiB = {floor['read_floor_ms']:.3f} ms; one stream: {ratio}"
        )
        lines.append(f"pool: {self.engine.pool.max_streams} slots of {self.args.max_len} positions; {self.fits} fit in free memory")
        lines.append("(attn/gemm/samp split only with --profile; TTFA from a segment's start, 1st from the call's first "
                     "text; codec: ms of batched codec per frame generated, rows: stream chunks per codec forward)")
        return "\n".join(lines)

    def close(self) -> None:
        self.engine.close(wait=True)


def _main(args: argparse.Namespace) -> int:
    if args.duration <= 0 and args.calls <= 0:
        raise AgentRuntimeError("--duration or --calls must be positive")
    if args.words_per_s <= 0 or args.frames_per_word <= 0:
        raise AgentRuntimeError("--words-per-s and --frames-per-word must be positive")
    bench = Bench(args)
    try:
        print(bench.describe(), flush=True)
        floor = bench.floor()
        asyncio.run(bench.run(floor))
        print(bench.table(floor))
        if args.json is not None:
            print(f"wrote {args.json}")
    finally:
        bench.close()
    sys.stdout.flush()
    return 0

