"""Strict codec checkpoint loading: layouts accepted, clear errors for everything else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agent_runtime.errors import ModelLoadError
from agent_runtime.tts.s2pro.codec_loader import load_codec, read_checkpoint


@pytest.fixture(scope="module")
def raw(s2pro_fixtures: Path) -> dict[str, torch.Tensor]:
    return torch.load(s2pro_fixtures / "codec_tiny.pth", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def cfg(s2pro_fixtures: Path) -> Path:
    return s2pro_fixtures / "codec_tiny.json"


@pytest.fixture(scope="module")
def codes(s2pro_fixtures: Path) -> torch.Tensor:
    return torch.from_numpy(np.load(s2pro_fixtures / "codec_tiny_codes.npy")[:, :12])


def _save(tmp_path: Path, obj: object, name: str = "c.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _decode(path: Path, cfg: Path, codes: torch.Tensor) -> np.ndarray:
    return load_codec(path, cfg).decode(codes).numpy()


def test_parametrization_names_load(raw, cfg, codes, s2pro_fixtures: Path) -> None:
    assert any(k.endswith("parametrizations.weight.original0") for k in raw)
    codec = load_codec(s2pro_fixtures / "codec_tiny.pth", cfg)
    assert not any(p.requires_grad for p in codec.parameters())


def test_legacy_names_wrapper_and_prefix_are_equivalent(raw, cfg, codes, tmp_path: Path, s2pro_fixtures: Path) -> None:
    ref = _decode(s2pro_fixtures / "codec_tiny.pth", cfg, codes)
    legacy = {
        k.replace(".parametrizations.weight.original0", ".weight_g").replace(".parametrizations.weight.original1", ".weight_v"): v
        for k, v in raw.items()
    }
    assert any(k.endswith(".conv.weight_g") for k in legacy)
    np.testing.assert_array_equal(_decode(_save(tmp_path, legacy, "legacy.pth"), cfg, codes), ref)
    wrapped = {"state_dict": {"generator." + k: v for k, v in raw.items()} | {"discriminator.x": torch.zeros(1)}}
    np.testing.assert_array_equal(_decode(_save(tmp_path, wrapped, "wrapped.pth"), cfg, codes), ref)
    # obsolete persistent buffers of older reference versions are ignored
    extra = dict(raw) | {"quantizer.post_module.freqs_cis": torch.zeros(16, 16, 2), "quantizer.pre_module.causal_mask": torch.ones(4, 4, dtype=torch.bool)}
    np.testing.assert_array_equal(_decode(_save(tmp_path, extra, "extra.pth"), cfg, codes), ref)


def test_fused_weights_are_accepted(raw, cfg, codes, tmp_path: Path, s2pro_fixtures: Path) -> None:
    codec = load_codec(s2pro_fixtures / "codec_tiny.pth", cfg)
    ref = codec.decode(codes).numpy()
    np.testing.assert_array_equal(_decode(_save(tmp_path, codec.state_dict()), cfg, codes), ref)


def test_missing_tensor_is_named(raw, cfg, tmp_path: Path) -> None:
    broken = dict(raw)
    del broken["decoder.model.1.block.0.alpha"]
    del broken["encoder.block.0.conv.parametrizations.weight.original0"]
    with pytest.raises(ModelLoadError) as exc:
        load_codec(_save(tmp_path, broken), cfg)
    msg = str(exc.value)
    assert "2 missing" in msg and "decoder.model.1.block.0.alpha" in msg and "encoder.block.0.conv.weight_g" in msg
    assert "\n" not in msg


def test_unexpected_tensor_is_named(raw, cfg, tmp_path: Path) -> None:
    broken = dict(raw) | {"decoder.model.9.conv.bias": torch.zeros(1), "quantizer.extra.weight_g": torch.zeros(1, 1, 1)}
    with pytest.raises(ModelLoadError, match=r"2 unexpected: .*decoder\.model\.9\.conv\.bias"):
        load_codec(_save(tmp_path, broken), cfg)


def test_misshaped_tensor_is_named(raw, cfg, tmp_path: Path) -> None:
    broken = dict(raw)
    broken["quantizer.post_module.layers.0.attention.wqkv.weight"] = torch.zeros(96, 64)
    broken["decoder.model.0.conv.parametrizations.weight.original1"] = torch.zeros(64, 64, 5)
    with pytest.raises(ModelLoadError) as exc:
        load_codec(_save(tmp_path, broken), cfg)
    msg = str(exc.value)
    assert "2 mis-shaped" in msg and "wqkv.weight (96, 64) (expected (192, 64))" in msg
    assert "decoder.model.0.conv.weight g (64, 1, 1) v (64, 64, 5) (expected g (64, 1, 1) v (64, 64, 7))" in msg


def test_wrong_config_for_checkpoint(s2pro_fixtures: Path) -> None:
    with pytest.raises(ModelLoadError, match="mis-shaped"):
        load_codec(s2pro_fixtures / "codec_tiny.pth")  # default config = the full S2-Pro codec


def test_unreadable_files(tmp_path: Path, cfg) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_codec(tmp_path / "absent.pth", cfg)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a readable torch checkpoint"):
        load_codec(tmp_path / "junk.pth", cfg)
    with pytest.raises(ModelLoadError, match="state dict"):
        read_checkpoint(_save(tmp_path, [torch.zeros(1)], "list.pth"))
    with pytest.raises(ModelLoadError, match="unknown codec dtype"):
        load_codec(tmp_path / "junk.pth", cfg, dtype="fp8")
