"""`PooledEngine` on the tiny fixture checkpoint (fp32, CPU): same codes as `S2ProEngine` streams.

Runs with two decoders: `ReferenceDecoder` (below: the contract implemented slot by slot with the
single-stream engine's own math, so any difference is the host side's) and, once it exists,
the real `serving.decoder.PooledDecoder` with noise "generator"."""

from __future__ import annotations

import collections
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from agent_runtime.tts.s2pro.engine import S2ProEngine, _fast_codes, _frame_column
from agent_runtime.tts.s2pro.prompt import VoiceReference
from agent_runtime.tts.s2pro.sampling import RAS_WINDOW, SamplerStats, SamplerTensors, sample_window
from agent_runtime.tts.s2pro.serving.contract import (
    PoolConfig,
    PoolFull,
    SlotFrame,
    SlotPhase,
    SlotSampling,
    StepTimes,
)
from agent_runtime.tts.s2pro.serving.engine import PooledEngine
from agent_runtime.tts_service.server import engine_busy
from tests.s2pro.synth_support import PARAMS, tiny_engine

HAVE_DECODER = importlib.util.find_spec("agent_runtime.tts.s2pro.serving.decoder") is not None
TEXTS = ("Hello there, how are you today?", "And a second sentence follows.")


class _Slot:
    def __init__(self, eng: S2ProEngine, sampling: SlotSampling) -> None:
        model = eng.model
        self.cache = eng._new_cache(eng.cfg.max_seq_len)
        self.sampler = SamplerTensors.create(sampling.params, model.dtype, model.device)
        if sampling.generator is not None:
            self.generator = sampling.generator
        else:
            self.generator = torch.Generator(device=model.device)
            self.generator.manual_seed(sampling.seed)
        self.fast_caches = model.new_fast_caches()
        self.stats = SamplerStats()
        self.phase = SlotPhase.IDLE
        self.length = 0
        self.out: tuple[torch.Tensor, torch.Tensor] | None = None
        self.index = self.budget = self.prompt_len = 0
        self.frame: torch.Tensor | None = None
        self.previous: collections.deque[int] = collections.deque()

    def fast_sample(self, logits: torch.Tensor) -> int:
        st = self.sampler
        return sample_window(logits, 0, logits.numel(), st.temperature, st.top_p, st.top_k, self.generator, self.stats)


class ReferenceDecoder:
    """`PooledDecoderAPI` slot by slot with `S2ProEngine`'s math (exact on CPU; no batching)."""

    def __init__(self, eng: S2ProEngine, config: PoolConfig) -> None:
        self.eng = eng
        self.config = config
        self.times = StepTimes()
        self.slots: list[_Slot | None] = [None] * config.max_streams

    @property
    def capacity(self) -> int:
        return self.config.max_streams

    def free_slots(self) -> int:
        return self.slots.count(None)

    def phase(self, slot: int) -> SlotPhase:
        s = self.slots[slot]
        return SlotPhase.FREE if s is None else s.phase

    def join(self, sampling: SlotSampling) -> int:
        if None not in self.slots:
            raise PoolFull("no free slot")
        i = self.slots.index(None)
        self.slots[i] = _Slot(self.eng, sampling)
        return i

    def load_prefix(self, slot: int, kv, length: int) -> None:
        s = self.slots[slot]
        s.cache.restore([(k[:, :, :length], v[:, :, :length]) for k, v in kv])
        s.length = length

    def prefill(self, slot: int, values: torch.Tensor, start: int, *, last: bool) -> None:
        s = self.slots[slot]
        assert start <= s.length
        with torch.inference_mode():
            s.out = self.eng._prefill(s.cache, values, start)
        s.length = start + values.shape[1]
        s.phase = SlotPhase.PREFILLING

    def prefill_many(self, chunks) -> None:
        for c in chunks:
            self.prefill(c.slot, c.values, c.start, last=c.last)

    def begin_segment(self, slot: int, max_frames: int) -> None:
        s = self.slots[slot]
        s.phase, s.index, s.budget, s.prompt_len = SlotPhase.DECODING, 0, max_frames, s.length
        s.previous = collections.deque([0] * RAS_WINDOW, maxlen=RAS_WINDOW)

    def active(self) -> int:
        return sum(s is not None and s.phase is SlotPhase.DECODING for s in self.slots)

    def step(self) -> list[SlotFrame]:
        eng = self.eng
        out = []
        for i, s in enumerate(self.slots):
            if s is None or s.phase is not SlotPhase.DECODING:
                continue
            with torch.inference_mode():
                if s.index == 0:
                    normed, fast_in = s.out
                    previous = None
                else:
                    normed, fast_in = eng._decode(s.cache, s.frame, s.prompt_len + s.index - 1)
                    previous = s.previous
                tok = eng._slow_token(normed, previous, s.sampler, s.generator, s.stats)
                codes = _fast_codes(eng.model, fast_in, tok, s.fast_caches, s.fast_sample, eng._fast_stepper)
            frame = _frame_column(tok, codes)
            if s.index > 0:
                s.previous.append(tok)
            s.index += 1
            s.frame = frame
            if s.index >= s.budget or (s.index > 1 and tok == eng.im_end_id):
                s.phase = SlotPhase.IDLE
                out.append(SlotFrame(i, tok, None, frame))
            else:
                s.length = s.prompt_len + s.index
                out.append(SlotFrame(i, tok, frame[1:].numpy(), frame))
        self.times.steps += 1
        self.times.frames += len(out)
        return out

    def stop_segment(self, slot: int) -> None:
        self.slots[slot].phase = SlotPhase.IDLE

    def context_length(self, slot: int) -> int:
        return self.slots[slot].length

    def leave(self, slot: int) -> None:
        self.slots[slot] = None


DECODERS = ["reference", pytest.param("real", marks=pytest.mark.skipif(not HAVE_DECODER, reason="decoder.py not written yet"))]


def _pooled(single: S2ProEngine, kind: str, max_streams: int = 2, prefill_chunk: int = 512) -> PooledEngine:
    pool = PoolConfig(max_streams=max_streams, max_len=1024, prefill_chunk=prefill_chunk, graphs=False, noise="generator")
    if kind == "reference":
        return PooledEngine(single.model, single.tokenizer, pool, decoder_factory=lambda m, p, e: ReferenceDecoder(single, p))
    return PooledEngine(single.model, single.tokenizer, pool)


def _voice(single: S2ProEngine) -> VoiceReference:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, single.cfg.codebook_size, size=(single.cfg.num_codebooks, 24))
    return VoiceReference.create("This is the voice reference.", codes, voice_id="v")


def _single_codes(single: S2ProEngine, voice, seed: int, texts, max_frames: int, cancel_after: int | None = None):
    stream = single.open_stream(voice, params=PARAMS, seed=seed, max_frames=max_frames)
    out = []
    for n, text in enumerate(texts):
        frames = []
        for f in stream.add_text(text):
            frames.append(f)
            if cancel_after is not None and n == 0 and len(frames) == cancel_after:
                stream.cancel()
        out.append(np.stack(frames, axis=1))
    return out


@pytest.mark.parametrize("kind", DECODERS)
def test_pooled_streams_equal_single_engine(s2pro_fixtures: Path, kind: str) -> None:
    """Three calls on a pool of two: A and B concurrently (A cancelled mid-segment, then its
    second segment), then C takes A's slot; codes equal the single engine's, segment by segment."""
    single = tiny_engine(s2pro_fixtures)
    voice = _voice(single)
    engine = _pooled(single, kind)
    try:
        want_a = _single_codes(single, voice, 1, TEXTS, 12, cancel_after=5)
        want_b = _single_codes(single, voice, 2, TEXTS, 10)
        want_c = _single_codes(single, None, 3, TEXTS, 9)
        a = engine.open_stream(voice, params=PARAMS, seed=1, max_frames=12)
        b = engine.open_stream(voice, params=PARAMS, seed=2, max_frames=10)
        with pytest.raises(PoolFull, match="max_streams") as refused:
            engine.open_stream(None, params=PARAMS, seed=9)
        assert engine_busy(refused.value)  # tts-serve answers busy (503)
        got_a, got_b = [], []
        it_a, it_b = a.add_text(TEXTS[0]), b.add_text(TEXTS[0])
        fa, fb = [], []
        for x, y in zip(it_a, it_b, strict=False):  # interleaved consumers: both slots decode together
            fa.append(x)
            fb.append(y)
            if len(fa) == 5:
                a.cancel()
        fb += list(it_b)
        got_a.append(np.stack(fa, axis=1))
        got_b.append(np.stack(fb, axis=1))
        got_a.append(a.generate(TEXTS[1]))
        got_b.append(b.generate(TEXTS[1]))
        a.close()
        c = engine.open_stream(None, params=PARAMS, seed=3, max_frames=9)
        assert c.slot == a.slot  # the cancelled call's slot, reused
        got_c = [c.generate(t) for t in TEXTS]
        for name, got, want in (("A", got_a, want_a), ("B", got_b, want_b), ("C", got_c, want_c)):
            assert len(got) == len(want)
            for i, (g, w) in enumerate(zip(got, want, strict=True)):
                np.testing.assert_array_equal(g, w, err_msg=f"{name} segment {i}")
        assert got_a[0].shape[1] == 5
        assert [x.shape[1] for x in c.segments_codes] == [x.shape[1] for x in want_c]
        assert engine.prefix_hits >= 1 and engine.prefix_misses == 2
        snap = engine.stats()
        assert snap.frames > 0 and snap.steps > 0 and snap.cancelled >= 1
    finally:
        engine.close(wait=True)


@pytest.mark.parametrize("kind", DECODERS)
def test_chunked_prefill_and_async(s2pro_fixtures: Path, kind: str) -> None:
    """A prompt longer than prefill_chunk runs in several chunks; the stream still speaks."""
    import asyncio

    single = tiny_engine(s2pro_fixtures)
    engine = _pooled(single, kind, prefill_chunk=16)
    try:
        stream = engine.open_stream(_voice(single), params=PARAMS, seed=4, max_frames=6)

        async def run() -> list[np.ndarray]:
            return [f async for f in stream.add_text_async(TEXTS[0])]

        frames = asyncio.run(run())
        assert 0 < len(frames) <= 5
        assert engine.stats().prefill_chunks >= 2
        stream.close()
        stream.close()  # idempotent
    finally:
        engine.close(wait=True)


REPLY = "Well, let me check that for you. Our store opens at nine on weekdays. Bye!"


async def test_local_backend_on_the_pooled_engine(s2pro_fixtures: Path) -> None:
    """`tts.options.engine: pooled` speaks a reply through the local backend unchanged; in fp32
    with noise "generator" its audio equals the single engine's; the reply's slot is freed."""
    from agent_runtime.errors import ConfigError
    from agent_runtime.tts.registry import create_synthesizer
    from tests.s2pro.synth_support import audio_of, speak

    base = {"checkpoint": str(s2pro_fixtures / "tiny"), "codec": str(s2pro_fixtures / "codec_tiny.pth"),
            "codec_config": str(s2pro_fixtures / "codec_tiny.json"), "seed": 7, "max_frames_per_segment": 8}  # fmt: skip
    pooled_opts = {"engine": "pooled", "max_streams": 2, "max_len": 1024, "graphs": False, "noise": "generator"}
    for bad, match in (({"engine": "pool"}, "engine must be single or pooled"), ({"max_streams": 0}, "max_streams"),
                       ({"noise": "x"}, "noise must be one of"), ({"prefill_chunk": 2048}, "must not exceed max_len")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            create_synthesizer("s2pro", {**base, **pooled_opts, **bad})
    single = create_synthesizer("s2pro", dict(base))
    pooled = create_synthesizer("s2pro", {**base, **pooled_opts})
    try:
        want = audio_of(await speak(single, REPLY, deltas=True))  # type: ignore[arg-type]
        for _ in range(3):  # more replies than slots: each reply frees its slot
            got = audio_of(await speak(pooled, REPLY, deltas=True))  # type: ignore[arg-type]
            assert len(got) > 0
            np.testing.assert_array_equal(got, want)
        engine = pooled.backend.engine  # type: ignore[attr-defined]
        assert isinstance(engine, PooledEngine)
        engine.scheduler.call(lambda: None)  # the slot releases queued before this have run
        assert engine.decoder.free_slots() == 2
    finally:
        single.close()
        pooled.close()


OTHER_REPLY = "Sure, your order left the warehouse this morning. It should arrive on Friday."


async def test_concurrent_replies_share_codec_forwards_and_sound_as_alone(s2pro_fixtures: Path) -> None:
    """Two replies at once on the pooled engine: their codec chunks are decoded in shared
    (batched) forwards, and each reply's audio is what it is alone (int16, at most 1 LSB apart:
    the batched codec sums in another order)."""
    import asyncio

    from agent_runtime.tts.registry import create_synthesizer
    from tests.s2pro.synth_support import audio_of, speak

    opts = {"checkpoint": str(s2pro_fixtures / "tiny"), "codec": str(s2pro_fixtures / "codec_tiny.pth"),
            "codec_config": str(s2pro_fixtures / "codec_tiny.json"), "seed": 7, "max_frames_per_segment": 8,
            "engine": "pooled", "max_streams": 2, "max_len": 1024, "graphs": False, "noise": "generator"}  # fmt: skip
    pooled = create_synthesizer("s2pro", opts)
    try:
        alone = [audio_of(await speak(pooled, text, deltas=True)) for text in (REPLY, OTHER_REPLY)]  # type: ignore[arg-type]
        engine = pooled.backend.engine  # type: ignore[attr-defined]
        before = engine.scheduler.snapshot()
        together = await asyncio.gather(*(speak(pooled, t, deltas=True) for t in (REPLY, OTHER_REPLY)))  # type: ignore[arg-type]
        after = engine.scheduler.snapshot()
        for got, want in zip((audio_of(c) for c in together), alone, strict=True):
            assert len(got) == len(want) > 0
            assert np.abs(got.astype(np.int32) - want.astype(np.int32)).max() <= 1
        assert after.codec_pushes > before.codec_pushes
        forwards = after.codec_forwards - before.codec_forwards
        rows = after.codec_rows - before.codec_rows
        assert 0 < forwards < rows, (forwards, rows)  # some forwards decoded both streams' chunks
    finally:
        pooled.close()


async def test_tts_serve_answers_busy_when_the_pool_is_full(s2pro_fixtures: Path) -> None:
    """A request that finds every slot of the pool taken is answered 503 busy, like the server's
    own stream cap; once the slot is free the same request speaks."""
    import aiohttp

    from agent_runtime.tts.registry import create_synthesizer
    from tests.tts_service.conftest import serving

    synth = create_synthesizer("s2pro", {
        "checkpoint": str(s2pro_fixtures / "tiny"), "codec": str(s2pro_fixtures / "codec_tiny.pth"),
        "codec_config": str(s2pro_fixtures / "codec_tiny.json"), "seed": 7, "max_frames_per_segment": 4,
        "engine": "pooled", "max_streams": 1, "max_len": 1024, "graphs": False,
    })  # fmt: skip
    engine = synth.backend.engine  # type: ignore[attr-defined]
    held = engine.open_stream(None, params=PARAMS, seed=1)  # another call holds the only slot
    try:
        async with serving(synth, engine="s2pro") as srv, aiohttp.ClientSession() as http:
            async with http.post(srv.speech_url, json={"input": "Hello there."}) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1"
                assert "slots of the S2-Pro pool are taken" in (await r.json())["error"]["message"]
            held.close()
            async with http.post(srv.speech_url, json={"input": "Hello there."}) as r:
                assert r.status == 200 and len(await r.read()) > 44
    finally:
        held.close()
        synth.close()
