"""Prompt layout (spec 3.2/3.3) and tokenizer checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from agent_runtime.errors import AgentRuntimeError, ModelLoadError
from agent_runtime.tts.s2pro.prompt import (
    PromptBuilder,
    PromptError,
    S2ProTokenizer,
    VoiceReference,
    group_turns_into_batches,
    one_batch_text,
    split_batches,
    split_text_by_speaker,
)


@pytest.fixture(scope="module")
def tok(s2pro_fixtures: Path) -> S2ProTokenizer:
    return S2ProTokenizer(s2pro_fixtures / "tiny")


@pytest.fixture(scope="module")
def builder(tok: S2ProTokenizer) -> PromptBuilder:
    return PromptBuilder(tok, num_codebooks=4, codebook_size=32)


def _ids(tok: S2ProTokenizer, *parts: str) -> list[int]:
    out: list[int] = []
    for p in parts:
        out += tok.encode(p)
    return out


def test_speaker_split_and_batches() -> None:
    text = "intro dropped <|speaker:0|> Hi there. <|speaker:1|>Hello!<|speaker:0|>  Bye  "
    assert split_text_by_speaker(text) == ["<|speaker:0|> Hi there.", "<|speaker:1|>Hello!", "<|speaker:0|>  Bye"]
    assert one_batch_text(text) == "<|speaker:0|> Hi there.\n<|speaker:1|>Hello!\n<|speaker:0|>  Bye"
    assert one_batch_text("  no tags here ") == "  no tags here "
    assert split_batches("plain", chunk_length=3) == ["plain"]
    assert group_turns_into_batches(["aaaa", "bbbb", "cc"], max_speakers=5, max_bytes=8) == ["aaaa\nbbbb", "cc"]
    assert group_turns_into_batches(["a", "b", "c"], max_speakers=2, max_bytes=100) == ["a\nb", "c"]


def test_tokenizer_semantic_range_and_specials(tok: S2ProTokenizer) -> None:
    assert (tok.semantic_begin_id, tok.semantic_end_id, tok.im_end_id) == (268, 299, 258)
    assert tok.encode("<|im_start|>") == [257]
    assert tok.encode("<|semantic:3|>") == [271]
    assert len(tok.encode("<|speaker:0|>")) > 1  # not a special token: plain BPE text


def test_prompt_without_reference(tok: S2ProTokenizer, builder: PromptBuilder) -> None:
    values = builder.build("Hello [whisper] there")
    expected = _ids(
        tok,
        "<|im_start|>system\n",
        "convert the provided text to speech",
        "<|im_end|>\n",
        "<|im_start|>user\n",
        "Hello [whisper] there",
        "<|im_end|>\n",
        "<|im_start|>assistant\n<|voice|>",
    )
    assert values[0].tolist() == expected
    assert (values[1:] == 0).all()
    assert values[0, -1].item() == tok.token_id("<|voice|>")


def test_prompt_with_references_tags_and_codes(tok: S2ProTokenizer, builder: PromptBuilder) -> None:
    c1 = np.arange(12).reshape(4, 3) % 32
    c2 = (np.arange(8).reshape(4, 2) * 3) % 32
    voice = VoiceReference.create(["first ref", "<|speaker:7|>second ref"], [c1, c2])
    values = builder.build("<|speaker:0|>Hi", voice)
    head = _ids(
        tok,
        "<|im_start|>system\n",
        "convert the provided text to speech reference to the following:\n\nText:\n",
        "<|speaker:0|>first ref\n<|speaker:7|>second ref",
        "\n\nSpeech:\n",
    )
    n = len(head)
    assert values[0, :n].tolist() == head
    codes = np.concatenate([c1, c2], axis=1)
    np.testing.assert_array_equal(values[1:, n : n + 5].numpy(), codes)
    np.testing.assert_array_equal(values[0, n : n + 5].numpy(), codes[0] + 268)
    tail = _ids(tok, "<|im_end|>\n", "<|im_start|>user\n", "<|speaker:0|>Hi", "<|im_end|>\n", "<|im_start|>assistant\n<|voice|>")
    assert values[0, n + 5 :].tolist() == tail
    assert (values[1:, n + 5 :] == 0).all()


def test_continuation_layout(tok: S2ProTokenizer, builder: PromptBuilder) -> None:
    codes = torch.tensor(np.arange(8).reshape(4, 2) % 32)
    part = builder.assistant_codes_end(codes)
    assert part[0, :2].tolist() == (codes[0] + 268).tolist()
    assert torch.equal(part[1:, :2], codes)
    assert part[0, 2:].tolist() == tok.encode("<|im_end|>\n")


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (np.zeros((3, 5), dtype=np.int64), "expected shape"),
        (np.zeros((4,), dtype=np.int64), "expected shape"),
        (np.full((4, 5), 32, dtype=np.int64), "must lie in"),
        (np.full((4, 5), -1, dtype=np.int64), "must lie in"),
        (np.zeros((4, 5), dtype=np.float32), "integer codes"),
    ],
)
def test_bad_reference_codes(builder: PromptBuilder, codes: np.ndarray, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        builder.build("hi", VoiceReference.create("ref", codes))
    assert issubclass(PromptError, AgentRuntimeError)


def test_reference_count_mismatch() -> None:
    with pytest.raises(PromptError):
        VoiceReference.create(["a", "b"], [np.zeros((4, 1), dtype=np.int64)])


def test_tokenizer_without_semantic_tokens(s2pro_fixtures: Path, tmp_path: Path) -> None:
    data = json.loads((s2pro_fixtures / "tiny" / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if "semantic" not in t["content"]]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="semantic"):
        S2ProTokenizer(tmp_path)


def test_tokenizer_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        S2ProTokenizer(tmp_path)


def test_voice_hash_depends_on_content(s2pro_fixtures: Path, tmp_path: Path) -> None:
    codes = np.zeros((4, 3), dtype=np.int64)
    a = VoiceReference.create("x", codes)
    assert a.content_hash() == VoiceReference.create("x", codes.copy(), voice_id="other").content_hash()
    assert a.content_hash() != VoiceReference.create("y", codes).content_hash()
    shutil.copy(s2pro_fixtures / "tiny" / "tokenizer.json", tmp_path / "tokenizer.json")
    assert S2ProTokenizer(tmp_path).fingerprint
