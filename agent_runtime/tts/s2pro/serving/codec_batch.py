"""Batched streaming codec: the next chunk of many streams in one forward (issue 11).

Each stream keeps its own `StreamCache` (conv left contexts, transposed-conv overlap, windowed
attention K/V and RoPE position), exactly as `CodecStreamDecoder` does. A call gathers the rows'
states into batched tensors, runs the decode path once for the whole batch, and scatters each row's
new state back into its own cache (cloned, so a stream's state never pins the batch's tensors):

* conv / transposed-conv contexts: stacked along the batch; a fresh stream gets zeros (what its own
  decoder would use);
* windowed attention: streams sit at different positions, so each row has its own RoPE positions
  and its own number of past keys P_b = min(position, window - 1). Past K/V are left-padded to the
  longest P in the batch and a per-row mask (B, 1, n, P_max + n) hides the padding and applies the
  causal window, so every row attends to exactly the keys its own decoder would.

Rows must have the same chunk length n (the convs see (B, C, n * rate) inputs): `decode` groups
its items by n and runs one forward per group. The layers are the codec's own modules (`Seq`,
convs, `TransformerBlock`); only the transformer's position/mask bookkeeping is done here, since
`WindowedTransformer.forward` takes one start position per call. A batch of one is the stream's
own `codec.decode(codes, cache=state)`.

Each row's audio equals its own streaming decode up to summation order (fp32: ~1e-7; the GEMMs
see B x more columns and the softmax sees masked padding). `push_many` / `flush_many` drive many
`CodecStreamDecoder`s through the batch with each decoder's own chunk schedule.

Example::

    batch = BatchedCodecDecoder(codec)
    decoders = [CodecStreamDecoder(codec, first_chunk_frames=1, chunk_frames=4) for _ in calls]
    chunks = batch.push_many([(dec, frame) for dec, frame in zip(decoders, frames)])  # per decoder
    tail = batch.flush_many(decoders)

Benchmark: `python -m agent_runtime.tts.s2pro.serving.codec_batch --config <codec.json> --streams 1 4 8`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent_runtime.tts.s2pro.codec import Attention, S2ProCodec, StreamCache, WindowedTransformer, rope_table
from agent_runtime.tts.s2pro.streaming import ChunkStats, CodecStreamDecoder

__all__ = ["BatchedCodecDecoder", "bench_batched_codec"]

Codes = np.ndarray | Tensor


class _RowsCache:
    """A `StreamCache` look-alike over B streams: `get` gathers the rows' entries into one batched
    value, `put` keeps the batched value, `scatter` writes each row's slice back to its own cache."""

    def __init__(self, rows: Sequence[StreamCache], n: int) -> None:
        self.rows = rows
        self.n = n
        self._new: dict[int, tuple[nn.Module, Any]] = {}
        self._past_len: dict[int, list[int]] = {}  # attention: past keys per row before this chunk

    def get(self, module: nn.Module) -> Any:
        past = [row.get(module) for row in self.rows]
        if isinstance(module, Attention):
            return self._gather_kv(module, past)
        if all(p is None for p in past):
            return None
        like = next(p for p in past if p is not None)
        return torch.cat([torch.zeros_like(like) if p is None else p for p in past])

    def _gather_kv(self, module: Attention, past: list[tuple[Tensor, Tensor] | None]) -> tuple[Tensor, Tensor] | None:
        lens = [0 if p is None else p[0].shape[2] for p in past]
        self._past_len[id(module)] = lens
        p_max = max(lens)
        if p_max == 0:
            return None
        like = next(p for p in past if p is not None)[0]
        empty = like.new_zeros(1, like.shape[1], 0, like.shape[3])

        def stack(i: int) -> Tensor:  # left-pad every row's past to p_max (the mask hides the pad)
            rows = [empty if p is None else p[i] for p in past]
            return torch.cat([r if r.shape[2] == p_max else F.pad(r, (0, 0, p_max - r.shape[2], 0)) for r in rows])

        return stack(0), stack(1)

    def put(self, module: nn.Module, value: Any) -> None:
        self._new[id(module)] = (module, value)

    def scatter(self) -> None:
        """Write every row's new state into its own cache as fresh tensors (rows own their state;
        a row's view of the batch would pin the whole batch). One multi-tensor copy for all."""
        slots: list[tuple[StreamCache, nn.Module, bool]] = []  # (row, module, is K/V pair)
        srcs: list[Tensor] = []
        for key, (module, value) in self._new.items():
            if value is None:  # attention with window 1 keeps nothing
                for row in self.rows:
                    row.put(module, None)
                continue
            if not isinstance(module, Attention):
                srcs.extend(value.split(1))
                slots.extend((row, module, False) for row in self.rows)
                continue
            keep = value[0].shape[2]  # the batch's last min(p_max + n, window - 1) keys
            for b, (row, k, v) in enumerate(zip(self.rows, value[0].split(1), value[1].split(1), strict=True)):
                n_b = min(self._past_len[key][b] + self.n, keep)  # the row's valid keys: the last n_b
                srcs.extend((k, v) if n_b == keep else (k[:, :, -n_b:], v[:, :, -n_b:]))
                slots.append((row, module, True))
        copies = iter(_copy_all(srcs))
        for row, module, is_kv in slots:
            row.put(module, (next(copies), next(copies)) if is_kv else next(copies))


def _copy_all(srcs: list[Tensor]) -> list[Tensor]:
    """Contiguous copies of `srcs` with one `_foreach_copy_` (few fused kernels on CUDA instead of
    a launch per row and layer)."""
    dsts = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in srcs]
    if dsts:
        torch._foreach_copy_(dsts, srcs)
    return dsts


def _windowed_transformer(tf: WindowedTransformer, x: Tensor, cache: _RowsCache) -> Tensor:
    """`WindowedTransformer.forward` with a stream cache per row: per-row RoPE positions and masks."""
    x = x.transpose(1, 2)  # (B, T, C)
    n, device = x.shape[1], x.device
    window = tf.cfg.window_size
    starts = [cache_row.get(tf) or 0 for cache_row in cache.rows]
    p_max = min(max(starts), window - 1)
    start = torch.tensor(starts, device=device)[:, None]  # (B, 1)
    qpos = start + torch.arange(n, device=device)  # (B, n)
    kpos = start - p_max + torch.arange(p_max + n, device=device)  # (B, S): slot -> position
    table = rope_table(max(starts) + n, tf.cfg.head_dim, tf.cfg.rope_base, tf.rope_dtype, device)
    rope = table[qpos]  # (B, n, head_dim/2, 2)
    q, k = qpos[:, :, None], kpos[:, None, :]
    # Padding slots of a row (P_b = min(start_b, window - 1) < p_max) get positions below 0 when
    # start_b < window - 1, else below start_b - window + 1: either way outside the mask.
    allowed = (k >= 0) & (k <= q) & (k >= q - window + 1)  # (B, n, S)
    mask = allowed[:, None]  # (B, 1, n, S)
    for layer in tf.layers:
        x = layer(x, rope, mask, cache)
    for row, s in zip(cache.rows, starts, strict=True):
        row.put(tf, s + n)
    return tf.norm(x).transpose(1, 2)


class BatchedCodecDecoder:
    """Decode the next chunk of many streams with one batched forward per chunk length.

    Args:
        codec: a loaded `S2ProCodec` (any device and dtype; the batch runs where it lives).
        max_batch: most rows per forward (larger groups are split); None for no limit.
    """

    def __init__(self, codec: S2ProCodec, max_batch: int | None = None) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.codec = codec
        self.max_batch = max_batch
        self.forwards = 0  # batched forwards run (`decode`), and the stream chunks they decoded
        self.rows = 0

    # ----------------------------------------------------------------- raw states
    @torch.inference_mode()
    def decode_batch(self, states: Sequence[StreamCache], codes: Tensor) -> Tensor:
        """codes (B, num_codebooks, n) for B streams -> float32 audio (B, n * frame_length) on the
        codec's device; each `states[b]` (a `StreamCache`) is advanced by n frames."""
        codec = self.codec
        if codes.ndim != 3 or codes.shape[0] != len(states) or codes.shape[1] != codec.num_codebooks:
            raise ValueError(f"codes must be ({len(states)}, {codec.num_codebooks}, n), got {tuple(codes.shape)}")
        if len({id(s) for s in states}) != len(states):
            raise ValueError("a stream state appears twice in one batch")
        if bool((codes < 0).any()):  # checked where the codes are (host codes: no device sync)
            raise ValueError("codes must be non-negative")
        codes = codes.to(codec.device, torch.long)
        if len(states) == 1:  # a batch of one is the stream's own decode (bit-identical, no copies)
            return codec.decode(codes, cache=states[0])[:, 0]
        cache = _RowsCache(states, codes.shape[2])
        q = codec.quantizer  # DownsampleResidualVectorQuantize.decode, with the batched transformer
        sem = codes[:, :1].clamp(max=q.semantic_quantizer.codebook_size - 1)
        res = codes[:, 1:].clamp(max=q.quantizer.codebook_size - 1)
        z = q.semantic_quantizer.decode(sem) + q.quantizer.decode(res)
        z = _windowed_transformer(q.post_module, z, cache)
        z = q.upsample(z, cache)
        audio = codec.decoder(z, cache).float()  # (B, 1, n * frame_length)
        cache.scatter()
        return audio[:, 0]

    def decode(self, items: Sequence[tuple[StreamCache, Codes]]) -> list[np.ndarray]:
        """Decode `codes` (num_codebooks, n) as the next chunk of each `state`; one float32 array of
        n * frame_length samples per item, in order. Items are batched by n (one forward per n)."""
        if not items:
            return []
        tensors = [self._codes(c) for _, c in items]
        out: list[np.ndarray | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(t.shape[1], []).append(i)
        step = self.max_batch or len(items)
        for idx in groups.values():
            for lo in range(0, len(idx), step):
                part = idx[lo : lo + step]
                audio = self.decode_batch([items[i][0] for i in part], torch.stack([tensors[i] for i in part]))
                self.forwards += 1
                self.rows += len(part)
                rows = audio.cpu().numpy()
                for i, row in zip(part, rows, strict=True):
                    out[i] = row
        return out  # type: ignore[return-value]

    def _codes(self, codes: Codes, allow_empty: bool = False) -> Tensor:
        """(num_codebooks, n) int64 (one frame may come as (num_codebooks,)), as `push` takes them."""
        t = torch.as_tensor(codes).long()
        if t.ndim == 1:
            t = t[:, None]
        if t.ndim != 2 or t.shape[0] != self.codec.num_codebooks or (t.shape[1] == 0 and not allow_empty):
            raise ValueError(f"codes must have shape ({self.codec.num_codebooks}, n), got {tuple(t.shape)}")
        return t

    # ------------------------------------------------- CodecStreamDecoder adaptor
    def push_many(self, items: Sequence[tuple[CodecStreamDecoder, Codes]]) -> list[list[np.ndarray]]:
        """`decoder.push(codes)` for every item, with the chunks decoded in batches.

        Each decoder keeps its own first_chunk/chunk schedule; returns, per item, the chunks
        `decoder.push(codes)` would have returned. A decoder may appear once per call. (Uses the
        decoder's frame buffer and schedule helpers: `_pending`, `_take`, `_next_chunk_size`.)
        """
        decoders = [d for d, _ in items]
        self._check(decoders)
        tensors = [self._codes(c, allow_empty=True) for _, c in items]  # validate all before buffering any
        for dec, t in zip(decoders, tensors, strict=True):
            if t.shape[1]:
                dec._pending.append(t)
                dec._n_pending += t.shape[1]
        out: list[list[np.ndarray]] = [[] for _ in items]
        while True:  # a round: every decoder with a complete chunk decodes it
            ready = [i for i, d in enumerate(decoders) if d._n_pending >= d._next_chunk_size()]
            if not ready:
                return out
            self._decode_for([decoders[i] for i in ready], [out[i] for i in ready], final=False)

    def flush_many(self, decoders: Sequence[CodecStreamDecoder]) -> list[list[np.ndarray]]:
        """`decoder.flush()` for every decoder, batched: the buffered frames of each as one chunk."""
        self._check(decoders)
        out: list[list[np.ndarray]] = [[] for _ in decoders]
        ready = [i for i, d in enumerate(decoders) if d._n_pending]
        self._decode_for([decoders[i] for i in ready], [out[i] for i in ready], final=True)
        return out

    def _check(self, decoders: Sequence[CodecStreamDecoder]) -> None:
        if len({id(d) for d in decoders}) != len(decoders):
            raise ValueError("a decoder appears twice in one call")
        if any(d.codec is not self.codec for d in decoders):
            raise ValueError("every decoder must use this batch's codec")

    def _decode_for(self, decoders: list[CodecStreamDecoder], outs: list[list[np.ndarray]], final: bool) -> None:
        """Take each decoder's next chunk (its schedule, or all it buffers when `final`), decode
        them batched, and do each decoder's own bookkeeping (as `CodecStreamDecoder._decode`)."""
        if not decoders:
            return
        chunks = [d._take(d._n_pending if final else d._next_chunk_size()) for d in decoders]
        audio = self.decode([(d._cache, c) for d, c in zip(decoders, chunks, strict=True)])
        window = self.codec.config.quantizer.transformer.window_size
        for dec, chunk, pcm, out in zip(decoders, chunks, audio, outs, strict=True):
            n, start = chunk.shape[1], dec.frames_decoded
            dec.frames_decoded += n
            dec.chunks_emitted += 1
            dec.last_stats = ChunkStats(frames=n, first_position=start, attention_keys=min(start, window - 1) + n,
                                        state_bytes=dec._cache.nbytes())
            out.append(pcm)


# --------------------------------------------------------------------------------- benchmark
def _random_codes(codec: S2ProCodec, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Random codes (..., num_codebooks, n) within each codebook's size."""
    q = codec.config.quantizer
    sizes = [q.semantic_codebook_size] + [q.residual_codebook_size] * (codec.num_codebooks - 1)
    return torch.stack([torch.randint(0, s, (*shape[:-2], shape[-1]), generator=gen) for s in sizes], dim=-2)


def bench_batched_codec(codec: S2ProCodec, streams: int, frames: int, chunk_frames: int = 4, repeats: int = 3,
                        seed: int = 0, log: Callable[[str], None] = print) -> dict[str, float]:
    """Decode `frames` random frames for each of `streams` fresh streams in chunks of `chunk_frames`,
    stream by stream (a `CodecStreamDecoder` each, chunks interleaved) and through
    `BatchedCodecDecoder` (one forward per chunk round); the two alternate `repeats` times after an
    untimed warm-up round. Prints and returns the median wall times."""
    codes = _random_codes(codec, (streams, codec.num_codebooks, frames), torch.Generator().manual_seed(seed))
    bounds = list(range(0, frames, chunk_frames))
    batch = BatchedCodecDecoder(codec)

    def per_stream(rounds: list[int]) -> list[list[np.ndarray]]:
        decoders = [CodecStreamDecoder(codec) for _ in range(streams)]
        return [[d.decode_chunk(codes[i, :, lo : lo + chunk_frames]) for i, d in enumerate(decoders)] for lo in rounds]

    def batched(rounds: list[int]) -> list[list[np.ndarray]]:
        states = [StreamCache() for _ in range(streams)]
        return [batch.decode([(s, codes[i, :, lo : lo + chunk_frames]) for i, s in enumerate(states)]) for lo in rounds]

    per_stream(bounds[:1]), batched(bounds[:1])  # warm-up (allocator, kernels, RoPE table)
    times: dict[str, list[float]] = {"per_stream": [], "batched": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref = per_stream(bounds)
        t1 = time.perf_counter()
        out = batched(bounds)
        times["per_stream"].append(t1 - t0)
        times["batched"].append(time.perf_counter() - t1)
    diff = max(float(np.abs(a - b).max()) for ra, rb in zip(ref, out, strict=True) for a, b in zip(ra, rb, strict=True))
    single_s, batched_s = float(np.median(times["per_stream"])), float(np.median(times["batched"]))
    audio_s = streams * frames * codec.frame_length / codec.sample_rate
    res = {"streams": streams, "frames": frames, "chunk_frames": chunk_frames, "per_stream_s": single_s,
           "batched_s": batched_s, "speedup": single_s / batched_s, "audio_s": audio_s,
           "per_stream_rtf": single_s / audio_s, "batched_rtf": batched_s / audio_s, "max_abs_diff": diff}
    log(f"  {streams:3d} streams x {frames} frames (chunks of {chunk_frames}): per-stream {single_s * 1e3:8.1f} ms "
        f"(RTF {res['per_stream_rtf']:.3f}), batched {batched_s * 1e3:8.1f} ms (RTF {res['batched_rtf']:.3f}), "
        f"speed-up {res['speedup']:.2f}x, max |diff| {diff:.1e}  [median of {repeats}]")
    return res


def main(argv: list[str] | None = None) -> None:
    from agent_runtime.tts.s2pro.codec_bench import random_decode_codec
    from agent_runtime.tts.s2pro.codec_config import CodecConfig

    p = argparse.ArgumentParser(description="per-stream vs batched streaming codec decode (random weights)")
    p.add_argument("--config", help="codec JSON (default: the full S2-Pro codec)")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--chunk-frames", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CodecConfig.from_json(args.config) if args.config else CodecConfig.default()
    codec = random_decode_codec(cfg, args.device, {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype])
    print(f"batched codec bench: {cfg.name}, {args.device}, {args.dtype}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    for streams in args.streams:
        bench_batched_codec(codec, streams, args.frames, args.chunk_frames, args.repeats)


if __name__ == "__main__":
    main()
