"""Bad command-line input gets one clear error line and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

CLI = REPO_ROOT / ".venv" / "bin" / "agent-runtime"


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    exe = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "agent_runtime.cli"]
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "AGENT_RUNTIME_TOKEN": "", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env)


def _one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agent-runtime: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_synth_to_a_directory(tmp_path: Path) -> None:
    _one_line_error(_cli("synth", "hi", "-o", str(tmp_path)), str(tmp_path), "is a directory")


@pytest.mark.parametrize("beam", ["0", "-3"])
def test_transcribe_beam_size_below_one(tmp_path: Path, beam: str) -> None:
    _one_line_error(_cli("transcribe", str(tmp_path / "x.wav"), "--beam-size", beam), f"--beam-size {beam}")


@pytest.mark.slow
def test_output_path_os_errors_are_one_line(tmp_path: Path) -> None:
    """Any other unusable path the OS refuses (here: a codes file under a regular file)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    codes = tmp_path / "c.npy"
    np.save(codes, np.zeros((4, 2), np.int64))
    fx = REPO_ROOT / "tests" / "fixtures" / "s2pro"
    if not (fx / "codec_tiny.pth").is_file():
        pytest.skip("S2-Pro fixtures not found")
    proc = _cli("s2pro", "decode", "--codec", str(fx / "codec_tiny.pth"), "--codec-config", str(fx / "codec_tiny.json"),
                "--codes", str(codes), "--out", str(blocker / "a.npy"))
    _one_line_error(proc, str(blocker))


@pytest.fixture
def codec_args(s2pro_fixtures: Path) -> list[str]:
    fx = s2pro_fixtures
    return ["--codec", str(fx / "codec_tiny.pth"), "--codec-config", str(fx / "codec_tiny.json")]


def _decode(codec_args: list[str], codes: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return _cli("s2pro", "decode", *codec_args, "--codes", str(codes), "--out", str(tmp_path / "a.npy"))


@pytest.mark.slow
def test_decode_huge_uint64_codes(codec_args: list[str], s2pro_fixtures: Path, tmp_path: Path) -> None:
    codes = np.load(s2pro_fixtures / "codec_tiny_codes.npy").astype(np.uint64)
    codes[1, 0] = 2**63 + 5  # would wrap to a negative int64
    np.save(tmp_path / "big.npy", codes)
    _one_line_error(_decode(codec_args, tmp_path / "big.npy", tmp_path), "codes must lie in [0, 32)", "codebook 1")
    assert not (tmp_path / "a.npy").exists()


@pytest.mark.slow
def test_decode_rejects_out_of_range_codes_as_generate_does(
    codec_args: list[str], s2pro_fixtures: Path, tmp_path: Path
) -> None:
    codes = np.load(s2pro_fixtures / "codec_tiny_codes.npy")
    codes[2, 1] = 40  # the tiny codec's residual codebooks hold 32 codes: the decoder would clamp it
    np.save(tmp_path / "oor.npy", codes)
    line = _one_line_error(_decode(codec_args, tmp_path / "oor.npy", tmp_path), "codebook 2")
    assert "codes must lie in [0, 32), got [0, 40]" in line
    assert not (tmp_path / "a.npy").exists()


@pytest.mark.slow
def test_decode_given_an_npz(codec_args: list[str], s2pro_fixtures: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "codes.npz", codes=np.load(s2pro_fixtures / "codec_tiny_codes.npy"))
    _one_line_error(_decode(codec_args, tmp_path / "codes.npz", tmp_path), "codes.npz", "not a .npy array")


def test_serve_with_an_unknown_llm_backend_refuses_to_start(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("llm:\n  backend: nosuch\n")
    proc = _cli("serve", "--port", "0", "--config", str(cfg), timeout=60)
    line = _one_line_error(proc, "unknown llm.backend 'nosuch' (installed: ")
    assert "local" in line and "openai" in line
    assert "http://" not in proc.stdout  # refused before binding
