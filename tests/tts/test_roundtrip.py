"""TTS -> ASR round trip: what piper says, Whisper hears (in process and through both CLIs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent_runtime.asr.whisper import WhisperRecognizer, normalize_text
from agent_runtime.audio import read_audio, resample
from agent_runtime.tts.piper_engine import PiperSynthesizer

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / ".venv" / "bin" / "agent-runtime"


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate on normalised text (word-level Levenshtein distance / reference length)."""
    ref, hyp = normalize_text(reference).split(), normalize_text(hypothesis).split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def test_wer_helper() -> None:
    assert wer("Hello, world!", "hello world") == 0.0
    assert wer("one two three four", "one too three") == 0.5


@pytest.mark.parametrize(
    "text",
    [
        "Hello, how can I help you today?",
        "I would like to check the status of my order, please.",
        "Your package was shipped yesterday and should arrive by Friday. Is there anything else?",
    ],
)
@pytest.mark.slow
def test_piper_then_whisper(piper: PiperSynthesizer, whisper: WhisperRecognizer, text: str) -> None:
    audio = resample(piper.synthesize_text(text), piper.sample_rate, 16_000)
    heard = whisper.transcribe(audio).text
    assert normalize_text(heard) == normalize_text(text) or wer(text, heard) <= 0.1, heard


async def test_streamed_reply_is_heard_whole(piper: PiperSynthesizer, whisper: WhisperRecognizer) -> None:
    text = "Sure, I can do that. Your table for two is booked for seven tonight."
    stream = piper.open_stream()
    for i in range(0, len(text), 4):  # LLM-sized deltas that split words
        stream.push_text(text[i : i + 4])
    stream.flush()
    chunks = [c async for c in stream]
    assert {c.segment_id for c in chunks} == {0, 1}
    audio = np.concatenate([c.audio for c in chunks]).astype(np.float32) / 32768.0
    heard = (await whisper.atranscribe(resample(audio, piper.sample_rate, 16_000))).text
    assert wer(text, heard) <= 0.1, heard


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "agent_runtime.cli"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.slow
def test_synth_cli_streams_and_writes_a_wav(tmp_path: Path, whisper: WhisperRecognizer) -> None:
    text = "Thanks for calling, this is the help desk. How can I help you today?"
    out = tmp_path / "reply.wav"
    # noise 0 and noise_w 0: the same audio every run (with the voice's noise_w the phoneme durations
    # are drawn at random, and one run in a few was transcribed with two words off)
    proc = _cli("synth", text, "-o", str(out), "--stream", "--noise", "0", "-O", "noise_w_scale=0")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()  # one line per chunk: piper streams each sentence in chunks
    assert len(lines) >= 4 and all(line.startswith("+") for line in lines)
    first = [i for i, line in enumerate(lines) if "segment 0" in line and line.endswith("'Thanks for calling,'")]
    assert first == list(range(len(first))) and len(first) >= 2  # the opener clause, in more than one chunk
    for line in lines[len(first) :]:
        assert "segment 1" in line and line.endswith("'this is the help desk. How can I help you today?'")
    assert "first audio after" in proc.stderr
    audio, rate = read_audio(out, target_rate=16_000)
    assert rate == 16_000 and len(audio) > 16_000
    heard = whisper.transcribe(audio).text
    assert wer(text, heard) <= 0.1, heard


def test_synth_cli_bad_voice_is_a_one_line_error(tmp_path: Path) -> None:
    proc = _cli("synth", "Hello there.", "-o", str(tmp_path / "x.wav"), "--voice", str(tmp_path / "none.onnx"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "no such piper voice" in proc.stderr
