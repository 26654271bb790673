"""Batched decode across streams (batched.py and the engine's step rounds), on tiny random models.

A GEMM over B rows need not give the bits of B one-row GEMMs (fp32 on CPU does not), so the
batched slow-AR states are compared with a tolerance. The stream-level tests run in bf16, where this
CPU's GEMMs are row-count invariant (checked first, on the model's own weights): there a batched
step must give exactly the single-stream step, so codes are compared exactly and cannot flake.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from agent_runtime.errors import ConfigError
from agent_runtime.tts.s2pro import engine as engine_module
from agent_runtime.tts.s2pro.batched import BatchedFastAR, decode_slow_batch
from agent_runtime.tts.s2pro.engine import S2ProEngine, S2ProStream
from agent_runtime.tts.s2pro.model import DualARTransformer
from agent_runtime.tts.s2pro.random_model import SyntheticTokenizer
from agent_runtime.tts.s2pro.synthesizer import S2ProSynthesizer, load_local
from tests.s2pro.synth_support import audio_of, speak

from .test_dual_ar_engine import PARAMS, TEXT, make_config, make_model, random_voice
from .test_flash_decode import CPU_KERNEL, random_frames


def new_engine(model: DualARTransformer, **kwargs) -> S2ProEngine:
    cfg = model.cfg
    return S2ProEngine(model, SyntheticTokenizer(cfg.semantic_begin_id, cfg.codebook_size), **kwargs)


def require_row_invariant_gemms(model: DualARTransformer, rows: int = 4) -> None:
    """Skip where a GEMM over `rows` rows differs from one-row GEMMs for the model's weights."""
    gen = torch.Generator().manual_seed(0)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)] + [model.output_weight()]
    for w in weights:
        x = torch.randn(rows, 1, w.shape[1], generator=gen).to(w.dtype)
        one_by_one = torch.cat([F.linear(x[b : b + 1], w) for b in range(rows)])
        if not torch.equal(F.linear(x, w), one_by_one):
            pytest.skip(f"{w.dtype} GEMMs over {rows} rows differ from one-row GEMMs on this CPU")


# ---- (a) the batched forward against the single-stream one ------------------------------------


@pytest.mark.parametrize("layout", ["sdpa", "flash"])
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 2e-5), (torch.bfloat16, 5e-2)], ids=["fp32", "bf16"]
)
def test_batched_slow_states_equal_single_stream(dtype: torch.dtype, tol: float, layout: str) -> None:
    """Three streams at different positions and context lengths (one growing its cache past 512
    slots mid-way): hidden states, fast-AR inputs and head logits of the batched step match the
    single-stream step at every position."""
    cfg = make_config()
    model = make_model(cfg, dtype, seed=1)
    engine = new_engine(model, attention=layout, flash_kernel=CPU_KERNEL)
    builder = engine.builder
    prompts = [
        builder.build(TEXT, random_voice(cfg, frames=30, seed=1)),
        builder.build("<|speaker:0|>Short.", None),
        builder.build(TEXT, random_voice(cfg, frames=310, seed=2)),
    ]
    assert len({p.shape[1] for p in prompts}) == 3 and 500 < prompts[2].shape[1] < 512
    caches = [engine._new_cache(p.shape[1]) for p in prompts]
    steps = 14
    frames = [random_frames(engine, steps, seed=b) for b in range(len(prompts))]
    with torch.inference_mode():
        for cache, prompt in zip(caches, prompts, strict=True):
            engine._prefill(cache, prompt, 0, want_output=False)
        for t in range(steps):
            positions = [p.shape[1] + t for p in prompts]
            kv_lens = [engine._decode_slots(c, pos) for c, pos in zip(caches, positions, strict=True)]
            values = torch.stack([f[:, t] for f in frames]).view(len(prompts), -1, 1)
            normed, fast_in = decode_slow_batch(model, values, [c.layers for c in caches], positions, kv_lens, True)
            # the single steps rewrite the same slots: every batched step sees the single-stream history
            for b, (cache, pos) in enumerate(zip(caches, positions, strict=True)):
                want_normed, want_fast_in = engine._decode(cache, frames[b][:, t], pos)
                torch.testing.assert_close(normed[b : b + 1], want_normed, rtol=tol, atol=tol)
                torch.testing.assert_close(fast_in[b : b + 1], want_fast_in, rtol=tol, atol=tol)
                torch.testing.assert_close(
                    F.linear(normed[b : b + 1], engine._head_w), F.linear(want_normed, engine._head_w), rtol=tol, atol=tol
                )
    assert caches[2].capacity > 512


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 2e-5), (torch.bfloat16, 5e-2)], ids=["fp32", "bf16"])
def test_batched_fast_ar_equals_single_stream(dtype: torch.dtype, tol: float) -> None:
    """Teacher-forced (every stream is fed fixed codes): each codebook's logits of the batched fast
    AR match the single-stream stepper's, and the first code comes from the slow token."""
    cfg = make_config(fast_dim=48, head_dim=12, fast_qk_norm=True)
    model = make_model(cfg, dtype, seed=2)
    engine = new_engine(model)
    batch = 3
    gen = torch.Generator().manual_seed(0)
    fast_in = torch.randn(batch, 1, cfg.fast.dim, generator=gen).to(dtype)
    tokens = [cfg.semantic_begin_id + 5, cfg.semantic_begin_id + 17, engine.im_end_id]
    forced = torch.randint(0, cfg.codebook_size, (batch, cfg.num_codebooks), generator=gen).tolist()

    def recorder(b: int, seen: list[Tensor]):
        def sample(logits: Tensor) -> int:
            seen.append(logits.clone())
            return forced[b][len(seen)]

        return sample

    batched_seen: list[list[Tensor]] = [[] for _ in range(batch)]
    with torch.inference_mode():
        fast = BatchedFastAR(model, engine._fast_stepper, max_batch=4)
        codes = fast.codes(fast_in, tokens, [recorder(b, batched_seen[b]) for b in range(batch)])
        for b in range(batch):
            single_seen: list[Tensor] = []
            single = engine_module._fast_codes(
                model, fast_in[b], tokens[b], model.new_fast_caches(), recorder(b, single_seen), engine._fast_stepper
            )
            assert codes[b] == single
            for got, want in zip(batched_seen[b], single_seen, strict=True):
                torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert [c[0] for c in codes] == [5, 17, 0]
    with pytest.raises(ValueError, match=r"1\.\.4"):
        fast.codes(torch.zeros(5, 1, cfg.fast.dim, dtype=dtype), [0] * 5, [lambda x: 0] * 5)


# ---- (b) concurrent async streams ---------------------------------------------------------------


async def collect(stream: S2ProStream, text: str, max_frames: int, cancel_after: int = 0) -> np.ndarray:
    got = []
    async for frame in stream.add_text_async(text, max_frames=max_frames):
        assert frame.dtype == np.int64 and frame.shape == (stream.engine.cfg.num_codebooks,)
        got.append(frame)
        if len(got) == cancel_after:
            stream.cancel()
    return np.stack(got, axis=1) if got else np.zeros((stream.engine.cfg.num_codebooks, 0), dtype=np.int64)


async def test_concurrent_streams_batched_equal_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four async streams on one batching engine (different seeds, voices, text lengths; one joins
    late, one is cancelled, one hits its frame budget): each gives exactly what it gives alone."""
    monkeypatch.setattr(engine_module, "GATHER_S", 0.05)  # make the rounds batch even on a busy CPU
    cfg = make_config()
    model = make_model(cfg, torch.bfloat16, seed=3)
    require_row_invariant_gemms(model)
    engine = new_engine(model, batch_decode="on", max_batch=3)
    voices = [random_voice(cfg, frames=30, seed=1), random_voice(cfg, frames=55, seed=2), None]
    long_text = TEXT + " And then a second, rather longer sentence follows it."
    # (voice, seed, text, max_frames, cancel after this many frames)
    specs = [
        (voices[0], 1, long_text, 16, 0),
        (voices[1], 2, "<|speaker:0|>Hi.", 5, 0),  # stops at its budget: 4 kept frames
        (voices[2], 3, TEXT, 12, 0),  # joins late
        (voices[0], 4, TEXT, 30, 5),  # cancelled after its 5th frame
    ]

    def open_stream(spec) -> S2ProStream:
        voice, seed, _, _, _ = spec
        return engine.open_stream(voice=voice, params=PARAMS, seed=seed)

    alone = [await collect(open_stream(s), s[2], s[3], s[4]) for s in specs]
    assert engine.batch_stats.forwards == 0  # one stream at a time never batches
    assert [a.shape[1] for a in alone[1:]] == [4, 11, 5]

    first_frames = asyncio.Event()

    async def first(spec) -> np.ndarray:
        stream = open_stream(spec)
        got = []
        async for frame in stream.add_text_async(spec[2], max_frames=spec[3]):
            got.append(frame)
            if len(got) == 3:
                first_frames.set()
        return np.stack(got, axis=1)

    async def late(spec) -> np.ndarray:
        await first_frames.wait()
        return await collect(open_stream(spec), spec[2], spec[3], spec[4])

    together = await asyncio.gather(
        first(specs[0]), collect(open_stream(specs[1]), *specs[1][2:]), late(specs[2]), collect(open_stream(specs[3]), *specs[3][2:])
    )
    for got, want in zip(together, alone, strict=True):
        np.testing.assert_array_equal(got, want)
    stats = engine.batch_stats
    assert stats.forwards > 0 and max(stats.sizes) <= 3
    assert stats.frames == sum(size * n for size, n in stats.sizes.items())
    engine.close()


async def test_batched_streams_stop_on_im_end_like_alone() -> None:
    """With <|im_end|> likely, concurrent batched streams stop where they stop alone."""
    cfg = make_config()
    model = make_model(cfg, torch.bfloat16, seed=4)
    with torch.no_grad():
        model.embeddings.weight[SyntheticTokenizer(cfg.semantic_begin_id, cfg.codebook_size).im_end_id] *= 6
    require_row_invariant_gemms(model)
    engine = new_engine(model, batch_decode="on")
    seeds = range(4)
    alone = [await collect(engine.open_stream(params=PARAMS, seed=s), TEXT, 40) for s in seeds]
    assert any(a.shape[1] < 39 for a in alone)  # some stream ends on <|im_end|> before its budget
    together = await asyncio.gather(*(collect(engine.open_stream(params=PARAMS, seed=s), TEXT, 40) for s in seeds))
    for got, want in zip(together, alone, strict=True):
        np.testing.assert_array_equal(got, want)
    engine.close()


# ---- (c) settings ------------------------------------------------------------------------------


def test_batch_decode_setting() -> None:
    model = make_model(make_config(), torch.float32)
    auto = new_engine(model)
    assert auto.batch_decode is False and auto.scheduler.max_batch == 1  # auto on CPU = off (bit-exact)
    assert new_engine(model, batch_decode="on").batch_decode is True
    assert new_engine(model, batch_decode="on", max_batch=5).scheduler.max_batch == 5
    assert new_engine(model, batch_decode="on", max_batch=1).batch_decode is False
    assert new_engine(model, batch_decode="off").scheduler.max_batch == 1
    with pytest.raises(ConfigError, match="batch_decode"):
        new_engine(model, batch_decode="yes")
    with pytest.raises(ConfigError, match="max_batch"):
        new_engine(model, batch_decode="on", max_batch=0)


# ---- (d) rounds batch ---------------------------------------------------------------------------


def run_rounds(engine: S2ProEngine, streams: list[S2ProStream], rounds: int, cancel: dict[int, int]) -> list[list]:
    """Drive one segment per stream in lock-step rounds (all steps queued from one model-thread
    job, so each round holds every live step); `cancel` {round: stream index} cancels before it."""
    sched = engine.scheduler
    segments = sched.submit(lambda: [s.start_segment(TEXT, max_frames=10) for s in streams]).result()
    out: list[list] = [[] for _ in streams]
    for r in range(rounds):
        if r in cancel:
            streams[cancel[r]].cancel()
        futs: list[Future] = sched.submit(lambda: [sched.submit_step(seg) for seg in segments]).result()
        for got, fut in zip(out, futs, strict=True):
            got.append(fut.result())
    sched.submit(lambda: [s.end_segment(seg) for s, seg in zip(streams, segments, strict=True)]).result()
    return out


def test_rounds_batch_decode_steps() -> None:
    """Five streams in lock-step (one at the 512-slot cache boundary): the prefill round runs singly,
    then every round's decode steps are batched into groups of at most max_batch (3 + 2), a cancelled
    stream leaves the batch, and each stream's frame count and stop rule are those of a stream alone."""
    cfg = make_config()
    model = make_model(cfg, torch.float32, seed=5)
    engine = new_engine(model, batch_decode="on", max_batch=3)
    voices = [random_voice(cfg, frames=310), *(random_voice(cfg, seed=i % 2) for i in range(1, 5))]
    streams = [engine.open_stream(voice=voice, params=PARAMS, seed=i) for i, voice in enumerate(voices)]
    out = run_rounds(engine, streams, rounds=11, cancel={4: 1})
    assert streams[0].cache.capacity > 512  # its cache grew during a batched step
    for i, frames in enumerate(out):
        kept = [f for f in frames if f is not None]
        assert frames[: len(kept)] == kept  # None only at the end
        assert len(kept) == (4 if i == 1 else 9)  # budget 10 keeps 9; stream 1 cancelled after 4
        assert all(f.shape == (cfg.num_codebooks,) and (f >= 0).all() and (f < cfg.codebook_size).all() for f in kept)
    # round 0: prefills; rounds 1-3: 3 + 2; rounds 4-9: 2 + 2 (stream 1 cancelled before round 4;
    # round 9 makes the frame that reaches the budget, dropped); round 10: every segment is over
    assert engine.batch_stats.sizes == collections.Counter({3: 3, 2: 3 + 6 * 2})
    assert engine.batch_stats.forwards == 3 * 2 + 6 * 2


def test_unbatched_rounds_stay_bit_exact() -> None:
    """batch_decode off (the CPU default): lock-step rounds give each stream its codes alone, bit for bit."""
    cfg = make_config()
    model = make_model(cfg, torch.float32, seed=6)
    engine = new_engine(model)
    streams = [engine.open_stream(voice=random_voice(cfg), params=PARAMS, seed=i) for i in range(3)]
    out = run_rounds(engine, streams, rounds=10, cancel={})
    assert engine.batch_stats.forwards == 0
    for i, frames in enumerate(out):
        alone = engine.open_stream(voice=random_voice(cfg), params=PARAMS, seed=i).generate(TEXT, max_frames=10)
        np.testing.assert_array_equal(np.stack([f for f in frames if f is not None], axis=1), alone)


async def test_local_backend_batches_concurrent_replies(s2pro_fixtures: Path) -> None:
    """`batch_decode` / `max_batch` through `load_local` (the `s2pro` TTS options): three replies
    started together on the fixture checkpoint in bf16 batch their decode steps through the backend's
    job chains and each reply's audio is exactly its audio alone."""
    fixtures = s2pro_fixtures

    def load(**options) -> S2ProSynthesizer:
        return S2ProSynthesizer(
            load_local(
                fixtures / "tiny", fixtures / "codec_tiny.pth", fixtures / "codec_tiny.json",
                dtype="bf16", seed=5, max_frames_per_segment=8, **options,
            )
        )  # fmt: skip

    with pytest.raises(ConfigError, match="batch_decode"):
        load(batch_decode="always")
    synth = load(batch_decode="on", max_batch=4)
    engine = synth.backend.engine  # type: ignore[attr-defined]
    assert engine.batch_decode and engine.scheduler.max_batch == 4
    assert synth.describe()["batch_decode"] == "on, up to 4"
    require_row_invariant_gemms(engine.model)
    texts = ["Hello there, how are you today?", "Sure, we open at nine. See you soon!", "One more reply, please."]
    alone = [audio_of(await speak(synth, t)) for t in texts]
    assert engine.batch_stats.forwards == 0
    gate = threading.Event()
    engine.scheduler.submit(gate.wait)  # hold the model thread until every reply has queued its start
    replies = asyncio.gather(*(speak(synth, t) for t in texts))
    await asyncio.sleep(0.2)
    gate.set()
    for got, want in zip(await replies, alone, strict=True):
        np.testing.assert_array_equal(audio_of(got), want)
    assert engine.batch_stats.forwards > 0 and max(engine.batch_stats.sizes) <= 3
    synth.close()
