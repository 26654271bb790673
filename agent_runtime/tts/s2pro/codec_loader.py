"""Strict loading of the S2-Pro codec checkpoint (`codec.pth`) into `S2ProCodec`.

Accepted layouts (fish-speech's loader semantics, but strict):
  * a flat state dict, or one wrapped in {"state_dict": ...};
  * keys prefixed with `generator.` (a training checkpoint: only those keys are kept);
  * weight-normed tensors as parametrizations (`X.parametrizations.weight.original0/1` = g/v),
    as legacy names (`X.weight_g` / `X.weight_v`), or already fused (`X.weight`).
Weight norm is fused at load time, `w = g * v / ||v||` (norm over all dims but 0), evaluated in
the target dtype (the reference evaluates it in bf16 at forward time in its bf16 path).
Anything missing, unexpected or mis-shaped raises one `ModelLoadError` naming the tensors.
Obsolete persistent buffers of older reference versions (`*.freqs_cis`, `*.causal_mask`) are ignored.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from agent_runtime.errors import ModelLoadError, check_tensor_names
from agent_runtime.tts.s2pro.codec import S2ProCodec
from agent_runtime.tts.s2pro.codec_config import CodecConfig

log = logging.getLogger(__name__)

_G_SUFFIXES = (".parametrizations.weight.original0", ".weight_g")
_V_SUFFIXES = (".parametrizations.weight.original1", ".weight_v")
_IGNORED = re.compile(r"(^|\.)(freqs_cis|causal_mask)$")
_MAX_NAMES = 8

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"unknown codec dtype {name!r} (use fp32 or bf16)") from None


def weight_normed_params(codec: S2ProCodec) -> set[str]:
    """Names of the parameters stored weight-normed in the reference checkpoint."""
    names: set[str] = set()
    for name, _ in codec.named_parameters():
        if not name.endswith(".weight"):
            continue
        if name.endswith((".in_proj.weight", ".out_proj.weight")) or (name.endswith(".conv.weight") and ".downsample." not in name and ".upsample." not in name):
            names.add(name)
    return names


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Load the raw tensors of a codec checkpoint (unwrapped, `generator.` prefix stripped)."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: codec checkpoint not found")
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelLoadError(f"{p}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ModelLoadError(f"{p}: expected a state dict (mapping of tensor names to tensors)")
    if any(k.startswith("generator.") for k in obj):
        obj = {k[len("generator."):]: v for k, v in obj.items() if k.startswith("generator.")}
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise ModelLoadError(f"{p}: entries that are not tensors: {_names(bad)}")
    return obj


def fuse_state_dict(raw: dict[str, Tensor], codec: S2ProCodec, dtype: torch.dtype) -> dict[str, Tensor]:
    """Map checkpoint names onto `codec`'s parameters, fusing weight norm; strict on names and shapes."""
    expected = codec.state_dict()
    wn = weight_normed_params(codec)
    g_parts: dict[str, Tensor] = {}
    v_parts: dict[str, Tensor] = {}
    plain: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, t in raw.items():
        if _IGNORED.search(key):
            ignored.append(key)
            continue
        for suffix in _G_SUFFIXES:
            if key.endswith(suffix):
                g_parts[key[: -len(suffix)] + ".weight"] = t
                break
        else:
            for suffix in _V_SUFFIXES:
                if key.endswith(suffix):
                    v_parts[key[: -len(suffix)] + ".weight"] = t
                    break
            else:
                plain[key] = t
    if ignored:
        log.debug("ignoring %d obsolete buffers in the codec checkpoint: %s", len(ignored), _names(ignored))

    out: dict[str, Tensor] = {}
    missing: list[str] = []
    unexpected: list[str] = []
    misshaped: list[str] = []
    reported: set[str] = set()  # parameter names already named in an error
    for name in sorted(set(g_parts) | set(v_parts)):
        if name not in wn:
            unexpected.extend(_wn_key_names(name, g_parts, v_parts))
            continue
        reported.add(name)
        if name not in g_parts or name not in v_parts:
            missing.append(name[: -len(".weight")] + (".weight_g" if name not in g_parts else ".weight_v"))
            continue
        g, v = g_parts[name], v_parts[name]
        shape = tuple(expected[name].shape)
        g_shape = (shape[0],) + (1,) * (len(shape) - 1)
        if tuple(v.shape) != shape or tuple(g.shape) != g_shape:
            misshaped.append(f"{name} g {tuple(g.shape)} v {tuple(v.shape)} (expected g {g_shape} v {shape})")
            continue
        out[name] = torch._weight_norm(v.to(dtype), g.to(dtype), 0)
    for name, t in plain.items():
        if name not in expected or name in reported:
            unexpected.append(name)
        elif tuple(t.shape) != tuple(expected[name].shape):
            misshaped.append(f"{name} {tuple(t.shape)} (expected {tuple(expected[name].shape)})")
            reported.add(name)
        else:
            out[name] = t.to(dtype)
            reported.add(name)
    missing.extend(name for name in expected if name not in reported)
    check_tensor_names("codec checkpoint does not match the codec config", missing, unexpected, misshaped)
    return out


def load_codec(
    path: str | Path,
    config: CodecConfig | str | Path | None = None,
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "cpu",
) -> S2ProCodec:
    """Build the codec for `config` (default: S2-Pro) and load `path` strictly, in eval mode."""
    torch_dtype = parse_dtype(dtype)
    if config is None:
        cfg = CodecConfig.default()
    elif isinstance(config, CodecConfig):
        cfg = config
    else:
        cfg = CodecConfig.from_json(config)
    raw = read_checkpoint(path)
    with torch.device("meta"):
        codec = S2ProCodec(cfg)
    try:
        state = fuse_state_dict(raw, codec, torch_dtype)
    except ModelLoadError as exc:
        hint = "the default S2-Pro config" if config is None else f"config {cfg.name or config!s}"
        raise ModelLoadError(f"{path}: {exc} [built from {hint}; --codec-config selects another architecture]") from None
    codec.load_state_dict(state, strict=True, assign=True)
    return codec.to(device=device, dtype=torch_dtype).eval().requires_grad_(False)


def _wn_key_names(name: str, g_parts: dict[str, Tensor], v_parts: dict[str, Tensor]) -> list[str]:
    base = name[: -len(".weight")]
    out = []
    if name in g_parts:
        out.append(base + ".weight_g")
    if name in v_parts:
        out.append(base + ".weight_v")
    return out


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_NAMES])
    return shown + (f", ... (+{len(items) - _MAX_NAMES} more)" if len(items) > _MAX_NAMES else "")
