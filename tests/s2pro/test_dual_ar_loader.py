"""Strict checkpoint loading: both layouts, sharding, and one clear error for every mismatch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from agent_runtime.errors import ModelLoadError
from agent_runtime.tts.s2pro.checkpoint import load_model
from agent_runtime.tts.s2pro.engine import S2ProEngine


@pytest.fixture
def ckpt(s2pro_fixtures: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(s2pro_fixtures / "tiny", dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


def _logits(model) -> torch.Tensor:
    values = torch.zeros(1, model.cfg.num_codebooks + 1, 7, dtype=torch.long)
    values[0, 0] = torch.tensor([257, 10, 20, 30, 258, 263, 270])
    values[0, 1:, -1] = 2
    with torch.inference_mode():
        normed, fast_in = model.forward_slow(values, None, 0, 0, return_all=True)
        return torch.cat([model.slow_logits(normed).flatten(), fast_in.flatten()])


def test_loads_hf_layout_fp32(ckpt: Path) -> None:
    model = load_model(ckpt, 268, 299, dtype=torch.float32)
    assert model.dtype == torch.float32 and model.freqs_cis.dtype == torch.float32
    assert model.cfg.slow.n_layer == 2 and model.cfg.num_codebooks == 4 and model.cfg.cache_len == 4096


def test_missing_unexpected_misshaped_reported_together(ckpt: Path) -> None:
    w = _weights(ckpt)
    w.pop("text_model.model.layers.1.attention.wo.weight")
    w["audio_decoder.bogus.weight"] = torch.zeros(3)
    w["text_model.model.norm.weight"] = torch.ones(65)
    save_file(w, str(ckpt / "model.safetensors"))
    with pytest.raises(ModelLoadError) as err:
        load_model(ckpt, 268, 299)
    msg = str(err.value)
    assert "layers.1.attention.wo.weight" in msg
    assert "fast_bogus.weight" in msg
    assert "norm.weight (65,) (expected (64,))" in msg


def test_other_model_type_refused(ckpt: Path) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "llama"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="'llama' is not a Dual-AR"):
        S2ProEngine.load(ckpt)


def test_no_config_or_weights(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(tmp_path, 268, 299)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(ckpt, 268, 299)


def test_sharded_index(ckpt: Path) -> None:
    reference = _logits(load_model(ckpt, 268, 299, dtype=torch.float32))
    w = _weights(ckpt)
    keys = sorted(w)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({k: w[k] for k in names}, str(ckpt / name))
    index = {"weight_map": {k: name for name, names in shards.items() for k in names}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    (ckpt / "model.safetensors").unlink()
    assert torch.equal(_logits(load_model(ckpt, 268, 299, dtype=torch.float32)), reference)
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"shard model-00002-of-00002\.safetensors is missing"):
        load_model(ckpt, 268, 299)


def test_flat_dual_ar_pth_layout(ckpt: Path) -> None:
    """S1-style flat config + model.pth (state_dict wrapper, `model.` prefix, legacy wq/wk/wv, audio_ keys)."""
    reference = _logits(load_model(ckpt, 268, 299, dtype=torch.float32))
    omni = json.loads((ckpt / "config.json").read_text())
    tc, ac = omni["text_config"], omni["audio_decoder_config"]
    flat = {
        "model_type": "dual_ar",
        **{k: tc[k] for k in ("vocab_size", "n_layer", "n_head", "n_local_heads", "head_dim", "dim",
                              "intermediate_size", "max_seq_len", "rope_base", "norm_eps", "attention_qk_norm")},
        "codebook_size": ac["vocab_size"],
        "num_codebooks": ac["num_codebooks"],
        "n_fast_layer": ac["n_layer"],
        "fast_attention_qk_norm": False,
        "scale_codebook_embeddings": True,
        "norm_fastlayer_input": True,
    }  # fmt: skip
    (ckpt / "config.json").write_text(json.dumps(flat))
    model = load_model(ckpt, 268, 299, dtype=torch.float32)
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("attention.wqkv.weight"):
            prefix = k[: -len("wqkv.weight")]
            q, kk, vv = v.split([64, 32, 32])
            state |= {prefix + "wq.weight": q, prefix + "wk.weight": kk, prefix + "wv.weight": vv}
        else:
            state[k] = v
    state = {"model." + k: v for k, v in state.items()} | {"model.audio_projector.weight": torch.zeros(2)}
    (ckpt / "model.safetensors").unlink()
    torch.save({"state_dict": state}, ckpt / "model.pth")
    assert torch.equal(_logits(load_model(ckpt, 268, 299, dtype=torch.float32)), reference)


def test_s1_defaults_disable_scaling(ckpt: Path) -> None:
    omni = json.loads((ckpt / "config.json").read_text())
    flat = {"model_type": "dual_ar", "vocab_size": 320, "n_layer": 2, "n_head": 4, "dim": 64, "num_codebooks": 4,
            "codebook_size": 32}  # fmt: skip
    (ckpt / "config.json").write_text(json.dumps(flat))
    from agent_runtime.tts.s2pro.checkpoint import config_from_json

    cfg = config_from_json(flat, 268, 299)
    assert not cfg.scale_codebook_embeddings and not cfg.norm_fastlayer_input
    assert cfg.slow.head_dim == 64 and cfg.slow.n_local_heads == 4 and cfg.slow.intermediate_size == 256
    assert omni["model_type"] == "fish_qwen3_omni"
