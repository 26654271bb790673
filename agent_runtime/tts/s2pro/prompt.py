"""Tokenizer and prompt construction for the S2-Pro Dual-AR model (spec section 3).

A prompt is a list of *parts*; every text part is tokenised on its own (BPE never merges across
part boundaries) and a VQ part contributes one position per frame (row 0 = code0 +
semantic_begin_id, rows 1..N = the codes). The result is a LongTensor (N+1, T).

Layout of the reference's `generate_long` (one batch):

    "<|im_start|>system\\n"
    "convert the provided text to speech reference to the following:\\n\\nText:\\n"
    "<|speaker:0|>{ref_text_0}\\n<|speaker:1|>{ref_text_1}..."      (tags added when absent)
    "\\n\\nSpeech:\\n"
    VQ(all reference codes, concatenated along time)
    "<|im_end|>\\n"
    "<|im_start|>user\\n"  "{batch text}"  "<|im_end|>\\n"
    "<|im_start|>assistant\\n<|voice|>"

Without a reference the four system parts become "convert the provided text to speech".
A continuation appends the generated codes as an assistant turn (VQ + "<|im_end|>\\n") and the
next user turn, exactly as generate_long does between batches.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from agent_runtime.errors import AgentRuntimeError, ModelLoadError

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VOICE = "<|voice|>"
SEMANTIC_TEMPLATE = "<|semantic:{}|>"
MAX_SEMANTIC_CODES = 4096
SPEAKER_RE = re.compile(r"(<\|speaker:\d+\|>)")

SYSTEM_START = f"{IM_START}system\n"
SYSTEM_NO_REFERENCE = "convert the provided text to speech"
SYSTEM_WITH_REFERENCE = "convert the provided text to speech reference to the following:\n\nText:\n"
SPEECH_HEADER = "\n\nSpeech:\n"
TURN_END = f"{IM_END}\n"
USER_START = f"{IM_START}user\n"
ASSISTANT_START = f"{IM_START}assistant\n{VOICE}"


class PromptError(AgentRuntimeError):
    """Invalid prompt input (reference codes, text too long for the context, ...)."""


class TokenizerLike(Protocol):
    """What prompt building and the engine need from a tokenizer."""

    semantic_begin_id: int
    semantic_end_id: int
    im_end_id: int

    def encode(self, text: str) -> list[int]: ...


class S2ProTokenizer:
    """The checkpoint's `tokenizer.json` (HF fast BPE) plus the semantic-token id range."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise ModelLoadError(f"{file}: tokenizer.json not found")
        try:
            self._tok = Tokenizer.from_file(str(file))
        except Exception as exc:
            raise ModelLoadError(f"{file}: cannot load tokenizer ({exc})") from exc
        self._add_config_tokens(file.parent / "tokenizer_config.json")
        vocab = self._tok.get_vocab(with_added_tokens=True)
        ids = [vocab[t] for i in range(MAX_SEMANTIC_CODES) if (t := SEMANTIC_TEMPLATE.format(i)) in vocab]
        if not ids:
            raise ModelLoadError(f"{file}: tokenizer has no <|semantic:N|> tokens; not an S2-Pro/S1 tokenizer")
        self.semantic_begin_id = min(ids)
        self.semantic_end_id = max(ids)
        if self.semantic_end_id - self.semantic_begin_id + 1 != len(ids):
            raise ModelLoadError(f"{file}: semantic token ids are not contiguous")
        for special in (IM_START, IM_END, VOICE):
            if special not in vocab:
                raise ModelLoadError(f"{file}: tokenizer lacks the special token {special}")
        self.im_end_id = vocab[IM_END]
        self.fingerprint = hashlib.sha256(file.read_bytes()).hexdigest()[:16]

    def _add_config_tokens(self, config_file: Path) -> None:
        """Add tokens that only `tokenizer_config.json` declares (as transformers would)."""
        if not config_file.is_file():
            return
        try:
            decoder = json.loads(config_file.read_text(encoding="utf-8")).get("added_tokens_decoder") or {}
        except (OSError, ValueError):
            return
        vocab = self._tok.get_vocab(with_added_tokens=True)
        from tokenizers import AddedToken

        for id_str, spec in sorted(decoder.items(), key=lambda kv: int(kv[0])):
            content = spec.get("content")
            if not content or content in vocab:
                continue
            self._tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
            if self._tok.token_to_id(content) != int(id_str):
                raise ModelLoadError(f"{config_file}: added token {content!r} cannot get id {id_str}")

    def encode(self, text: str) -> list[int]:
        """Token ids without BOS/EOS; special-token strings inside the text become specials."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


# ---- text handling of generate_long --------------------------------------------------------


def split_text_by_speaker(text: str) -> list[str]:
    """Turns starting with `<|speaker:N|>`, each stripped; text before the first tag is dropped."""
    parts = SPEAKER_RE.split(text)
    turns: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i].strip()
        if SPEAKER_RE.match(part):
            if i + 1 < len(parts):
                turns.append((part + parts[i + 1]).strip())
                i += 2
            else:
                turns.append(part)
                i += 1
        else:
            i += 1
    return turns


def group_turns_into_batches(turns: list[str], max_speakers: int = 5, max_bytes: int = 300) -> list[str]:
    """generate_long's batching: <= max_speakers turns and <= max_bytes UTF-8 bytes per batch."""
    batches: list[str] = []
    current: list[str] = []
    size = 0
    for turn in turns:
        n = len(turn.encode("utf-8"))
        if len(current) >= max_speakers or (current and size + n > max_bytes):
            batches.append("\n".join(current))
            current, size = [turn], n
        else:
            current.append(turn)
            size += n
    if current:
        batches.append("\n".join(current))
    return batches


def split_batches(text: str, chunk_length: int = 300, max_speakers: int = 5) -> list[str]:
    """All batches generate_long makes of `text` (one user turn each)."""
    turns = split_text_by_speaker(text)
    return group_turns_into_batches(turns, max_speakers, chunk_length) if turns else [text]


def one_batch_text(text: str) -> str:
    """What generate_long makes of `text` as a single batch: speaker turns joined by newlines."""
    turns = split_text_by_speaker(text)
    return "\n".join(turns) if turns else text


# ---- references and prompt values ----------------------------------------------------------


@dataclass(frozen=True)
class VoiceReference:
    """Zero-shot voice: reference transcripts and their codes (num_codebooks, frames) each."""

    texts: tuple[str, ...]
    codes: tuple[np.ndarray, ...]
    voice_id: str | None = None

    @classmethod
    def create(
        cls, texts: str | Sequence[str], codes: np.ndarray | Sequence[np.ndarray], voice_id: str | None = None
    ) -> VoiceReference:
        texts_t = (texts,) if isinstance(texts, str) else tuple(texts)
        codes_t = (codes,) if isinstance(codes, np.ndarray) else tuple(codes)
        if len(texts_t) != len(codes_t):
            raise PromptError(f"{len(texts_t)} reference texts but {len(codes_t)} reference code arrays")
        return cls(texts_t, tuple(np.asarray(c) for c in codes_t), voice_id)

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for text, codes in zip(self.texts, self.codes, strict=True):
            h.update(text.encode("utf-8") + b"\0")
            arr = np.ascontiguousarray(codes, dtype=np.int64)
            h.update(str(arr.shape).encode() + arr.tobytes())
        return h.hexdigest()


def validate_codes(codes: np.ndarray | Tensor, num_codebooks: int, codebook_size: int, what: str) -> Tensor:
    """Check shape (num_codebooks, frames) and range [0, codebook_size); return int64 tensor."""
    arr = codes.detach().cpu().numpy() if isinstance(codes, Tensor) else np.asarray(codes)
    if arr.ndim != 2 or arr.shape[0] != num_codebooks:
        raise PromptError(f"{what}: expected shape ({num_codebooks}, frames), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise PromptError(f"{what}: expected integer codes, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= codebook_size):
        raise PromptError(f"{what}: codes must lie in [0, {codebook_size}), got [{arr.min()}, {arr.max()}]")
    return torch.from_numpy(arr.astype(np.int64))


class PromptBuilder:
    """Turns texts and codes into prompt values (num_codebooks + 1, T), part by part."""

    def __init__(self, tokenizer: TokenizerLike, num_codebooks: int, codebook_size: int) -> None:
        self.tokenizer = tokenizer
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size

    def text_part(self, text: str) -> Tensor:
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        values = torch.zeros((self.num_codebooks + 1, ids.numel()), dtype=torch.long)
        values[0] = ids
        return values

    def vq_part(self, codes: Tensor) -> Tensor:
        values = torch.zeros((self.num_codebooks + 1, codes.shape[1]), dtype=torch.long)
        values[0] = codes[0] + self.tokenizer.semantic_begin_id
        values[1:] = codes
        return values

    def system_turn(self, voice: VoiceReference | None) -> Tensor:
        """The system turn incl. its "<|im_end|>\\n" (the voice prefix that the engine caches)."""
        parts = [self.text_part(SYSTEM_START)]
        if voice is None or not voice.texts:
            parts.append(self.text_part(SYSTEM_NO_REFERENCE))
        else:
            tagged = [
                t if SPEAKER_RE.search(t) else f"<|speaker:{i}|>{t}" for i, t in enumerate(voice.texts)
            ]
            codes = [
                validate_codes(c, self.num_codebooks, self.codebook_size, f"reference codes #{i}")
                for i, c in enumerate(voice.codes)
            ]
            parts += [
                self.text_part(SYSTEM_WITH_REFERENCE),
                self.text_part("\n".join(tagged)),
                self.text_part(SPEECH_HEADER),
                self.vq_part(torch.cat(codes, dim=1)),
            ]
        parts.append(self.text_part(TURN_END))
        return torch.cat(parts, dim=1)

    def user_turn(self, batch_text: str) -> Tensor:
        """User turn + the assistant header that generation starts from."""
        return torch.cat(
            [
                self.text_part(USER_START),
                self.text_part(batch_text),
                self.text_part(TURN_END),
                self.text_part(ASSISTANT_START),
            ],
            dim=1,
        )

    def assistant_codes_end(self, codes: Tensor) -> Tensor:
        """Generated codes of a finished batch + "<|im_end|>\\n" (its header is already in context)."""
        return torch.cat([self.vq_part(codes), self.text_part(TURN_END)], dim=1)

    def build(self, batch_text: str, voice: VoiceReference | None = None) -> Tensor:
        """The full one-batch prompt of generate_long."""
        return torch.cat([self.system_turn(voice), self.user_turn(batch_text)], dim=1)
