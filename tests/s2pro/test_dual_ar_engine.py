"""Engine vs the faithful naive baseline on random configs: exactness, prefix cache, continuation,
cancellation, async streaming, limits. Everything runs single-threaded on tiny random models."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from agent_runtime.tts.s2pro.engine import S2ProEngine, naive_generate
from agent_runtime.tts.s2pro.kv_cache import decode_kv_len, prefill_kv_len
from agent_runtime.tts.s2pro.model import DualARConfig, DualARTransformer, FastARStepper, TransformerConfig
from agent_runtime.tts.s2pro.prompt import PromptError, S2ProTokenizer, VoiceReference
from agent_runtime.tts.s2pro.random_model import SyntheticTokenizer
from agent_runtime.tts.s2pro.sampling import SamplingParams, aligned_window


def make_config(
    vocab: int = 320,
    codebooks: int = 4,
    codebook_size: int = 32,
    sem_begin: int = 268,
    dim: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 16,
    fast_dim: int | None = None,
    max_seq_len: int = 2600,
    s1_style: bool = False,
    tied: bool = True,
    fast_qk_norm: bool = False,
) -> DualARConfig:
    fd = fast_dim or dim
    return DualARConfig(
        vocab_size=vocab,
        slow=TransformerConfig(2, dim, heads, kv_heads, head_dim, 96, qk_norm=not s1_style),
        fast=TransformerConfig(2, fd, heads, kv_heads, head_dim, 80, qk_norm=fast_qk_norm),
        num_codebooks=codebooks,
        codebook_size=codebook_size,
        semantic_begin_id=sem_begin,
        semantic_end_id=sem_begin + codebook_size - 1,
        max_seq_len=max_seq_len,
        tie_word_embeddings=tied,
        scale_codebook_embeddings=not s1_style,
        norm_fastlayer_input=not s1_style,
    )


def make_model(cfg: DualARConfig, dtype: torch.dtype, seed: int = 0, std: float = 0.3) -> DualARTransformer:
    torch.manual_seed(seed)
    model = DualARTransformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, std if "embeddings" in name or "output" in name else 0.08)
    return model.to(dtype).eval()


def make_engine(cfg: DualARConfig, dtype: torch.dtype, tokenizer=None, seed: int = 0) -> S2ProEngine:
    tok = tokenizer or SyntheticTokenizer(cfg.semantic_begin_id, cfg.codebook_size)
    return S2ProEngine(make_model(cfg, dtype, seed), tok)


def random_voice(cfg: DualARConfig, frames: int = 40, seed: int = 0) -> VoiceReference:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, cfg.codebook_size, size=(cfg.num_codebooks, frames))
    return VoiceReference.create("<|speaker:0|>A reference transcript.", codes, voice_id="v")


TEXT = "<|speaker:0|>Hello world, [laugh] this is a test."
PARAMS = SamplingParams(temperature=0.8, top_p=0.8, top_k=30)


def naive_codes(engine: S2ProEngine, prompt: torch.Tensor, params: SamplingParams, frames: int, gen) -> np.ndarray:
    full = naive_generate(engine.model, prompt, engine.im_end_id, params, frames, gen)
    return full[1:, prompt.shape[1] : -1].numpy()


def assert_engine_matches_naive(engine: S2ProEngine, voice, params: SamplingParams, frames: int, seed: int) -> None:
    prompt = engine.builder.build(TEXT, voice)
    gen = torch.Generator().manual_seed(seed)
    expected = naive_codes(engine, prompt, params, frames, gen)
    stream = engine.open_stream(voice=voice, params=params, seed=seed, max_frames=frames)
    np.testing.assert_array_equal(stream.generate(TEXT), expected)


CONFIGS = {
    "s2": {},
    "s1-style": {"s1_style": True},
    "project-in": {"fast_dim": 48, "head_dim": 12},
    "mha-untied": {"kv_heads": 4, "tied": False},
    "odd-vocab": {"vocab": 1000, "sem_begin": 1000 - 64 - 2, "codebook_size": 64, "codebooks": 3},
    "short-context": {"max_seq_len": 2300},
    "fast-qk-norm": {"fast_qk_norm": True, "kv_heads": 1},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_equals_naive(name: str, dtype: torch.dtype) -> None:
    cfg = make_config(**CONFIGS[name])
    engine = make_engine(cfg, dtype, seed=len(name))
    voice = random_voice(cfg)
    assert_engine_matches_naive(engine, voice, PARAMS, 16, seed=3)
    assert_engine_matches_naive(engine, None, SamplingParams(1.0, 0.9, 30), 12, seed=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_engine_equals_naive_many_seeds(dtype: torch.dtype) -> None:
    cfg = make_config()
    engine = make_engine(cfg, dtype, seed=7)
    voice = random_voice(cfg, frames=25, seed=1)
    for seed, params in enumerate(
        [SamplingParams(0.7, 0.7, 30), SamplingParams(1.5, 1.0, 100), SamplingParams(0.3, 0.95, 3), SamplingParams(1.0, 0.5, 1)]
    ):
        assert_engine_matches_naive(engine, voice, params, 10, seed=seed)


def test_prefix_cache_hit_gives_same_output() -> None:
    cfg = make_config()
    engine = make_engine(cfg, torch.float32, seed=2)
    voice = random_voice(cfg, frames=60)
    outs = []
    for use_cache in (False, True, True):
        stream = engine.open_stream(voice=voice, params=PARAMS, seed=11, max_frames=14, use_prefix_cache=use_cache)
        outs.append(stream.generate(TEXT))
    assert engine.prefix_misses == 1 and engine.prefix_hits == 1
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    engine.prepare_voice(random_voice(cfg, frames=61))
    assert engine.prefix_misses == 2
    # an equal voice built separately hits the same entry (content hash)
    same = VoiceReference.create(voice.texts[0], voice.codes[0].copy())
    engine.open_stream(voice=same, params=PARAMS, seed=11)
    assert engine.prefix_hits == 2 and engine.prefix_misses == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_continuation_equals_multiturn_oneshot(dtype: torch.dtype) -> None:
    """add_text twice == generate_long with two batches (the reference re-prefills everything)."""
    cfg = make_config()
    engine = make_engine(cfg, dtype, seed=5)
    voice = random_voice(cfg)
    texts = ["<|speaker:0|>First sentence of the reply.", "<|speaker:0|>And the second one, [whisper] softly."]
    gen = torch.Generator().manual_seed(9)
    prompt = engine.builder.build(texts[0], voice)
    first = naive_codes(engine, prompt, PARAMS, 12, gen)
    prompt2 = torch.cat(
        [prompt, engine.builder.assistant_codes_end(torch.from_numpy(first)), engine.builder.user_turn(texts[1])], dim=1
    )
    second = naive_codes(engine, prompt2, PARAMS, 12, gen)

    stream = engine.open_stream(voice=voice, params=PARAMS, seed=9, max_frames=12)
    np.testing.assert_array_equal(stream.generate(texts[0]), first)
    np.testing.assert_array_equal(stream.generate(texts[1]), second)
    assert stream.context_length == prompt2.shape[1]


def test_generate_long_batches_like_the_reference() -> None:
    cfg = make_config()
    engine = make_engine(cfg, torch.float32, seed=6)
    voice = random_voice(cfg, frames=20)
    text = "<|speaker:0|>One two three. <|speaker:1|>Four five six. <|speaker:0|>Seven."
    batches = ["<|speaker:0|>One two three.\n<|speaker:1|>Four five six.", "<|speaker:0|>Seven."]
    gen = torch.Generator().manual_seed(4)
    prompt = engine.builder.system_turn(voice)
    expected = []
    for batch in batches:
        prompt = torch.cat([prompt, engine.builder.user_turn(batch)], dim=1)
        codes = naive_codes(engine, prompt, PARAMS, 10, gen)
        expected.append(codes)
        prompt = torch.cat([prompt, engine.builder.assistant_codes_end(torch.from_numpy(codes))], dim=1)
    got = engine.open_stream(voice=voice, params=PARAMS, seed=4, max_frames=10).generate_long(text, chunk_length=60)
    assert len(got) == 2
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


def test_cancel_between_frames_and_continue() -> None:
    cfg = make_config()
    engine = make_engine(cfg, torch.float32, seed=1)
    stream = engine.open_stream(voice=random_voice(cfg), params=PARAMS, seed=2, max_frames=50)
    got = []
    for frame in stream.add_text(TEXT):
        got.append(frame)
        if len(got) == 3:
            stream.cancel()
    assert len(got) == 3
    assert stream.segments_codes[-1].shape == (cfg.num_codebooks, 3)
    # the truncated reply stays in context; the next segment continues after it
    before = stream.context_length
    more = stream.generate("<|speaker:0|>Next.", max_frames=4)
    assert more.shape == (cfg.num_codebooks, 3)
    assert stream.context_length > before + 3


def test_abandoned_iterator_ends_segment() -> None:
    cfg = make_config()
    engine = make_engine(cfg, torch.float32, seed=1)
    stream = engine.open_stream(params=PARAMS, seed=2, max_frames=30)
    it = stream.add_text(TEXT)
    next(it)
    it.close()
    assert stream.segments_codes[-1].shape[1] == 1
    assert stream.generate("again", max_frames=3).shape[1] == 2


async def test_async_stream_equals_sync_and_cancels() -> None:
    cfg = make_config()
    engine = make_engine(cfg, torch.float32, seed=3)
    voice = random_voice(cfg)
    sync = engine.open_stream(voice=voice, params=PARAMS, seed=5, max_frames=10).generate(TEXT)
    stream = engine.open_stream(voice=voice, params=PARAMS, seed=5, max_frames=10)
    frames = [f async for f in stream.add_text_async(TEXT)]
    np.testing.assert_array_equal(np.stack(frames, axis=1), sync)

    stream2 = engine.open_stream(voice=voice, params=PARAMS, seed=5, max_frames=10)
    got = []
    async for f in stream2.add_text_async(TEXT):
        got.append(f)
        if len(got) == 2:
            stream2.cancel()
    assert len(got) == 2

    engine.clear_prefix_cache()
    stream3 = await engine.open_stream_async(voice, params=PARAMS, seed=5, max_frames=10)
    np.testing.assert_array_equal(np.stack([f async for f in stream3.add_text_async(TEXT)], axis=1), sync)

    # two concurrent streams through the shared worker keep their own outputs
    async def run(seed: int) -> np.ndarray:
        s = engine.open_stream(voice=voice, params=PARAMS, seed=seed, max_frames=8)
        return np.stack([f async for f in s.add_text_async(TEXT)], axis=1)

    a, b = await asyncio.gather(run(5), run(6))
    np.testing.assert_array_equal(a, sync[:, :7])
    np.testing.assert_array_equal(b, engine.open_stream(voice=voice, params=PARAMS, seed=6, max_frames=8).generate(TEXT))
    engine.close()


def test_stop_and_trim_rules() -> None:
    cfg = make_config()
    engine = make_engine(cfg, torch.float32, seed=4)
    with torch.no_grad():  # make <|im_end|> win often
        engine.model.embeddings.weight[engine.im_end_id] *= 6
    prompt = engine.builder.build(TEXT, None)
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        full = naive_generate(engine.model, prompt, engine.im_end_id, PARAMS, 40, gen)
        gen_tokens = full[0, prompt.shape[1] :].tolist()
        assert engine.im_end_id not in gen_tokens[1:-1]  # stop on the first decode-step im_end
        codes = engine.open_stream(params=PARAMS, seed=seed, max_frames=40).generate(TEXT)
        assert codes.shape[1] == len(gen_tokens) - 1  # the last frame is always dropped
        np.testing.assert_array_equal(codes, full[1:, prompt.shape[1] : -1].numpy())
    stream = engine.open_stream(params=PARAMS, seed=0)
    assert stream.generate(TEXT, max_frames=1).shape == (cfg.num_codebooks, 0)


def test_prompt_too_long_is_refused() -> None:
    cfg = make_config(max_seq_len=2100)
    engine = make_engine(cfg, torch.float32)
    stream = engine.open_stream(params=PARAMS, seed=0)
    with pytest.raises(PromptError, match="prompt is too long"):
        stream.generate("x" * 200)


def test_engine_on_fixture_tokenizer(s2pro_fixtures: Path) -> None:
    tok = S2ProTokenizer(s2pro_fixtures / "tiny")
    cfg = make_config()
    engine = make_engine(cfg, torch.bfloat16, tokenizer=tok, seed=8)
    assert_engine_matches_naive(engine, random_voice(cfg), PARAMS, 12, seed=1)


# ---- the measured rules the engine's shortcuts rely on -----------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_attend_length_rules_are_exact(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    heads, hd, cache_len = 4, 16, 2600
    k = torch.zeros(1, heads, cache_len, hd, dtype=dtype)
    v = torch.zeros_like(k)
    k[:, :, :1200] = torch.randn(1, heads, 1200, hd).to(dtype)
    v[:, :, :1200] = torch.randn(1, heads, 1200, hd).to(dtype)
    slots = torch.arange(cache_len)
    for pos in (0, 5, 63, 64, 200, 511, 700, 1199):
        q = torch.randn(1, heads, 1, hd).to(dtype)
        mask = (slots <= pos)[None, None, None]
        n = decode_kv_len(pos, cache_len)
        with sdpa_kernel(SDPBackend.MATH):
            full = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            short = F.scaled_dot_product_attention(q, k[:, :, :n], v[:, :, :n], attn_mask=mask[..., :n])
        assert torch.equal(full, short), pos
    for end in (20, 300, 513, 1200):
        start = end // 3
        q = torch.randn(1, heads, end - start, hd).to(dtype)
        mask = (slots[None, :] <= torch.arange(start, end)[:, None])[None, None]
        n = prefill_kv_len(end, cache_len)
        full = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        short = F.scaled_dot_product_attention(q, k[:, :, :n], v[:, :, :n], attn_mask=mask[..., :n])
        assert torch.equal(full, short), end


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_head_window_equals_full_logits_real_vocab(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    vocab, dim = 155_776, 64
    weight = (torch.randn(vocab, dim) * 0.05).to(dtype)
    off, end = aligned_window(151_645, 155_773, vocab)
    assert off % 128 == 0 and end == vocab
    for _ in range(4):
        x = torch.randn(1, 1, dim).to(dtype)
        assert torch.equal(F.linear(x, weight)[..., off:end], F.linear(x, weight[off:end]))


def test_fp32_prefill_rows_are_row_count_invariant() -> None:
    cfg = make_config()
    model = make_model(cfg, torch.float32)
    x = torch.randn(1, 40, cfg.slow.dim)
    w = model.layers[0].feed_forward.w1.weight
    full = F.linear(x, w)
    for rows in (16, 17, 24, 39):
        assert torch.equal(F.linear(x[:, -rows:], w), full[:, -rows:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("fast_qk_norm", [False, True])
def test_fast_stepper_equals_module_path(dtype: torch.dtype, fast_qk_norm: bool) -> None:
    cfg = make_config(fast_qk_norm=fast_qk_norm, fast_dim=48, head_dim=12)
    model = make_model(cfg, dtype, seed=3)
    stepper = FastARStepper(model)
    a, b = model.new_fast_caches(), model.new_fast_caches()
    with torch.inference_mode():
        for pos in range(cfg.num_codebooks):
            x = torch.randn(1, 1, cfg.fast.dim).to(dtype)
            ref = model.forward_fast(x, pos, a)
            got = stepper.step(x, pos, b)
            assert torch.equal(ref, got)
            for ka, kb in zip(a, b, strict=True):
                assert torch.equal(ka.k, kb.k) and torch.equal(ka.v, kb.v)


def test_config_replace_keeps_frozen() -> None:
    cfg = make_config()
    assert replace(cfg, max_seq_len=4096).cache_len == 4096


def test_compile_refused_on_cpu() -> None:
    from agent_runtime.errors import ConfigError

    cfg = make_config()
    model, tok = make_model(cfg, torch.float32), SyntheticTokenizer(cfg.semantic_begin_id, 32)
    with pytest.raises(ConfigError, match="CUDA"):
        S2ProEngine(model, tok, compile_fast=True)
    with pytest.raises(ConfigError, match="CUDA"):
        S2ProEngine(model, tok, compile_slow=True)


def test_add_text_normalises_speaker_turns_like_generate_long() -> None:
    cfg = make_config()
    engine = make_engine(cfg, torch.float32, seed=2)
    messy = "dropped <|speaker:0|>  Hi there.  <|speaker:1|> Bye. "
    a = engine.open_stream(params=PARAMS, seed=3, max_frames=6)
    b = engine.open_stream(params=PARAMS, seed=3, max_frames=6)
    np.testing.assert_array_equal(a.generate(messy), b.generate("<|speaker:0|>  Hi there.\n<|speaker:1|> Bye."))
    assert a.context_length == b.context_length
    raw = engine.open_stream(params=PARAMS, seed=3, max_frames=6)
    list(raw.add_text(messy, raw=True))
    assert raw.context_length > a.context_length
