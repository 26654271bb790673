"""The pooled decoder (serving/decoder.py) against the single-stream engine, on the tiny fixture
checkpoint in fp32: codes identical and slow logits within 1e-5, with streams joining and leaving
mid-run, a cancelled slot reused, continuation segments and voice-prefix copies."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from agent_runtime.errors import ConfigError
from agent_runtime.tts.s2pro.engine import MIN_PREFILL_ROWS, S2ProEngine
from agent_runtime.tts.s2pro.prompt import VoiceReference
from agent_runtime.tts.s2pro.sampling import SamplingParams
from agent_runtime.tts.s2pro.serving import decoder as decoder_module
from agent_runtime.tts.s2pro.serving.attention import FlexDecodeAttention, MaskedDecodeAttention
from agent_runtime.tts.s2pro.serving.contract import (
    PoolConfig,
    PoolFull,
    PrefillChunk,
    SlotPhase,
    SlotSampling,
)
from agent_runtime.tts.s2pro.serving.decoder import PooledDecoder
from agent_runtime.tts.s2pro.serving.graphs import bucket_for

TEXT = "<|speaker:0|>Hello world, [laugh] this is a test."
TEXT2 = "<|speaker:0|>And a second sentence follows."
TOL = 1e-5


@pytest.fixture(scope="module")
def engine(s2pro_fixtures: Path) -> S2ProEngine:
    return S2ProEngine.load(s2pro_fixtures / "tiny", dtype=torch.float32)


def voice_of(engine: S2ProEngine, frames: int, seed: int) -> VoiceReference:
    cfg = engine.cfg
    codes = np.random.default_rng(seed).integers(0, cfg.codebook_size, size=(cfg.num_codebooks, frames))
    return VoiceReference.create("<|speaker:0|>A reference transcript.", codes, voice_id=f"v{seed}")


@dataclass
class Segment:
    """One segment as the engine ran it: its prompt and what came out."""

    values: Tensor  # (N+1, prompt_len) the whole context's values
    start: int  # first position the engine prefilled for it (before the MIN_PREFILL_ROWS re-run)
    max_frames: int
    cancel_after: int  # stop after this many kept frames (0: never)
    frames: list[Tensor] = field(default_factory=list)  # every generated frame column, the last included
    logits: list[Tensor] = field(default_factory=list)  # windowed slow logits per frame
    ended: bool = False  # by the engine (not cancelled)


@dataclass
class Job:
    """A stream: its voice, sampling, segments (text, max_frames, cancel_after) and join step."""

    voice: VoiceReference | None
    seed: int
    params: SamplingParams
    segments: list[tuple[str, int, int]]
    join_at: int = 0
    expected: list[Segment] = field(default_factory=list)
    got: list[Segment] = field(default_factory=list)
    slot: int | None = None
    slots_used: list[int] = field(default_factory=list)
    done: bool = False


def run_alone(engine: S2ProEngine, job: Job) -> None:
    """The single-stream engine's run of `job` (recording prompts, frames and logits)."""
    stream = engine.open_stream(voice=job.voice, params=job.params, seed=job.seed)
    seen: list[Tensor] = []
    pick = engine._pick_token

    def recording(logits, *args):
        seen.append(logits.clone())
        return pick(logits, *args)

    engine._pick_token = recording  # type: ignore[method-assign]
    try:
        for text, max_frames, cancel_after in job.segments:
            seg = stream.start_segment(text, max_frames=max_frames)
            rec = Segment(stream._values.clone(), seg.start, max_frames, cancel_after)
            kept = 0
            while True:
                before = seg.index
                frame = seg.step()
                if seg.index > before:
                    rec.frames.append(seg.frame.clone())
                if frame is None:
                    rec.ended = not stream.cancelled.is_set()
                    break
                kept += 1
                if kept == cancel_after:
                    stream.cancel()
            stream.end_segment(seg)
            rec.logits = list(seen)
            seen.clear()
            job.expected.append(rec)
    finally:
        del engine._pick_token


def prefill_segment(decoder: PooledDecoder, engine: S2ProEngine, job: Job, seg: Segment, chunk: int) -> None:
    """The segment's prompt into the job's slot as the engine does it (voice prefix copied in)."""
    slot = job.slot
    assert slot is not None
    prompt_len = seg.values.shape[1]
    if not job.got:  # the first segment: the cached voice prefix
        prefix_values, prefix_kv = engine._prefix(job.voice, True)
        if prefix_kv is not None:
            decoder.load_prefix(slot, prefix_kv, prefix_values.shape[1])
    a = max(0, min(seg.start, prompt_len - MIN_PREFILL_ROWS))
    while a < prompt_len:
        b = min(prompt_len, a + chunk)
        decoder.prefill(slot, seg.values[:, a:b], a, last=b == prompt_len)
        a = b
    decoder.begin_segment(slot, seg.max_frames)
    job.got.append(Segment(seg.values, seg.start, seg.max_frames, seg.cancel_after))


def tick(decoder: PooledDecoder, engine: S2ProEngine, job: Job, t: int, chunk: int) -> None:
    """Between steps: join, start the next segment, or leave."""
    if job.done or t < job.join_at:
        return
    if job.slot is None:
        if decoder.free_slots() == 0:
            return
        job.slot = decoder.join(SlotSampling(job.params, seed=job.seed))
        job.slots_used.append(job.slot)
    if decoder.phase(job.slot) is not SlotPhase.IDLE:
        return
    n = len(job.got)
    if n == len(job.expected):
        decoder.leave(job.slot)
        job.slot = None
        job.done = True
        return
    prefill_segment(decoder, engine, job, job.expected[n], chunk)


def run_pooled(decoder: PooledDecoder, engine: S2ProEngine, jobs: list[Job], chunk: int = 4096) -> None:
    by_slot: dict[int, Job] = {}
    for t in range(2000):
        for job in jobs:
            tick(decoder, engine, job, t, chunk)
        if all(job.done for job in jobs):
            return
        by_slot = {job.slot: job for job in jobs if job.slot is not None}
        frames = decoder.step()
        assert decoder.last_slots == [f.slot for f in frames]
        for b, f in enumerate(frames):
            job = by_slot[f.slot]
            seg = job.got[-1]
            seg.frames.append(f.frame)
            seg.logits.append(decoder.last_logits[b].clone())
            if f.codes is None:
                seg.ended = True
                assert decoder.phase(f.slot) is SlotPhase.IDLE
            else:
                np.testing.assert_array_equal(f.codes, f.frame[1:].numpy())
                kept = len(seg.frames)
                if kept == seg.cancel_after:
                    decoder.stop_segment(f.slot)
    raise AssertionError("the pooled run did not finish")


def assert_same(job: Job) -> None:
    assert len(job.got) == len(job.expected)
    for got, want in zip(job.got, job.expected, strict=True):
        assert got.ended == want.ended
        assert len(got.frames) == len(want.frames)
        torch.testing.assert_close(torch.stack(got.frames), torch.stack(want.frames), rtol=0, atol=0)
        for g, w in zip(got.logits, want.logits, strict=True):
            torch.testing.assert_close(g, w, rtol=TOL, atol=TOL)


def make_decoder(engine: S2ProEngine, **kwargs) -> PooledDecoder:
    cfg = PoolConfig(**{"max_streams": 3, "max_len": 1024, "graphs": False, "noise": "generator", **kwargs})
    return PooledDecoder(engine.model, cfg, im_end_id=engine.im_end_id)


P1 = SamplingParams(0.8, 0.8, 30)
P2 = SamplingParams(1.0, 0.9, 5)
P3 = SamplingParams(0.6, 0.95, 12)


def test_pooled_equals_single_stream(engine: S2ProEngine) -> None:
    """Four streams on three slots (different seeds, params, voices): one joins mid-run, one is
    cancelled and its slot reused by a late stream, two continue with a second segment."""
    v1, v2 = voice_of(engine, 20, 1), voice_of(engine, 33, 2)
    jobs = [
        Job(v1, 11, P1, [(TEXT, 14, 0), (TEXT2, 10, 0)]),
        Job(v2, 12, P2, [(TEXT, 20, 4)], join_at=0),  # cancelled after 4 frames
        Job(None, 13, P3, [(TEXT2, 9, 0), (TEXT, 8, 0)], join_at=3),  # joins mid-run
        Job(v1, 14, P2, [(TEXT2, 12, 0)], join_at=5),  # waits for the cancelled slot
    ]
    for job in jobs:
        run_alone(engine, job)
    decoder = make_decoder(engine)
    run_pooled(decoder, engine, jobs)
    for job in jobs:
        assert_same(job)
    assert jobs[3].slots_used == jobs[1].slots_used  # the cancelled stream's slot, reused
    assert decoder.free_slots() == 3 and decoder.active() == 0
    assert decoder.times.steps > 0 and decoder.times.frames >= sum(len(s.frames) for j in jobs for s in j.got)


def test_chunked_prefill_equals_single_stream(engine: S2ProEngine) -> None:
    """A prompt written in chunks of 16 positions (the scheduler's interleaving) gives the same
    frames as the engine's one-piece prefill (up to rounding: logits within 1e-5)."""
    jobs = [Job(voice_of(engine, 20, 3), 21, P1, [(TEXT, 10, 0), (TEXT2, 6, 0)])]
    run_alone(engine, jobs[0])
    decoder = make_decoder(engine, max_streams=1)
    run_pooled(decoder, engine, jobs, chunk=16)
    assert_same(jobs[0])


def test_counter_noise_independent_of_other_slots(engine: S2ProEngine) -> None:
    """With counter noise a slot's frames depend on its seed, not on the other slots running."""

    def frames_of(jobs: list[Job]) -> list[Tensor]:
        for job in jobs:
            job.expected = [Segment(engine.builder.build(TEXT, job.voice), 0, 12, 0)]
        run_pooled(make_decoder(engine, max_streams=4, noise="counter"), engine, jobs)
        return [torch.stack(job.got[0].frames) for job in jobs]

    def job(seed: int, join_at: int = 0) -> Job:
        return Job(None, seed, P1, [], join_at=join_at)

    alone = frames_of([job(5)])[0]
    together = frames_of([job(6), job(5, join_at=2), job(7), job(8, join_at=1)])
    torch.testing.assert_close(together[1], alone, rtol=0, atol=0)
    assert not torch.equal(together[0][:, 1:], together[2][:, 1:])  # other seeds, other codes


def _counter_jobs(engine: S2ProEngine) -> list[Job]:
    jobs = [Job(voice_of(engine, 20, 4), 31, P1, [(TEXT, 8, 0)]), Job(None, 32, P2, [(TEXT2, 8, 0)], join_at=2)]
    for job in jobs:
        job.expected = [Segment(engine.builder.build(job.segments[0][0], job.voice), 0, 8, 0)]
    return jobs


def test_flex_attention_equals_masked(engine: S2ProEngine) -> None:
    """FlexAttention with a length block mask gives the simple masked attention's results."""
    results = []
    for attention in ("masked", "flex"):
        jobs = _counter_jobs(engine)
        cfg = PoolConfig(max_streams=2, max_len=512, graphs=False, noise="counter")
        decoder = PooledDecoder(engine.model, cfg, im_end_id=engine.im_end_id, attention=attention)
        run_pooled(decoder, engine, jobs)
        results.append(jobs)
    for masked, flex in zip(*results, strict=True):
        torch.testing.assert_close(
            torch.stack(flex.got[0].frames), torch.stack(masked.got[0].frames), rtol=0, atol=0
        )
        for f, m in zip(flex.got[0].logits, masked.got[0].logits, strict=True):
            torch.testing.assert_close(f, m, rtol=TOL, atol=TOL)


def test_auto_attention_falls_back_to_masked_when_flex_fails(
    engine: S2ProEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With attention "auto" a flex failure (e.g. its compile on CUDA) warns once and the step runs
    on masked attention with the same frames; an explicit "flex" raises it."""
    cfg = PoolConfig(max_streams=2, max_len=512, graphs=False, noise="counter")
    reference = _counter_jobs(engine)
    run_pooled(PooledDecoder(engine.model, cfg, im_end_id=engine.im_end_id, attention="masked"), engine, reference)

    calls = []

    def broken(self: FlexDecodeAttention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        calls.append(q.shape[0])
        raise RuntimeError("flex attention: no kernel for this device\n(details)")

    monkeypatch.setattr(decoder_module, "flex_by_default", lambda device: True)
    monkeypatch.setattr(FlexDecodeAttention, "__call__", broken)
    decoder = PooledDecoder(engine.model, cfg, im_end_id=engine.im_end_id, attention="auto")
    assert isinstance(decoder.attention, FlexDecodeAttention)
    jobs = _counter_jobs(engine)
    with caplog.at_level("WARNING"):
        run_pooled(decoder, engine, jobs)
    assert len(calls) == 1 and isinstance(decoder.attention, MaskedDecodeAttention)
    assert [r.message for r in caplog.records].count(
        "s2pro pooled step: flex attention failed (RuntimeError: flex attention: no kernel for this device); "
        "falling back to masked attention (reads each slot's whole capacity: slower, same results)"
    ) == 1
    for got, want in zip(jobs, reference, strict=True):
        torch.testing.assert_close(torch.stack(got.got[0].frames), torch.stack(want.got[0].frames), rtol=0, atol=0)

    explicit = PooledDecoder(engine.model, cfg, im_end_id=engine.im_end_id, attention="flex")
    with pytest.raises(RuntimeError, match="no kernel"):
        run_pooled(explicit, engine, _counter_jobs(engine))


def test_pool_full_and_clean_reuse(engine: S2ProEngine) -> None:
    decoder = make_decoder(engine, max_streams=2)
    a = decoder.join(SlotSampling(P1, seed=1))
    b = decoder.join(SlotSampling(P1, seed=2))
    assert {a, b} == {0, 1} and decoder.free_slots() == 0
    with pytest.raises(PoolFull):
        decoder.join(SlotSampling(P1, seed=3))
    values = engine.builder.build(TEXT, None)
    decoder.prefill(a, values, 0, last=True)
    decoder.begin_segment(a, 5)
    decoder.step()
    decoder.step()
    assert decoder.context_length(a) == values.shape[1] + 1
    decoder.leave(a)
    c = decoder.join(SlotSampling(P2, seed=4))
    assert c == a and decoder.phase(c) is SlotPhase.IDLE and decoder.context_length(c) == 0
    assert int(decoder.state.index[c]) == 0 and int(decoder.state.length[c]) == 0
    assert not decoder.state.last_frame[c].any() and not decoder.state.prev[c].any()
    with pytest.raises(RuntimeError, match="needs PREFILLING"):
        decoder.begin_segment(c, 5)
    with pytest.raises(ValueError, match="start inside the context"):
        decoder.prefill(c, values, 3, last=True)


def test_sizes(engine: S2ProEngine) -> None:
    cfg = engine.cfg
    per_slot = PooledDecoder.slot_bytes(cfg, 1024, torch.bfloat16)
    assert PooledDecoder.slots_for_memory(cfg, 1024, 9 * per_slot, torch.bfloat16) == 8
    decoder = make_decoder(engine, max_streams=3)
    slow_kv = (
        2 * cfg.slow.n_layer * 4 * cfg.slow.n_local_heads * 1024 * cfg.slow.head_dim * 4
    )  # 3 slots + scratch
    assert slow_kv < decoder.memory_bytes() < 4 * PooledDecoder.slot_bytes(cfg, 1024, torch.float32) + 2**16
    with pytest.raises(ConfigError, match="max_len"):
        make_decoder(engine, max_len=cfg.cache_len + 8)


def test_segments_ending_on_im_end(engine: S2ProEngine) -> None:
    """With <|im_end|> as likely as a frequent semantic token (its head row copied from one, so the
    two tie and the sampler's tie path runs), segments end on it like the engine's."""
    model = copy.deepcopy(engine.model)
    with torch.no_grad():
        model.embeddings.weight[engine.im_end_id] = model.embeddings.weight[271]
    ending = S2ProEngine(model, engine.tokenizer)
    jobs = [Job(None, seed, P2, [(TEXT, 30, 0), (TEXT2, 30, 0)], join_at=seed % 3) for seed in range(4)]
    for job in jobs:
        run_alone(ending, job)
    run_pooled(make_decoder(ending), ending, jobs)
    for job in jobs:
        assert_same(job)
    lengths = [len(seg.frames) for job in jobs for seg in job.got]
    assert min(lengths) < 30 and max(lengths) > 1


@pytest.mark.parametrize("attention", ["masked", "flex"])
def test_counter_step_has_no_data_dependent_host_work(engine: S2ProEngine, attention: str) -> None:
    """The counter-noise step runs on the meta device (no values): nothing in it reads a tensor
    back to the host (no .item(), boolean indexing or nonzero), the condition for CUDA-graph
    capture. The flex kernel itself has no meta version: a stand-in keeps its shapes."""
    model = copy.deepcopy(engine.model).to("meta")
    cfg = PoolConfig(max_streams=3, max_len=512, graphs=False, noise="counter")
    decoder = PooledDecoder(model, cfg, im_end_id=engine.im_end_id, attention=attention)
    if attention == "flex":
        decoder.attention.fn = lambda q, k, v, **kwargs: torch.empty_like(q)  # type: ignore[union-attr]
    with torch.inference_mode():
        frames, ended = decoder._device_step(torch.tensor([0, 2, 3], device="meta"), None)
    assert frames.shape == (3, engine.cfg.num_codebooks + 1) and ended.shape == (3,)


def test_profiled_step_splits_times(engine: S2ProEngine) -> None:
    cfg = PoolConfig(max_streams=2, max_len=512, graphs=False, noise="counter")
    decoder = PooledDecoder(engine.model, cfg, im_end_id=engine.im_end_id, profile=True)
    jobs = [Job(None, 1, P1, [])]
    jobs[0].expected = [Segment(engine.builder.build(TEXT, None), 0, 6, 0)]
    run_pooled(decoder, engine, jobs)
    t = decoder.times
    assert t.steps == 6 and t.frames == 6
    assert min(t.attention_s, t.gemm_s, t.sampling_s) > 0
    assert t.total_s > t.attention_s + t.gemm_s + t.sampling_s
    t.reset()
    assert t.steps == 0 and t.total_s == 0


def test_prefill_equals_engine_prefill(engine: S2ProEngine) -> None:
    """A slot's prefill is the engine's (same forward, same attend length): the last position's
    outputs and the written K/V are bit-identical; `prefix_kv` reads back what `load_prefix` takes."""
    values = engine.builder.build(TEXT, voice_of(engine, 20, 5))
    cache = engine._new_cache(values.shape[1])
    with torch.inference_mode():
        normed, fast_in = engine._prefill(cache, values, 0)
    decoder = make_decoder(engine, max_streams=2)
    slot = decoder.join(SlotSampling(P1, seed=1))
    slot = decoder.join(SlotSampling(P1, seed=1))  # slot 1: not the pool's first
    decoder.prefill(slot, values[:, :40], 0, last=False)
    assert decoder.phase(slot) is SlotPhase.PREFILLING
    decoder.prefill(slot, values[:, 40:], 40, last=True)
    single = make_decoder(engine, max_streams=2)
    one = single.join(SlotSampling(P1, seed=1))
    single.prefill(one, values, 0, last=True)
    torch.testing.assert_close(single.state.pending_normed[one], normed[0, -1], rtol=0, atol=0)
    torch.testing.assert_close(single.state.pending_fast[one], fast_in[0, -1], rtol=0, atol=0)
    torch.testing.assert_close(decoder.state.pending_normed[slot], normed[0, -1], rtol=TOL, atol=TOL)
    n = values.shape[1]
    for (k, v), (ck, cv) in zip(single.prefix_kv(one, n), cache.snapshot(n), strict=True):
        torch.testing.assert_close(k, ck, rtol=0, atol=0)
        torch.testing.assert_close(v, cv, rtol=0, atol=0)
    other = single.join(SlotSampling(P1, seed=2))
    single.load_prefix(other, single.prefix_kv(one, n), n)
    assert single.context_length(other) == n
    torch.testing.assert_close(single.k[0][:, other, :n], single.k[0][:, one, :n], rtol=0, atol=0)


def test_load_prefix_checks_layout(engine: S2ProEngine) -> None:
    decoder = make_decoder(engine, max_streams=1)
    slot = decoder.join(SlotSampling(P1))
    cfg = engine.cfg.slow
    flash_layout = [(torch.zeros(1, 20, cfg.n_local_heads, cfg.head_dim),) * 2] * cfg.n_layer
    with pytest.raises(ValueError, match="SDPA cache layout"):
        decoder.load_prefix(slot, flash_layout, 20)
    with pytest.raises(ValueError, match="does not fit"):
        decoder.load_prefix(slot, flash_layout[:1], 20)


def test_padding_rows_are_inert(engine: S2ProEngine) -> None:
    """Batches padded to their bucket with the scratch slot (as captured steps are, and eager steps
    on CUDA) give the engine's frames too: the padding rows touch nothing of the real slots."""
    alone = [
        Job(voice_of(engine, 20, 6), 41, P1, [(TEXT, 10, 0), (TEXT2, 6, 0)]),
        Job(None, 42, P3, [(TEXT2, 12, 0)], join_at=2),
    ]
    for job in alone:
        run_alone(engine, job)
    for pad in (False, True):
        jobs = [Job(j.voice, j.seed, j.params, j.segments, j.join_at, j.expected) for j in alone]
        decoder = make_decoder(engine, max_streams=5, buckets=(4,))
        decoder.pad_eager = pad
        run_pooled(decoder, engine, jobs)
        for job in jobs:
            assert_same(job)


def test_bucket_for() -> None:
    assert [bucket_for((1, 2, 4, 8), n) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError, match="largest bucket"):
        bucket_for((1, 2), 3)
    assert PoolConfig(max_streams=6, buckets=(1, 4, 8)).step_buckets() == (1, 4, 6)


def test_prefill_many_equals_one_prefill_per_slot(engine: S2ProEngine) -> None:
    """Three slots' chunks as one forward (one of them a prompt's second chunk, starting at 20)
    write the K/V and first-frame outputs that three `prefill` calls write, within rounding, and
    the frames that follow are the same."""
    prompts = [engine.builder.build(t, None) for t in (TEXT, TEXT2, TEXT + " " + TEXT2)]
    decoders = [make_decoder(engine), make_decoder(engine)]
    for decoder in decoders:
        for i, params in enumerate((P1, P2, P3)):
            assert decoder.join(SlotSampling(params, seed=40 + i)) == i
        decoder.prefill(2, prompts[2][:, :20], 0, last=False)  # its first chunk alone, in both
    chunks = [
        PrefillChunk(0, prompts[0], 0, True),
        PrefillChunk(1, prompts[1], 0, True),
        PrefillChunk(2, prompts[2][:, 20:], 20, True),
    ]
    single, many = decoders
    for c in chunks:
        single.prefill(c.slot, c.values, c.start, last=c.last)
    many.prefill_many(chunks)
    for slot, prompt in enumerate(prompts):
        n = prompt.shape[1]
        assert single.context_length(slot) == many.context_length(slot) == n
        for k_single, k_many in zip(single.k, many.k, strict=True):
            torch.testing.assert_close(k_many[:, slot, :n], k_single[:, slot, :n], rtol=TOL, atol=TOL)
    torch.testing.assert_close(many.state.pending_normed, single.state.pending_normed, rtol=TOL, atol=TOL)
    frames: list[list[torch.Tensor]] = [[], []]
    for decoder, out in zip(decoders, frames, strict=True):
        for slot in range(3):
            decoder.begin_segment(slot, 6)
        for _ in range(6):
            out += [f.frame for f in decoder.step()]
    torch.testing.assert_close(torch.stack(frames[1]), torch.stack(frames[0]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="one chunk per slot"):
        many.prefill_many([PrefillChunk(0, prompts[0][:, :16], 0, False)] * 2)


_ATEN = torch.ops.aten
# ops that read a weight whole (linear layers, norms); embedding lookups read rows only
_WEIGHT_OPS = frozenset({_ATEN.linear.default, _ATEN.mm.default, _ATEN.addmm.default, _ATEN.bmm.default,
                         _ATEN.mul.Tensor, _ATEN.rms_norm.default})  # fmt: skip


class _WeightReads(TorchDispatchMode):
    """Sums the bytes of parameter tensors (or views of them) that weight-reading ops take as
    inputs: what a step reads of the weights."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _WEIGHT_OPS:
            for a in args:
                if isinstance(a, Tensor) and a.untyped_storage().data_ptr() in self.storages:
                    self.bytes += a.numel() * a.element_size()
        return func(*args, **(kwargs or {}))


def test_step_read_bytes_is_what_a_batch_one_step_reads(engine: S2ProEngine) -> None:
    """`step_read_bytes` (bench-serve's read floor) equals the weight bytes an eager batch-1 step
    hands to its matmuls and norms, the fast AR's weights once per codebook position."""
    decoder = make_decoder(engine)
    slot = decoder.join(SlotSampling(P1, seed=1))
    decoder.prefill(slot, engine.builder.build(TEXT, None), 0, last=True)
    decoder.begin_segment(slot, 4)
    decoder.step()  # the first step of a segment: the same weights, but warm everything up first
    reads = _WeightReads(engine.model)
    with reads:
        decoder.step()
    expected = decoder.step_read_bytes()
    fast = sum(p.numel() * p.element_size() for p in engine.model.fast_layers.parameters())
    assert expected > engine.cfg.num_codebooks * fast  # the fast layers counted once per codebook
    assert reads.bytes == expected
