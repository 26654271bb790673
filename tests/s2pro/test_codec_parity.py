"""S2-Pro codec: fixture parity (in-process and through the CLI), config handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from agent_runtime.errors import ConfigError
from agent_runtime.tts.s2pro.codec import S2ProCodec
from agent_runtime.tts.s2pro.codec_config import CodecConfig
from agent_runtime.tts.s2pro.codec_loader import load_codec

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / ".venv" / "bin" / "agent-runtime"


@pytest.fixture(scope="module")
def expected(s2pro_fixtures: Path) -> dict[str, np.ndarray]:
    return dict(np.load(s2pro_fixtures / "codec_tiny_expected.npz"))


@pytest.fixture(scope="module")
def tiny(s2pro_fixtures: Path) -> S2ProCodec:
    return load_codec(s2pro_fixtures / "codec_tiny.pth", s2pro_fixtures / "codec_tiny.json")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as the fixtures were made (and not slowed down by busy shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_encode_fp32_exact(tiny: S2ProCodec, expected, s2pro_fixtures: Path, one_thread) -> None:
    from agent_runtime.tts.s2pro.codec_audio import read_audio

    audio = read_audio(s2pro_fixtures / "codec_tiny_in.wav", tiny.sample_rate)
    np.testing.assert_array_equal(audio.samples, expected["audio_in"])
    codes = tiny.encode(torch.from_numpy(audio.samples))[0].numpy()
    assert codes.dtype == np.int64 and codes.shape == (4, 349)
    np.testing.assert_array_equal(codes, expected["codes"])
    np.testing.assert_array_equal(codes, np.load(s2pro_fixtures / "codec_tiny_codes.npy"))


def test_decode_fp32_within_tolerance(tiny: S2ProCodec, expected, one_thread) -> None:
    audio = tiny.decode(torch.from_numpy(expected["codes"]))
    assert audio.dtype == torch.float32 and audio.shape == (1, 1, 349 * 32)
    assert np.abs(audio[0, 0].numpy() - expected["audio_out"]).max() <= 1e-5


def test_bf16_within_tolerance(s2pro_fixtures: Path, expected, one_thread) -> None:
    codec = load_codec(s2pro_fixtures / "codec_tiny.pth", s2pro_fixtures / "codec_tiny.json", dtype="bf16")
    assert codec.dtype == torch.bfloat16
    codes = codec.encode(torch.from_numpy(expected["audio_in"]))[0].numpy()
    assert codes.shape == expected["codes"].shape
    assert (codes != expected["codes"]).mean() <= 0.10
    audio = codec.decode(torch.from_numpy(expected["codes"]))[0, 0].numpy()
    assert audio.dtype == np.float32 and audio.shape == expected["audio_out"].shape
    assert np.abs(audio - expected["audio_out"]).max() <= 2e-2


def test_codes_are_clamped(tiny: S2ProCodec, expected) -> None:
    codes = expected["codes"][:, :20].copy()
    big = codes.copy()
    big[0] += 1000  # semantic codebook has 64 entries, residual ones 32
    big[1:] += 1000
    clamped = codes.copy()
    clamped[0] = 63
    clamped[1:] = 31
    np.testing.assert_array_equal(tiny.decode(torch.from_numpy(big)).numpy(), tiny.decode(torch.from_numpy(clamped)).numpy())


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    exe = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "agent_runtime.cli"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_cli_encode_decode_parity(s2pro_fixtures: Path, expected, tmp_path: Path) -> None:
    fx = s2pro_fixtures
    common = ["--codec", str(fx / "codec_tiny.pth"), "--codec-config", str(fx / "codec_tiny.json"), "--dtype", "fp32"]
    r = _run_cli("s2pro", "encode", *common, "--audio", str(fx / "codec_tiny_in.wav"), "--out", str(tmp_path / "c.npy"))
    assert r.returncode == 0, r.stderr
    codes = np.load(tmp_path / "c.npy")
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, np.load(fx / "codec_tiny_codes.npy"))

    r = _run_cli("s2pro", "decode", *common, "--codes", str(fx / "codec_tiny_codes.npy"), "--out", str(tmp_path / "a.npy"))
    assert r.returncode == 0, r.stderr
    audio = np.load(tmp_path / "a.npy")
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.shape == expected["audio_out"].shape
    assert np.abs(audio - expected["audio_out"]).max() <= 1e-5

    r = _run_cli("s2pro", "decode", *common, "--codes", str(fx / "codec_tiny_codes.npy"), "--out", str(tmp_path / "s.wav"),
                 "--stream", "--first-chunk-frames", "3", "--chunk-frames", "2")
    assert r.returncode == 0, r.stderr
    wav, rate = sf.read(tmp_path / "s.wav", dtype="float32")
    assert rate == 44100 and wav.shape == expected["audio_out"].shape
    assert np.abs(wav - expected["audio_out"]).max() <= 1e-5


@pytest.mark.slow
def test_cli_user_errors_are_one_line(s2pro_fixtures: Path, tmp_path: Path) -> None:
    fx = s2pro_fixtures
    r = _run_cli("s2pro", "decode", "--codec", str(tmp_path / "nope.pth"), "--codes", str(fx / "codec_tiny_codes.npy"),
                 "--out", str(tmp_path / "a.npy"))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("agent-runtime: error:") and "not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_encode_resamples_and_mixes_down(tiny: S2ProCodec, tmp_path: Path) -> None:
    from agent_runtime.tts.s2pro.codec_audio import read_audio

    t = np.arange(16000) / 16000
    left = 0.4 * np.sin(2 * np.pi * 300 * t)
    sf.write(tmp_path / "st.wav", np.stack([left, -0.5 * left], axis=1), 16000, subtype="PCM_16")
    audio = read_audio(tmp_path / "st.wav", 44100)
    assert audio.source_channels == 2 and audio.source_rate == 16000
    assert abs(len(audio.samples) - 44100) <= 1
    assert 0.05 < np.abs(audio.samples).max() < 0.15  # (l - 0.5 l) / 2 = 0.25 l
    codes = tiny.encode(torch.from_numpy(audio.samples))
    assert codes.shape == (1, 4, -(-len(audio.samples) // 32))


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 48000])
def test_reference_resampler(rate: int) -> None:
    from agent_runtime.tts.s2pro.codec_audio import resample_reference

    n = rate // 2 + 7
    t = np.arange(n) / rate
    y = resample_reference((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, 44100)
    assert y.dtype == np.float32 and len(y) == -(-n * 44100 // rate)
    t2 = np.arange(len(y)) / 44100
    assert np.abs(y[500:-500] - 0.5 * np.sin(2 * np.pi * 440 * t2[500:-500])).max() < 1e-3


def test_default_config_is_s2pro() -> None:
    cfg = CodecConfig.default()
    assert (cfg.sample_rate, cfg.frame_length, cfg.num_codebooks, cfg.latent_dim) == (44100, 2048, 10, 1024)
    assert cfg.quantizer.transformer.window_size == 128 and cfg.encoder.transformer_window_size == 512
    with torch.device("meta"):
        codec = S2ProCodec(cfg)
    n = sum(p.numel() for p in codec.parameters())
    assert abs(n - 391.4e6) < 0.1e6  # spec 4.1
    shipped = json.loads(Path(__file__).resolve().parents[2].joinpath(
        "agent_runtime/tts/s2pro/s2pro_codec.json").read_text())
    fixture = Path(__file__).resolve().parents[1] / "fixtures/s2pro/s2pro_codec.json"
    if fixture.is_file():
        assert shipped == json.loads(fixture.read_text())


def test_inconsistent_config_is_refused(s2pro_fixtures: Path, tmp_path: Path) -> None:
    data = json.loads((s2pro_fixtures / "codec_tiny.json").read_text())
    data["frame_length"] = 64
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="frame_length"):
        CodecConfig.from_json(tmp_path / "bad.json")
    del data["encoder"]["rates"]
    with pytest.raises(ConfigError, match="rates"):
        CodecConfig.from_dict(data)
    with pytest.raises(ConfigError, match="not found"):
        CodecConfig.from_json(tmp_path / "missing.json")


@pytest.mark.gpu
def test_cuda_decode_matches_cpu(s2pro_fixtures: Path, expected) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    codec = load_codec(s2pro_fixtures / "codec_tiny.pth", s2pro_fixtures / "codec_tiny.json", device="cuda")
    audio = codec.decode(torch.from_numpy(expected["codes"]))[0, 0].cpu().numpy()
    assert np.abs(audio - expected["audio_out"]).max() <= 1e-4
