"""The measurements behind `agent-runtime s2pro bench-synth` (see cli_synth.py for what is measured).

Everything that touches the model runs on the engine's model thread, as in the live loop: the
synthesizer's own jobs, and the floor and baseline measurements, submitted as jobs. Measurements
are interleaved (floor, incremental, baseline for each rate, then again) so that load on a shared
machine spreads over all of them, and each incremental run is compared with the floor measured
just before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from agent_runtime.tts.s2pro.chunking import S2ProTextChunker
from agent_runtime.tts.s2pro.codec_config import DEFAULT_CONFIG_PATH, CodecConfig
from agent_runtime.tts.s2pro.engine import S2ProEngine
from agent_runtime.tts.s2pro.local_backend import LocalBackend, LocalSettings
from agent_runtime.tts.s2pro.prompt import VoiceReference
from agent_runtime.tts.s2pro.sampling import SamplingParams
from agent_runtime.tts.s2pro.streaming import CodecStreamDecoder
from agent_runtime.tts.s2pro.synthesizer import S2ProSynthesizer

# Two replies: one that opens with a discourse marker ("Sure,", its own first segment) and one
# whose first speakable clause is eight words long.
REPLIES = {
    "opener": "Sure, we are open tomorrow, from nine until six. Is there anything else I can help you with today?",
    "plain": "We are open tomorrow from nine until six, and on Sunday from ten. Is there anything else I can help you with?",
}
PARAMS = SamplingParams(temperature=0.8, top_p=0.8, top_k=30)
_SENTENCE_END = re.compile(r"[.!?。！？]")


def tokens_of(text: str) -> list[str]:
    """Word and punctuation pieces with their leading space, roughly how an LLM streams text."""
    return re.findall(r"\s*\w+|\s*[^\w\s]", text)


def codec_config(spec: str) -> CodecConfig:
    """`full`: the S2-Pro codec; `mid`: its layout with a quarter of the decoder's conv channels;
    anything else: a codec-config JSON path."""
    if spec not in ("full", "mid"):
        return CodecConfig.from_json(spec)
    data = json.loads(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    if spec == "mid":
        dec = data["decoder"]
        dec["dim"] //= 4
        dec["block_channels"] = [c // 4 for c in dec["block_channels"]]
        data["name"] = "S2-Pro codec layout, decoder convs at 1/4 width"
    return CodecConfig.from_dict(data)


@dataclass
class Runs:
    """Seconds per repeat for one measurement."""

    values: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.values.append(v)

    @property
    def median(self) -> float:
        return statistics.median(self.values)


@dataclass(frozen=True)
class Reply:
    """One simulated LLM reply and how the synthesizer and the baseline cut it."""

    name: str
    text: str
    first_segment: str  # what the chunker releases first (the floor synthesizes exactly this)
    sentence: str  # the baseline's first whole sentence

    @classmethod
    def of(cls, name: str, text: str) -> Reply:
        chunker = S2ProTextChunker()
        first = (chunker.push(text) or chunker.flush())[0]
        return cls(name, text, first, text[: _SENTENCE_END.search(text).end()])  # type: ignore[union-attr]


class Bench:
    """Random engine + codec + synthesizer; `run()` returns the measurements, `report()` formats them."""

    def __init__(self, args: argparse.Namespace) -> None:
        from agent_runtime.tts.s2pro.codec_bench import random_decode_codec
        from agent_runtime.tts.s2pro.random_model import SyntheticTokenizer, random_model

        self.args = args
        names = [n.strip() for n in args.replies.split(",") if n.strip()]
        unknown = sorted(set(names) - set(REPLIES))
        if unknown or not names:
            raise ValueError(f"unknown --replies {unknown or names}; choose from {', '.join(REPLIES)}")
        self.replies = [Reply.of(n, REPLIES[n]) for n in names]
        started = time.perf_counter()
        ns = SimpleNamespace(**vars(args), max_seq_len=32_768)
        from agent_runtime.tts.s2pro.cli_generate import _torch_dtype

        self.dtype = _torch_dtype(args.dtype)
        model = random_model(ns, self.dtype)
        tokenizer = SyntheticTokenizer(model.cfg.semantic_begin_id, args.codebook_size)
        self.engine = S2ProEngine(model, tokenizer, compile_fast=args.compile, compile_slow=args.compile_slow)
        self.codec_cfg = codec_config(args.codec)
        self.codec = random_decode_codec(self.codec_cfg, args.device, torch.float32, seed=args.seed)
        rng = np.random.default_rng(args.seed)
        codes = rng.integers(0, self.codec_cfg.quantizer.residual_codebook_size, size=(args.codebooks, args.prefix_frames))
        codes[0] = rng.integers(0, args.codebook_size, size=args.prefix_frames)
        voice = VoiceReference.create("<|speaker:0|>This is the reference transcript of the voice prompt.", codes, "ref")
        settings = LocalSettings(PARAMS, args.seed, args.first_chunk_frames, args.chunk_frames)
        self.backend = LocalBackend(self.engine, self.codec, voice, settings)
        self.synth = S2ProSynthesizer(self.backend)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.codec_params = sum(p.numel() for p in self.codec.decoder.parameters()) + sum(
            p.numel() for p in self.codec.quantizer.parameters()
        )
        self.build_s = time.perf_counter() - started

    def describe(self) -> str:
        a = self.args
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        return (
            f"random Dual-AR: {self.n_params / 1e6:.1f}M params (dim {a.dim}, {a.slow_layers} slow + {a.fast_layers} "
            f"fast layers, vocab {a.vocab}, {a.codebooks}x{a.codebook_size} codebooks), "
            f"{str(self.dtype).removeprefix('torch.')} on {a.device}, "
            f"{torch.get_num_threads()} torch thread(s)\n"
            f"random codec: {self.codec_cfg.name or a.codec} ({self.codec_params / 1e6:.1f}M decode params, "
            f"{self.codec.frame_length} samples/frame at {self.codec.sample_rate} Hz)\n"
            f"voice prefix {a.prefix_frames} frames (cached); first chunk {a.first_chunk_frames} frames, "
            f"later chunks {a.chunk_frames}; built in {self.build_s:.1f} s; load average {load:.1f}\n"
            + "\n".join(
                f"reply {r.name!r}: {r.text!r}\n  first segment (incremental): {r.first_segment!r}"
                + (
                    f"; baseline sentence: {r.sentence!r} ({self._baseline_frames(r)} frames at "
                    f"{a.frames_per_char} frames/char)"
                    if r is self.replies[0]
                    else "; no baseline run (it is the same for every reply)"
                )
                for r in self.replies
            )
        )

    def _baseline_frames(self, reply: Reply) -> int:
        return max(self.args.first_chunk_frames, round(self.args.frames_per_char * len(reply.sentence)))

    async def _on_model_thread(self, fn: Any) -> Any:
        return await asyncio.wrap_future(self.engine.scheduler.submit(fn))

    # -- the three measurements ------------------------------------------------------------------
    def _floor(self, reply: Reply) -> tuple[float, float, float]:
        """Model thread: (prefill + first frame, + the rest of the first chunk, + its decode)."""
        f = self.args.first_chunk_frames
        t0 = time.perf_counter()
        stream = self.engine.open_stream(self.backend.voice, params=PARAMS, seed=self.args.seed)
        frames = stream.add_text(reply.first_segment)
        got = [self.backend._clip_codes(next(frames))]
        t1 = time.perf_counter()
        got += [self.backend._clip_codes(next(frames)) for _ in range(f - 1)]
        t2 = time.perf_counter()
        frames.close()
        audio = CodecStreamDecoder(self.codec, f, self.args.chunk_frames).push(np.stack(got, axis=1))
        t3 = time.perf_counter()
        assert audio and len(audio[0]) == f * self.codec.frame_length
        return t1 - t0, t2 - t0, t3 - t0

    async def _incremental(self, rate: float, reply: Reply) -> tuple[float, float]:
        """(TTFA, first segment released) from the first LLM token, through the synthesizer."""
        stream = self.synth.open_stream()
        text_at: list[float] = []
        t0 = time.monotonic()

        def push(tok: str) -> None:
            if stream.push_text(tok) and not text_at:
                text_at.append(time.monotonic() - t0)

        feeder = asyncio.create_task(_feed(tokens_of(reply.text), rate, push, t0, stream.flush))
        ttfa = float("nan")
        async for chunk in stream:
            if len(chunk.audio):
                ttfa = chunk.created_at - t0
                break
        await stream.cancel()
        feeder.cancel()
        await self._on_model_thread(lambda: None)  # let the cancelled reply's last job drain
        return ttfa, text_at[0]

    async def _baseline(self, rate: float, reply: Reply) -> tuple[float, float]:
        """(TTFA, sentence complete): wait for the sentence, generate all of it, decode it at once."""
        tokens = tokens_of(reply.text)
        n_text = next(i for i in range(1, len(tokens) + 1) if "".join(tokens[:i]).strip() == reply.sentence.strip())
        t0 = time.monotonic()
        await _feed(tokens[:n_text], rate, lambda _t: None, t0, None)
        text_at = time.monotonic() - t0
        n = self._baseline_frames(reply)

        def synthesize_then_decode() -> int:
            stream = self.engine.open_stream(self.backend.voice, params=PARAMS, seed=self.args.seed)
            frames = [self.backend._clip_codes(f) for f in stream.add_text(reply.sentence, max_frames=n + 1)]
            audio = self.codec.decode(torch.from_numpy(np.stack(frames, axis=1)))
            return int(audio.shape[-1])

        samples = await self._on_model_thread(synthesize_then_decode)
        assert samples == n * self.codec.frame_length
        return time.monotonic() - t0, text_at

    # -- driver ----------------------------------------------------------------------------------------
    async def run(self, rates: list[float], repeats: int) -> dict[str, Runs]:
        for reply in self.replies:  # warm-up: caches the voice prefix, first-call costs
            await self._on_model_thread(lambda r=reply: self._floor(r))
        await self._incremental(max(rates), self.replies[0])
        out: dict[str, Runs] = {}

        def add(key: str, v: float) -> None:
            out.setdefault(key, Runs()).add(v)

        for rep in range(repeats):
            for reply in self.replies:
                for rate in rates:
                    # the floor right before each incremental run: each pair shares the machine's load
                    first, chunk, floor = await self._on_model_thread(lambda r=reply: self._floor(r))
                    at = f"{reply.name}@{rate:g}"
                    add(f"floor_first_frame:{reply.name}", first)
                    add(f"floor_chunk_frames:{reply.name}", chunk)
                    add(f"floor:{reply.name}", floor)
                    ttfa, text_at = await self._incremental(rate, reply)
                    add(f"inc_ttfa:{at}", ttfa)
                    add(f"inc_text:{at}", text_at)
                    add(f"inc_share:{at}", ttfa - text_at)
                    add(f"share_ratio:{at}", (ttfa - text_at) / floor)
                    add(f"ttfa_ratio:{at}", ttfa / floor)
                    if rep >= self.args.baseline_repeats or reply is not self.replies[0]:
                        continue  # the baseline is an order of magnitude slower and far less noisy in ratio
                    ttfa, text_at = await self._baseline(rate, reply)
                    add(f"base_ttfa:{at}", ttfa)
                    add(f"base_text:{at}", text_at)
        return out

    def report(self, r: dict[str, Runs]) -> str:
        lines: list[str] = []
        for reply in self.replies:
            name = reply.name
            floor = r[f"floor:{name}"]
            lines += [
                "",
                f"reply {name!r}, first segment {reply.first_segment!r}",
                f"engine floor (first segment, voice cached; median of {len(floor.values)}): "
                f"prefill + first frame {r[f'floor_first_frame:{name}'].median * 1e3:.0f} ms, "
                f"+ first chunk's {self.args.first_chunk_frames} frames {r[f'floor_chunk_frames:{name}'].median * 1e3:.0f} ms, "
                f"+ its codec decode = {floor.median * 1e3:.0f} ms",
                "LLM tok/s | incremental: clause text at  TTFA  TTFA-text  (TTFA-text)/floor  TTFA/floor"
                " | sentence-buffered: text at  TTFA | TTFA ratio",
            ]
            keys = [k for k in r if k.startswith(f"inc_ttfa:{name}@")]
            for key in sorted(keys, key=lambda k: float(k.split("@")[1])):
                at = key.split(":", 1)[1]
                rate = at.split("@")[1]
                ttfa, text, share = r[key].median, r[f"inc_text:{at}"].median, r[f"inc_share:{at}"].median
                share_ratio, ttfa_ratio = r[f"share_ratio:{at}"].median, r[f"ttfa_ratio:{at}"].median
                base = r.get(f"base_ttfa:{at}")
                baseline = (
                    f"{r[f'base_text:{at}'].median * 1e3:>20.0f} ms {base.median * 1e3:>5.0f} ms | {base.median / ttfa:>6.1f}x"
                    if base is not None
                    else f"{'-':>23} {'-':>8} | {'-':>7}"
                )
                lines.append(
                    f"{rate:>9} | {text * 1e3:>22.0f} ms {ttfa * 1e3:>5.0f} ms {share * 1e3:>6.0f} ms {share_ratio:>13.2f}x "
                    f"{ttfa_ratio:>10.2f}x | {baseline}"
                )
        lines.append(
            "(ms from the first LLM token, medians; the /floor columns are medians of per-run ratios to the floor "
            "measured just before each run; 'ratio' = baseline TTFA / incremental TTFA)"
        )
        return "\n".join(lines)

    def close(self) -> None:
        self.engine.close(wait=True)


async def _feed(tokens: list[str], rate: float, push: Any, t0: float, done: Any) -> None:
    """Deliver token i at t0 + i / rate (the first at once), then call `done`."""
    for i, tok in enumerate(tokens):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        push(tok)
    if done is not None:
        done()
