"""Random-weight S2-Pro Dual-AR models and a stand-in tokenizer, for benchmarks and tests on machines
without the real checkpoint: `PRESETS` (full S2-Pro shapes, 4.56B parameters; a tiny one), the
model (`random_model`) and `SyntheticTokenizer`. The speech such a model makes is noise; the cost of
making it is the real model's. `tts.options.checkpoint: random:s2pro` serves one (docs/engines.md).
"""

from __future__ import annotations

from typing import Any

S2PRO_SHAPES = {
    "dim": 2560, "heads": 32, "kv_heads": 8, "head_dim": 128, "intermediate": 9728, "slow_layers": 36, "fast_layers": 4,
    "vocab": 155_776, "codebooks": 10, "codebook_size": 4096, "max_seq_len": 32_768,
}  # fmt: skip
TINY_SHAPES = {
    "dim": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "intermediate": 128, "slow_layers": 2, "fast_layers": 2,
    "vocab": 1024, "codebooks": 4, "codebook_size": 64, "max_seq_len": 4096,
}  # fmt: skip
PRESETS = {"s2pro": S2PRO_SHAPES, "tiny": TINY_SHAPES}


class SyntheticTokenizer:
    """Stand-in tokenizer for random models: specials map to the real S2-Pro layout (relative to
    the semantic range), other text to one id per UTF-8 byte."""

    def __init__(self, semantic_begin_id: int, codebook_size: int) -> None:
        import re

        self.semantic_begin_id = semantic_begin_id
        self.semantic_end_id = semantic_begin_id + codebook_size - 1
        self.im_end_id = semantic_begin_id - 33  # 151645 = 151678 - 33 in the real vocabulary
        self._specials = {
            "<|im_start|>": semantic_begin_id - 34,
            "<|im_end|>": self.im_end_id,
            "<|voice|>": semantic_begin_id - 5,
        }
        self._re = re.compile(r"(<\|[a-z_]+\|>)")

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._re.split(text):
            if piece in self._specials:
                ids.append(self._specials[piece])
            else:
                ids.extend(1 + b % (self._specials["<|im_start|>"] - 1) for b in piece.encode("utf-8"))
        return ids


def random_model(args: Any, dtype: Any) -> Any:
    """A Dual-AR of `args`' shapes (a namespace with the `PRESETS` keys plus `seed` and `device`),
    weights drawn from N(0, 0.02) (norms at 1), in `dtype`."""
    import torch

    from agent_runtime.tts.s2pro.model import DualARConfig, DualARTransformer, TransformerConfig

    head_dim = args.head_dim or args.dim // args.heads
    layer = {
        "dim": args.dim,
        "n_head": args.heads,
        "n_local_heads": args.kv_heads,
        "head_dim": head_dim,
        "intermediate_size": args.intermediate,
    }
    sem_begin = args.vocab - args.codebook_size - 2
    cfg = DualARConfig(
        vocab_size=args.vocab,
        slow=TransformerConfig(n_layer=args.slow_layers, qk_norm=True, **layer),
        fast=TransformerConfig(n_layer=args.fast_layers, **layer),
        num_codebooks=args.codebooks,
        codebook_size=args.codebook_size,
        semantic_begin_id=sem_begin,
        semantic_end_id=sem_begin + args.codebook_size - 1,
        max_seq_len=args.max_seq_len,
    )
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = DualARTransformer(cfg).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                continue
            p.normal_(0.0, 0.02)
        # keep <|im_end|> unlikely so every run generates the frames it asks for
        model.embeddings.weight[sem_begin - 33].zero_()
    return model.to(device=args.device, dtype=dtype).eval()
