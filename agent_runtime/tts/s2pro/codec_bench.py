"""`agent-runtime s2pro bench-codec`: cost of streaming decode on the full S2-Pro codec shapes.

Random weights (the cost does not depend on their values), CPU by default. Measures:
  1. one chunk of 1, 2, 4 frames with the streaming decoder once the attention window is full
     (steady state), as milliseconds and as real-time factor;
  2. streaming N seconds chunk by chunk vs re-decoding the whole prefix for every chunk and
     keeping the new samples (sglang-omni's method), same chunk schedule, same run: total
     compute, worst chunk, and their ratio;
  3. peak memory (resident set of this process per phase on CPU, allocator peak on CUDA).
"""

from __future__ import annotations

import itertools
import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from agent_runtime.tts.s2pro.codec import S2ProCodec
from agent_runtime.tts.s2pro.codec_config import CodecConfig
from agent_runtime.tts.s2pro.streaming import CodecStreamDecoder


@dataclass
class BenchOptions:
    seconds: float = 30.0
    chunk_frames: int = 25
    first_chunk_frames: int = 1
    sizes: tuple[int, ...] = (1, 2, 4)
    repeats: int = 5
    device: str = "cpu"
    dtype: str = "fp32"
    threads: int | None = None
    skip_prefix: bool = False
    prefix_all: bool = False
    prefix_points: int = 2
    config_path: str | None = None  # default: the full S2-Pro codec


def random_decode_codec(config: CodecConfig, device: str, dtype: torch.dtype, seed: int = 0) -> S2ProCodec:
    """The codec with random, well-scaled weights (LayerScale/ConvNeXt gammas at their training init)."""
    torch.manual_seed(seed)
    codec = S2ProCodec(config)
    with torch.no_grad():
        for name, p in codec.named_parameters():
            if name.endswith("layer_scale.gamma"):
                p.fill_(0.01)
            elif name.endswith(".gamma"):
                p.fill_(1e-6)
            elif name.endswith("codebook.weight"):
                p.normal_()
    return codec.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: "5" resets the peak resident set size (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Callable[[], object], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def run_bench(opts: BenchOptions, log: Callable[[str], None] = print) -> dict[str, object]:
    """Run the benchmark, printing a report through `log`; returns the figures."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[opts.dtype]
    cfg = CodecConfig.from_json(opts.config_path) if opts.config_path else CodecConfig.default()
    frame_ms = 1000.0 * cfg.frame_length / cfg.sample_rate
    window = cfg.quantizer.transformer.window_size
    t0 = time.perf_counter()
    codec = random_decode_codec(cfg, opts.device, dtype)
    build_s = time.perf_counter() - t0
    weights_mib = sum(p.numel() * p.element_size() for p in codec.parameters()) / 2**20
    gen = torch.Generator().manual_seed(1)
    sizes = (cfg.quantizer.semantic_codebook_size,) + (cfg.quantizer.residual_codebook_size,) * (cfg.num_codebooks - 1)

    def random_codes(n: int) -> torch.Tensor:
        return torch.stack([torch.randint(0, s, (n,), generator=gen) for s in sizes]).to(opts.device)

    res: dict[str, object] = {
        "device": opts.device, "dtype": opts.dtype, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "weights_mib": round(weights_mib, 1),
    }
    log(f"{'S2-Pro' if not opts.config_path else cfg.name} codec bench: {opts.device}, {opts.dtype}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")
    log(f"  codec built with random weights in {build_s:.1f} s; {weights_mib:.0f} MiB of weights "
        f"(decode path only is used); 1 frame = {cfg.frame_length} samples = {frame_ms:.1f} ms")

    # 1. steady-state cost of one chunk
    log(f"\n1. one chunk, steady state (attention window of {window} frames full), median of {opts.repeats}:")
    per_chunk: dict[int, float] = {}
    base = CodecStreamDecoder(codec)
    base.decode_chunk(random_codes(window))  # fill the attention window once
    for n in opts.sizes:
        dec = base.fork()
        dec.decode_chunk(random_codes(n))  # warm-up at this size
        state_kib = dec.state_nbytes() / 1024
        times = [_timed(lambda n=n, dec=dec: dec.decode_chunk(random_codes(n)), opts.device) for _ in range(opts.repeats)]
        ms = 1000 * statistics.median(times)
        per_chunk[n] = ms
        log(f"   {n} frame{'s' if n > 1 else ' '} ({n * frame_ms:6.1f} ms audio): {ms:8.1f} ms  "
            f"RTF {ms / (n * frame_ms):.3f}   carried state {state_kib:,.0f} KiB")
    res["chunk_ms"] = per_chunk
    setup_peak = _peak_mib(opts.device)

    # 2. streaming N seconds: carried state vs re-decoding the prefix
    total = math.ceil(opts.seconds * cfg.sample_rate / cfg.frame_length)
    codes = random_codes(total)
    schedule = [min(opts.first_chunk_frames, total)]
    while sum(schedule) < total:
        schedule.append(min(opts.chunk_frames, total - sum(schedule)))
    log(f"\n2. {opts.seconds:g} s of audio = {total} frames in {len(schedule)} chunks "
        f"(first {schedule[0]}, then {opts.chunk_frames}):")
    _reset_peak(opts.device)
    dec = CodecStreamDecoder(codec, opts.first_chunk_frames, opts.chunk_frames)
    stream_times: list[float] = []
    pos = 0
    for n in schedule:
        chunk = codes[:, pos : pos + n]
        stream_times.append(_timed(lambda chunk=chunk: dec.decode_chunk(chunk), opts.device))
        pos += n
    stream_peak = _peak_mib(opts.device)
    s_total = sum(stream_times)
    log(f"   streaming decoder : total {s_total:7.2f} s, first chunk {1000 * stream_times[0]:7.1f} ms, "
        f"worst chunk {1000 * max(stream_times):7.1f} ms, RTF {s_total / opts.seconds:.3f}, peak {stream_peak:,.0f} MiB")
    res.update(stream_total_s=s_total, stream_first_chunk_ms=1000 * stream_times[0],
               stream_worst_chunk_ms=1000 * max(stream_times), stream_peak_mib=stream_peak)
    if not opts.skip_prefix:
        # Re-decoding prefix k costs a + b * len(prefix_k) (conv-dominated, linear in length); unless
        # --prefix-all, time the prefixes at a few chunk indices and sum the fitted line over all chunks.
        ends = list(itertools.accumulate(schedule))
        if opts.prefix_all or len(ends) <= opts.prefix_points:
            picked = list(range(len(ends)))
        else:
            # evenly spaced over the first half of the chunks: the line's slope is the same, at half the cost
            last = (len(ends) - 1) // 2
            picked = sorted({round(i * last / (opts.prefix_points - 1)) for i in range(opts.prefix_points)})
        _reset_peak(opts.device)
        measured: dict[int, float] = {}
        for k in picked:
            prefix = codes[:, : ends[k]]
            measured[k] = _timed(lambda prefix=prefix: codec.decode(prefix), opts.device)
        prefix_peak = _peak_mib(opts.device)
        if len(picked) == len(ends):
            prefix_times = [measured[k] for k in range(len(ends))]
            how = "measured every chunk"
        else:
            xs = [float(ends[k]) for k in picked]
            ys = [measured[k] for k in picked]
            slope, intercept = statistics.linear_regression(xs, ys)
            prefix_times = [measured.get(k, intercept + slope * ends[k]) for k in range(len(ends))]
            how = (f"timed {len(picked)} of {len(ends)} prefix decodes ({', '.join(str(ends[k]) for k in picked)} frames), "
                   f"the others from the fitted line {1000 * intercept:.0f} ms + {1000 * slope:.1f} ms/frame")
        p_total = sum(prefix_times)
        log(f"   re-decode prefix  : total {p_total:7.2f} s, first chunk {1000 * prefix_times[0]:7.1f} ms, "
            f"worst chunk {1000 * max(prefix_times):7.1f} ms, RTF {p_total / opts.seconds:.3f}, "
            f"peak {prefix_peak:,.0f} MiB (at {ends[max(picked)]} frames)")
        log(f"     ({how})")
        log(f"   ratio (re-decode / streaming): {p_total / s_total:.1f}x total compute, "
            f"{max(prefix_times) / max(stream_times):.1f}x worst chunk")
        res.update(prefix_total_s=p_total, prefix_worst_chunk_ms=1000 * max(prefix_times),
                   prefix_peak_mib=prefix_peak, ratio_total=p_total / s_total, prefix_method=how)
    overall = max(setup_peak, stream_peak, float(res.get("prefix_peak_mib", 0.0)))
    res["peak_mib"] = overall
    kind = "allocated GPU memory" if opts.device.startswith("cuda") else "resident memory"
    log(f"\n3. peak {kind}: {overall:,.0f} MiB for the whole run (weights {weights_mib:,.0f} MiB, incl. the unused encoder); "
        f"streaming phase {stream_peak:,.0f} MiB"
        + (f", re-decode phase {res['prefix_peak_mib']:,.0f} MiB" if "prefix_peak_mib" in res else ""))
    return res
