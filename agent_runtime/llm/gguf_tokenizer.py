"""Byte-level BPE tokenizer rebuilt from a GGUF's embedded vocabulary, plus the ChatML template.

The vocabulary, merges and token types come from the `tokenizer.ggml.*` metadata; the `tokenizers`
package does the BPE. Pre-tokenisation follows SmolLM2 (`tokenizer.ggml.pre = smollm`): digits one
by one, then GPT-2's byte-level regex, no prefix space, no BOS.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from agent_runtime.errors import ModelLoadError
from agent_runtime.llm.base import ChatMessage

_CONTROL = 3  # llama.cpp token type for control/special tokens
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class GGUFTokenizer:
    """Encode text / decode ids; `token_bytes` gives each id's raw bytes for streaming decode."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        model = metadata.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ModelLoadError(f"unsupported tokenizer model {model!r} (expected byte-level BPE 'gpt2')")
        try:
            tokens: list[str] = metadata["tokenizer.ggml.tokens"]
            merges: list[str] = metadata["tokenizer.ggml.merges"]
            types: list[int] = metadata.get("tokenizer.ggml.token_type", [1] * len(tokens))
            self.eos_id = int(metadata["tokenizer.ggml.eos_token_id"])
        except KeyError as exc:
            raise ModelLoadError(f"GGUF tokenizer metadata is incomplete: missing {exc.args[0]}") from exc
        vocab = {tok: i for i, tok in enumerate(tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
        self._tok = Tokenizer(bpe)
        self._tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        self._tok.decoder = decoders.ByteLevel()
        self.special_ids = frozenset(i for i, t in enumerate(types) if t == _CONTROL)
        self._tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in sorted(self.special_ids)])
        # Specials in user text stay plain text (no prompt injection through "<|im_start|>").
        self._tok.encode_special_tokens = True
        self.vocab_size = len(tokens)
        self._id_of = vocab
        byte_of = {c: b for b, c in _bytes_to_unicode().items()}
        self.token_bytes: list[bytes] = [
            b"" if i in self.special_ids else bytes(byte_of.get(c, 0x3F) for c in tok) for i, tok in enumerate(tokens)
        ]

    def token_id(self, token: str) -> int:
        if token not in self._id_of:
            raise ModelLoadError(f"the tokenizer has no token {token!r}")
        return self._id_of[token]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, special-token strings included literally (never as control tokens)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self.token_bytes)


class StreamDecoder:
    """Turns ids into text deltas; a UTF-8 character split across tokens comes out once complete."""

    def __init__(self, token_bytes: list[bytes]) -> None:
        self._bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._bytes[token_id])

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class ChatTemplate:
    """ChatML as SmolLM2 uses it, tokenised piecewise so message text can never forge control tokens."""

    def __init__(self, tokenizer: GGUFTokenizer, default_system: str = DEFAULT_SYSTEM_PROMPT) -> None:
        self.tok = tokenizer
        self.default_system = default_system
        self.im_start = tokenizer.token_id("<|im_start|>")
        self.im_end = tokenizer.token_id("<|im_end|>")
        self._newline = tokenizer.encode("\n")

    def render(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt as text (for display and tests); `encode` is the source of truth."""
        parts = [f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in self._turns(messages)]
        return "".join(parts) + "<|im_start|>assistant\n"

    def encode(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Prompt ids, ending with the generation prompt `<|im_start|>assistant\\n`."""
        return [*self.encode_history(messages), self.im_start, *self.tok.encode("assistant\n")]

    def encode_history(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The messages alone (no generation prompt): a prefix of `encode(messages + more)`."""
        ids: list[int] = []
        for role, content in self._turns(messages):
            ids += self.encode_message(role, content)
        return ids

    def encode_message(self, role: str, content: str) -> list[int]:
        return [self.im_start, *self.tok.encode(f"{role}\n{content}"), self.im_end, *self._newline]

    def _turns(self, messages: Sequence[ChatMessage]) -> list[tuple[str, str]]:
        turns = [(m.role, m.content) for m in messages]
        if not turns or turns[0][0] != "system":
            turns.insert(0, ("system", self.default_system))
        return turns
