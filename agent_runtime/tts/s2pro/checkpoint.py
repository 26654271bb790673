"""Strict loaders for S2-Pro / OpenAudio S1 Dual-AR checkpoints.

Two layouts (spec section 2):

* HF layout (S2-Pro): `config.json` with `model_type: fish_qwen3_omni` and nested `text_config` /
  `audio_decoder_config`; weights in `model.safetensors.index.json` + shards or a single
  `model.safetensors`, keys `text_model.model.*` / `audio_decoder.*`.
* Flat layout (OpenAudio S1, s1-mini, fish-speech fine-tunes): `config.json` with
  `model_type: dual_ar` (flat fields) and `model.pth` (optionally wrapped in `state_dict`, keys
  optionally prefixed `model.`, `audio_*` keys dropped, legacy `wq/wk/wv` fused into `wqkv`).

Unlike the reference, loading is strict: any missing, unexpected or mis-shaped tensor is reported
in one `ModelLoadError` naming them.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from agent_runtime.errors import ModelLoadError, check_tensor_names
from agent_runtime.tts.s2pro.model import DualARConfig, DualARTransformer, TransformerConfig

SUPPORTED_MODEL_TYPES = ("fish_qwen3_omni", "dual_ar")


def _find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


def read_config_json(checkpoint_dir: Path) -> dict[str, Any]:
    path = checkpoint_dir / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{checkpoint_dir}: no config.json (not a Dual-AR checkpoint directory)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: unreadable JSON ({exc})") from exc
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"{path}: model_type {model_type!r} is not a Dual-AR text-to-semantic checkpoint "
            f"(expected one of {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return data


def config_from_json(data: dict[str, Any], semantic_begin_id: int, semantic_end_id: int) -> DualARConfig:
    """Build the model config; semantic ids come from the tokenizer, as in the reference."""
    try:
        if data["model_type"] == "fish_qwen3_omni":
            return _config_from_omni(data, semantic_begin_id, semantic_end_id)
        return _config_from_flat(data, semantic_begin_id, semantic_end_id)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"config.json: invalid or incomplete Dual-AR config ({exc!r})") from exc


def _opt(d: dict[str, Any], key: str, default: Any) -> Any:
    value = d.get(key)
    return default if value is None else value


def _config_from_omni(data: dict[str, Any], sem_begin: int, sem_end: int) -> DualARConfig:
    tc, ac = data["text_config"], data["audio_decoder_config"]
    flat: dict[str, Any] = {
        "vocab_size": tc["vocab_size"],
        "n_layer": tc["n_layer"],
        "n_head": tc["n_head"],
        "n_local_heads": _opt(tc, "n_local_heads", -1),
        "head_dim": _opt(tc, "head_dim", 64),
        "dim": tc["dim"],
        "intermediate_size": tc.get("intermediate_size"),
        "rope_base": _opt(tc, "rope_base", 10000),
        "norm_eps": _opt(tc, "norm_eps", 1e-5),
        "max_seq_len": _opt(tc, "max_seq_len", 2048),
        "tie_word_embeddings": _opt(tc, "tie_word_embeddings", True),
        "attention_qkv_bias": _opt(tc, "attention_qkv_bias", False),
        "attention_o_bias": _opt(tc, "attention_o_bias", False),
        "attention_qk_norm": _opt(tc, "attention_qk_norm", False),
        "scale_codebook_embeddings": True,
        "norm_fastlayer_input": True,
        "codebook_size": ac["vocab_size"],
        "num_codebooks": ac["num_codebooks"],
        "n_fast_layer": ac["n_layer"],
        "fast_dim": ac.get("dim"),
        "fast_n_head": ac.get("n_head"),
        "fast_n_local_heads": ac.get("n_local_heads"),
        "fast_head_dim": ac.get("head_dim"),
        "fast_intermediate_size": ac.get("intermediate_size"),
        "fast_attention_qkv_bias": ac.get("attention_qkv_bias"),
        "fast_attention_qk_norm": ac.get("attention_qk_norm"),
        "fast_attention_o_bias": ac.get("attention_o_bias"),
    }
    return _build(flat, sem_begin, sem_end)


def _config_from_flat(data: dict[str, Any], sem_begin: int, sem_end: int) -> DualARConfig:
    flat = dict(data)
    flat.setdefault("vocab_size", 32000)
    flat.setdefault("n_layer", 32)
    flat.setdefault("n_head", 32)
    flat.setdefault("dim", 4096)
    flat.setdefault("n_local_heads", -1)
    flat.setdefault("head_dim", 64)
    flat.setdefault("rope_base", 10000)
    flat.setdefault("norm_eps", 1e-5)
    flat.setdefault("max_seq_len", 2048)
    flat.setdefault("codebook_size", 160)
    flat.setdefault("num_codebooks", 4)
    flat.setdefault("n_fast_layer", 4)
    return _build(flat, sem_begin, sem_end)


def _build(f: dict[str, Any], sem_begin: int, sem_end: int) -> DualARConfig:
    """Mirror of the reference's `BaseModelArgs/DualARModelArgs.__post_init__` defaults."""
    n_head = int(f["n_head"])
    n_local = int(f.get("n_local_heads") or -1)
    n_local = n_head if n_local == -1 else n_local
    dim = int(f["dim"])
    head_dim = f.get("head_dim", 64)
    head_dim = dim // n_head if head_dim is None else int(head_dim)
    inter = f.get("intermediate_size")
    inter = _find_multiple(int(2 * 4 * dim / 3), 256) if inter is None else int(inter)
    eps = float(f.get("norm_eps", 1e-5))
    rope = float(f.get("rope_base", 10000))
    qkv_bias = bool(f.get("attention_qkv_bias", False))
    o_bias = bool(f.get("attention_o_bias", False))
    qk_norm = bool(f.get("attention_qk_norm", False))
    slow = TransformerConfig(
        n_layer=int(f["n_layer"]),
        dim=dim,
        n_head=n_head,
        n_local_heads=n_local,
        head_dim=head_dim,
        intermediate_size=inter,
        norm_eps=eps,
        rope_base=rope,
        qk_norm=qk_norm,
        qkv_bias=qkv_bias,
        o_bias=o_bias,
    )

    def pick(key: str, default: Any) -> Any:
        value = f.get(key)
        return default if value is None else value

    fast = TransformerConfig(
        n_layer=int(f.get("n_fast_layer", 4)),
        dim=int(pick("fast_dim", dim) or dim),
        n_head=int(pick("fast_n_head", n_head) or n_head),
        n_local_heads=int(pick("fast_n_local_heads", n_local) or n_local),
        head_dim=int(pick("fast_head_dim", head_dim) or head_dim),
        intermediate_size=int(pick("fast_intermediate_size", inter) or inter),
        norm_eps=eps,  # the reference uses the text eps and rope base for the fast AR too
        rope_base=rope,
        qk_norm=bool(pick("fast_attention_qk_norm", qk_norm)),
        qkv_bias=bool(pick("fast_attention_qkv_bias", qkv_bias)),
        o_bias=bool(pick("fast_attention_o_bias", o_bias)),
    )
    return DualARConfig(
        vocab_size=int(f["vocab_size"]),
        slow=slow,
        fast=fast,
        num_codebooks=int(f["num_codebooks"]),
        codebook_size=int(f["codebook_size"]),
        semantic_begin_id=sem_begin,
        semantic_end_id=sem_end,
        max_seq_len=int(f["max_seq_len"]),
        tie_word_embeddings=bool(f.get("tie_word_embeddings", True)),
        scale_codebook_embeddings=bool(f.get("scale_codebook_embeddings", False)),
        norm_fastlayer_input=bool(f.get("norm_fastlayer_input", False)),
    )


# ---- weights ----------------------------------------------------------------------------------


def remap_hf_keys(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF names -> module names: strip `text_model.model.`; `audio_decoder.X` -> `fast_X`
    except `audio_decoder.codebook_embeddings.*` (prefix just stripped); an untied
    `text_model.lm_head.weight` -> `output.weight`."""
    if not any(k.startswith(("text_model.", "audio_decoder.")) for k in weights):
        return weights
    out: dict[str, Tensor] = OrderedDict()
    for key, value in weights.items():
        if key.startswith("text_model.model."):
            new = key[len("text_model.model.") :]
        elif key == "text_model.lm_head.weight":  # untied head; the reference leaves it unloaded (random)
            new = "output.weight"
        elif key.startswith("audio_decoder."):
            rest = key[len("audio_decoder.") :]
            new = rest if rest.startswith("codebook_embeddings.") else "fast_" + rest
        else:
            new = key
        out[new] = value
    return out


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read safetensors ({exc})") from exc


def read_weights(checkpoint_dir: Path) -> dict[str, Tensor]:
    """Raw state dict in module naming, by the reference's precedence (index > single > pth)."""
    index = checkpoint_dir / "model.safetensors.index.json"
    single = checkpoint_dir / "model.safetensors"
    pth = checkpoint_dir / "model.pth"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{index}: invalid safetensors index ({exc!r})") from exc
        weights: dict[str, Tensor] = OrderedDict()
        for shard in sorted(set(weight_map.values())):
            shard_path = checkpoint_dir / shard
            if not shard_path.is_file():
                raise ModelLoadError(f"{index}: shard {shard} is missing")
            weights.update(_load_safetensors(shard_path))
        missing_in_shards = sorted(set(weight_map) - set(weights))
        if missing_in_shards:
            raise ModelLoadError(f"{index}: tensors listed but absent from the shards: {missing_in_shards[:10]}")
        return remap_hf_keys(weights)
    if single.is_file():
        return remap_hf_keys(_load_safetensors(single))
    if pth.is_file():
        try:
            obj = torch.load(pth, map_location="cpu", mmap=True, weights_only=True)
        except Exception as exc:
            raise ModelLoadError(f"{pth}: cannot read ({exc})") from exc
        if isinstance(obj, dict) and "state_dict" in obj:
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise ModelLoadError(f"{pth}: not a state dict")
        weights = OrderedDict(obj)
        if weights and next(iter(weights)).startswith("model."):
            weights = OrderedDict((k.replace("model.", ""), v) for k, v in weights.items())
        weights = OrderedDict((k, v) for k, v in weights.items() if "audio_" not in k)
        return remap_hf_keys(weights)
    raise ModelLoadError(
        f"{checkpoint_dir}: no weights (expected model.safetensors.index.json, model.safetensors or model.pth)"
    )


def _fuse_legacy_qkv(weights: dict[str, Tensor]) -> None:
    for key in [k for k in weights if k.endswith(".attention.wq.weight")]:
        prefix = key[: -len("wq.weight")]
        parts = [weights.pop(prefix + n + ".weight", None) for n in ("wq", "wk", "wv")]
        if any(p is None for p in parts):
            raise ModelLoadError(f"legacy attention weights under {prefix} are incomplete (need wq, wk, wv)")
        weights[prefix + "wqkv.weight"] = torch.cat(parts)  # type: ignore[arg-type]


def load_state_strict(model: DualARTransformer, weights: dict[str, Tensor]) -> None:
    """Load `weights` into `model`, raising one ModelLoadError listing every problem."""
    _fuse_legacy_qkv(weights)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mis_shaped = sorted(
        f"{k} {tuple(weights[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in set(expected) & set(weights)
        if tuple(weights[k].shape) != tuple(expected[k].shape)
    )
    check_tensor_names("checkpoint does not match the model config", missing, unexpected, mis_shaped)
    model.load_state_dict(weights, strict=True, assign=True)


def load_model(
    checkpoint_dir: str | Path,
    semantic_begin_id: int,
    semantic_end_id: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> DualARTransformer:
    """Build the model from `config.json`, load the weights strictly, cast to (device, dtype)."""
    checkpoint_dir = Path(checkpoint_dir)
    cfg = config_from_json(read_config_json(checkpoint_dir), semantic_begin_id, semantic_end_id)
    if not 0 < semantic_begin_id <= semantic_end_id < cfg.vocab_size:
        raise ModelLoadError(
            f"semantic token ids {semantic_begin_id}..{semantic_end_id} do not fit the vocabulary ({cfg.vocab_size})"
        )
    with torch.device("meta"):
        model = DualARTransformer(cfg)
    load_state_strict(model, read_weights(checkpoint_dir))
    model.reset_buffers()  # non-persistent buffers were created on meta
    return model.to(device=device, dtype=dtype).eval()
