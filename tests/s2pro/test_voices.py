"""Voice library: names, reference-audio checks, add/list/remove (library API and CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agent_runtime.cli import main as cli_main
from agent_runtime.errors import AudioFormatError
from agent_runtime.tts.s2pro.codec_loader import load_codec
from agent_runtime.tts.s2pro.voices import (
    VOICES_ENV,
    VoiceError,
    VoiceLibrary,
    check_name,
    check_reference_audio,
    default_library_dir,
)

SR = 16000  # the files are resampled to the codec's 44.1 kHz on reading


@pytest.fixture(scope="module")
def tiny(s2pro_fixtures: Path):
    return load_codec(s2pro_fixtures / "codec_tiny.pth", s2pro_fixtures / "codec_tiny.json")


def _speechlike(seconds: float, level: float = 0.3, rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _wav(path: Path, x: np.ndarray, rate: int = SR) -> Path:
    sf.write(path, x, rate, subtype="PCM_16")
    return path


@pytest.mark.parametrize(
    "name",
    ["", "..", ".", "../evil", "a/b", "/abs", "a\\b", ".hidden", "-dash", "x" * 65, "nul\x00", "a b", "a.b", "é", "~"],
)
def test_unsafe_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(VoiceError, match="invalid voice name"):
        check_name(name)
    lib = VoiceLibrary(tmp_path / "lib")
    with pytest.raises(VoiceError):
        lib.add(name, np.zeros((4, 2), dtype=np.int64), "text")
    with pytest.raises(VoiceError):
        lib.get(name)
    with pytest.raises(VoiceError):
        lib.remove(name)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "lib").exists()


@pytest.mark.parametrize("name", ["alice", "Bob_2", "x", "voice-01", "a" * 64])
def test_safe_names(name: str) -> None:
    assert check_name(name) == name


def test_library_roundtrip(tmp_path: Path) -> None:
    lib = VoiceLibrary(tmp_path)
    codes = np.arange(20, dtype=np.int64).reshape(4, 5)
    v = lib.add("alice", codes, "  Hello there.\n", {"duration_s": 3.5})
    assert v.text == "Hello there." and v.frames == 5 and v.duration_s == 3.5
    np.testing.assert_array_equal(lib.get("alice").codes, codes)
    assert lib.names() == ["alice"] and "alice" in lib and "bob" not in lib
    meta = json.loads((tmp_path / "alice" / "meta.json").read_text())
    assert meta["format"] == "agent-runtime/s2pro-voice" and meta["frames"] == 5
    with pytest.raises(VoiceError, match="already exists"):
        lib.add("alice", codes, "again")
    assert lib.add("alice", codes[:, :2], "again", replace=True).frames == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    lib.remove("alice")
    assert lib.names() == []
    with pytest.raises(VoiceError, match="no voice named"):
        lib.get("alice")
    with pytest.raises(VoiceError, match="empty"):
        lib.add("bob", codes, "   ")


def test_unwritable_library_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(VoiceError, match="cannot write to the voice library"):
        VoiceLibrary(tmp_path / "file").add("alice", np.zeros((4, 2), dtype=np.int64), "text")


def test_default_dir_honours_env(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(VOICES_ENV, str(tmp_path / "v"))
    assert default_library_dir() == tmp_path / "v"
    assert VoiceLibrary().root == tmp_path / "v"
    monkeypatch.delenv(VOICES_ENV)
    assert default_library_dir().parts[-3:] == ("share", "agent-runtime", "voices")


def test_reference_checks() -> None:
    ok = check_reference_audio(_speechlike(4.0), SR)
    assert ok.warnings == () and abs(ok.duration_s - 4.0) < 1e-6
    with pytest.raises(AudioFormatError, match="too short"):
        check_reference_audio(_speechlike(2.9), SR)
    with pytest.raises(AudioFormatError, match="silent"):
        check_reference_audio(np.zeros(5 * SR, dtype=np.float32), SR)
    with pytest.raises(AudioFormatError, match="silent"):
        check_reference_audio(np.full(5 * SR, 1e-4, dtype=np.float32), SR)
    clipped = np.clip(_speechlike(4.0, level=3.0), -1.0, 1.0)
    with pytest.raises(AudioFormatError, match="clipped"):
        check_reference_audio(clipped, SR)
    forced = check_reference_audio(clipped, SR, allow_clipping=True)
    assert any("clipped" in w for w in forced.warnings)
    long = check_reference_audio(_speechlike(31.0, rate=8000), 8000)
    assert any("long" in w for w in long.warnings)
    mostly_silent = np.concatenate([_speechlike(1.0), np.zeros(4 * SR, dtype=np.float32)])
    assert any("contains sound" in w for w in check_reference_audio(mostly_silent, SR).warnings)


@pytest.mark.slow
def test_add_from_audio_encodes_and_stores(tiny, tmp_path: Path) -> None:
    lib = VoiceLibrary(tmp_path / "lib")
    voice, report = lib.add_from_audio("alice", _wav(tmp_path / "a.wav", _speechlike(3.2)), "Hi.", tiny)
    assert report.warnings == ()
    assert voice.codes.dtype == np.int64 and voice.codes.shape[0] == 4
    assert voice.frames == -(-round(3.2 * 44100) // 32)  # ceil(samples / frame_length) at the codec rate
    assert voice.meta["source"] == {"file": "a.wav", "sample_rate": SR, "channels": 1}


def test_add_from_bad_audio(tiny, tmp_path: Path) -> None:
    lib = VoiceLibrary(tmp_path / "lib")
    (tmp_path / "junk.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(AudioFormatError, match="not a readable audio file"):
        lib.add_from_audio("a", tmp_path / "junk.wav", "t", tiny)
    with pytest.raises(AudioFormatError, match="no such audio file"):
        lib.add_from_audio("a", tmp_path / "absent.wav", "t", tiny)
    with pytest.raises(AudioFormatError, match="too short"):
        lib.add_from_audio("a", _wav(tmp_path / "s.wav", _speechlike(1.0)), "t", tiny)
    with pytest.raises(AudioFormatError, match="silent"):
        lib.add_from_audio("a", _wav(tmp_path / "z.wav", np.zeros(4 * SR, dtype=np.float32)), "t", tiny)
    with pytest.raises(AudioFormatError, match="clipped"):
        lib.add_from_audio("a", _wav(tmp_path / "c.wav", np.clip(_speechlike(3.1, 3.0), -1, 1)), "t", tiny)
    assert lib.names() == []


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exc:
        cli_main(list(args))
    return int(exc.value.code or 0)


@pytest.mark.slow
def test_voice_cli(s2pro_fixtures: Path, tmp_path: Path, capsys) -> None:
    lib = str(tmp_path / "lib")
    ref = str(_wav(tmp_path / "r.wav", _speechlike(3.1)))
    codec = ["--codec", str(s2pro_fixtures / "codec_tiny.pth"), "--codec-config", str(s2pro_fixtures / "codec_tiny.json")]
    assert _cli("voice", "add", "carol", "--audio", ref, "--text", "Hello.", *codec, "--library", lib) == 0
    assert "added voice 'carol'" in capsys.readouterr().out
    assert _cli("voice", "add", "carol", "--audio", ref, "--text", "Hello.", *codec, "--library", lib) == 2
    assert "already exists" in capsys.readouterr().err
    assert _cli("voice", "add", "../x", "--audio", ref, "--text", "Hello.", *codec, "--library", lib) == 2
    assert "invalid voice name" in capsys.readouterr().err
    assert _cli("voice", "list", "--json", "--library", lib) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in listed] == ["carol"] and listed[0]["text"] == "Hello."
    assert _cli("voice", "remove", "carol", "--library", lib) == 0
    assert _cli("voice", "remove", "carol", "--library", lib) == 2
    assert "no voice named" in capsys.readouterr().err
